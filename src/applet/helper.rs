//! What `block-iscsi`, `block-nbd` and `block-drbd` share: the start of an add (`block`'s
//! prologue, the run's budget) and of a remove (the helper's own lock, its record of the
//! helper's kind), resolving the device a tool made, `block`'s sharing check and node
//! writes, other records and other users of a device, and the undo and remove error
//! handling (a remove runs every step and reports what failed).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{Context, Result, anyhow};

use crate::backend::Backend;
use crate::deadline::{Budget, Deadline};
use crate::devnum::DevNum;
use crate::lock::Lock;
use crate::log;
use crate::mode::Mode;
use crate::platform::{self, Host, Identity, Platform};
use crate::record::{self, Record};
use crate::report::{Busy, busy};
use crate::request::{AddNodes, Frontend};
use crate::sharing::{self, SharingCheck};
use crate::watchdog;

/// The run's budget, ending when the watchdog would end the run.
fn budget() -> Budget {
    Budget::starting_now(watchdog::deadline())
}

/// What every helper's add reads first.
pub struct AddStart<'a> {
    pub params: String,
    /// The backend `type` node.
    pub ty: Option<String>,
    pub mode: Mode,
    pub scan: SharingCheck<'a, Host>,
    pub key: String,
    pub budget: Budget,
}

/// What every helper's remove starts from, under its own lock.
pub struct RemoveStart<R> {
    pub key: String,
    /// The deadline of this remove's waits.
    pub deadline: Deadline,
    pub lock: Lock,
    /// The record `add` left for this backend, of the helper's kind.
    pub rec: Option<R>,
}

/// Takes the helper's lock and loads its record; `kind` picks the helper's kind out of a
/// record (`None`: a record of another kind, which is an error).
pub fn begin_remove<R>(
    be: &Backend,
    lock_name: &str,
    kind: fn(Record) -> Option<R>,
) -> Result<RemoveStart<R>> {
    let budget = budget();
    let key = be.path.record_key();
    // The lock first, so queueing behind another run does not use up our waits.
    let lock = watchdog::lock(lock_name)?;
    let deadline = budget.wait()?;
    let rec = match record::load(&key)? {
        None => None,
        Some(r) => {
            let found = r.kind();
            Some(kind(r).ok_or_else(|| {
                anyhow!(
                    "the remove record of {} is of kind {found:?}, not one of {lock_name}'s",
                    be.path.path
                )
            })?)
        }
    };
    Ok(RemoveStart {
        key,
        deadline,
        lock,
        rec,
    })
}

/// Reads `params`, `mode` and the frontend with `block`'s prologue (`request`); `None`
/// when `physical-device` is already there (libxl may call add twice: nothing to do).
pub fn begin_add<'a>(be: &'a Backend<'a>) -> Result<Option<AddStart<'a>>> {
    let budget = budget();
    let Some(nodes) = AddNodes::read(be, "physical-device")? else {
        return Ok(None);
    };
    let fe = Frontend::read(be, &nodes.mode)?;
    Ok(Some(AddStart {
        params: nodes.params,
        ty: nodes.ty,
        mode: fe.mode,
        scan: fe.sharing_check(be, host()),
        key: be.path.record_key(),
        budget,
    }))
}

/// A block device as published: its path (symbolic links resolved), device number and
/// disk sequence number; recorded as it is.
pub use crate::record::Device;

/// Resolves `path` to the block device it names now.
pub fn block_device(path: &Path) -> Result<Device> {
    let real = std::fs::canonicalize(path)
        .with_context(|| format!("cannot resolve {}", path.display()))?;
    let meta =
        std::fs::metadata(&real).with_context(|| format!("cannot stat {}", real.display()))?;
    if !meta.file_type().is_block_device() {
        return Err(anyhow!("{} is not a block device", real.display()));
    }
    let shown = real
        .to_str()
        .ok_or_else(|| anyhow!("{} is not a UTF-8 path", real.display()))?
        .to_string();
    let rdev = platform::stat_device(&shown)
        .ok_or_else(|| anyhow!("{shown} has no device number this system can split"))?;
    // Opened read-only and non-blocking only to ask for the disk sequence number.
    let diskseq = open_nonblocking(&real).ok().and_then(|f| diskseq(&f));
    Ok(Device {
        path: shown,
        rdev,
        diskseq,
    })
}

/// The disk sequence number (Linux 5.15+ `BLKGETDISKSEQ`); other systems have none.
#[cfg(target_os = "linux")]
fn diskseq(f: &File) -> Option<u64> {
    crate::platform::linux::blkdev::diskseq(f)
}

#[cfg(not(target_os = "linux"))]
fn diskseq(_: &File) -> Option<u64> {
    None
}

fn open_nonblocking(p: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(p)
}

/// The sharing check of `block` on the device numbers a disk is reachable by (a
/// multipath map and its path device), unless the mode is `w!`.
pub fn check_sharing(scan: &SharingCheck<Host>, what: &str, devs: &[DevNum]) -> Result<()> {
    if scan.mode == Mode::Force {
        return Ok(());
    }
    if let Some(h) = scan.check_devices(devs)? {
        return Err(busy(sharing::busy_message(what, scan.judged_mode(), &h)));
    }
    Ok(())
}

/// Writes the device nodes as `block` does (`write_dev`), `hotplug-status=connected`
/// last.
pub fn publish(be: &Backend, node: Option<&str>, dev: &Device) -> Result<()> {
    be.write_dev(
        node.map(|n| ("node", n)),
        &dev.path,
        host()
            .format_physical_device(Identity::Dev(dev.rdev))
            .as_deref(),
        dev.diskseq,
    )
}

/// Every remove record but `own_key`'s that `kind` picks, with its key.
pub fn other_records<R>(own_key: &str, kind: fn(Record) -> Option<R>) -> Vec<(String, R)> {
    record::others(own_key)
        .into_iter()
        .filter_map(|(k, r)| Some((k, kind(r)?)))
        .collect()
}

/// Whether the backend a record was made for still exists (a record whose backend
/// libxl has destroyed is stale: its remove will find nothing to share).
pub fn backend_alive(be: &Backend, backend: Option<&str>) -> Result<bool> {
    let Some(path) = backend else {
        return Ok(false);
    };
    Ok(be.store.read(&format!("{path}/params"))?.is_some())
}

/// Appends undo failures to an add's error, keeping a `busy` refusal a refusal.
pub fn with_undo_errors(err: anyhow::Error, undo: Vec<String>) -> anyhow::Error {
    if undo.is_empty() {
        return err;
    }
    let tail = format!("; and undoing the attach failed: {}", undo.join("; "));
    match err.downcast_ref::<Busy>() {
        Some(b) => busy(format!("{}{tail}", b.message)),
        None => anyhow!("{err:#}{tail}"),
    }
}

/// Remove runs every step; the failures are reported together at the end.
#[derive(Default)]
pub struct Steps {
    failed: Vec<String>,
}

impl Steps {
    pub fn run(&mut self, what: &str, r: Result<()>) {
        if let Err(e) = r {
            let msg = format!("{what}: {e:#}");
            log::err(&msg);
            self.failed.push(msg);
        }
    }

    pub fn ok(&self) -> bool {
        self.failed.is_empty()
    }

    /// Deletes the remove record `key` only when every step succeeded (a failed step
    /// leaves it, so that another remove or `sweep` can find what is left), then
    /// `finish`es.
    pub fn finish_remove(mut self, key: &str) -> Result<()> {
        if self.ok() {
            self.run(
                "deleting the remove record",
                record::delete(key).map_err(Into::into),
            );
        }
        self.finish()
    }

    pub fn finish(self) -> Result<()> {
        if self.failed.is_empty() {
            Ok(())
        } else {
            Err(anyhow!("remove incomplete: {}", self.failed.join("; ")))
        }
    }
}

/// Who else uses a device locally: other backends of this type and local mounts
/// (`sharing::other_users`, the one walk over the other backends). Each entry says who.
pub fn other_users(be: &Backend, rdev: DevNum) -> Result<Vec<String>> {
    sharing::other_users(host(), be.store, &be.path, rdev)
}

/// This host's platform, for the whole run.
fn host() -> &'static Host {
    static HOST: std::sync::OnceLock<Host> = std::sync::OnceLock::new();
    HOST.get_or_init(platform::host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undo_errors_keep_busy() {
        let e = with_undo_errors(busy("in use"), vec!["logout failed".into()]);
        assert!(e.downcast_ref::<Busy>().is_some());
        assert_eq!(
            e.to_string(),
            "in use; and undoing the attach failed: logout failed"
        );
        let e = with_undo_errors(anyhow!("x"), vec![]);
        assert_eq!(e.to_string(), "x");
    }

    #[test]
    fn steps_collect_failures() {
        let mut s = Steps::default();
        s.run("a", Ok(()));
        assert!(s.ok());
        s.run("logout", Err(anyhow!("iscsid is down")));
        s.run("flush", Err(anyhow!("map in use")));
        assert_eq!(
            s.finish().unwrap_err().to_string(),
            "remove incomplete: logout: iscsid is down; flush: map in use"
        );
    }
}
