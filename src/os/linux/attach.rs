//! What `block-iscsi`, `block-nbd` and `block-drbd` share: reading the request, the time
//! budget, the sharing check and node writing of `block`, the remove records, and a
//! remove that runs every step and reports what failed.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::backend::{Backend, Busy, busy};
use crate::devnum::DevNum;
use crate::lock::Lock;
use crate::log;
use crate::mode::Mode;
use crate::request::{AddNodes, Frontend};
use crate::sharing::{self, Scan};
use crate::state::{self, Record};
use crate::tool::Deadline;
use crate::watchdog;

use super::loopdev;

/// Time kept back from the run's watchdog for undoing a failed add.
const UNDO_RESERVE: Duration = Duration::from_secs(8);
/// Every remove step gets at least this long, even after earlier steps used up the time.
pub const STEP_FLOOR: Duration = Duration::from_secs(2);

/// The run's time: the watchdog ends the process at `start + watchdog::deadline()`.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    start: Instant,
    total: Duration,
}

impl Budget {
    pub fn now() -> Budget {
        Budget {
            start: Instant::now(),
            total: watchdog::deadline(),
        }
    }

    fn left(&self) -> Duration {
        self.total.saturating_sub(self.start.elapsed())
    }

    /// The deadline of the waits of this run: `XEN_BLOCK_HOTPLUG_WAIT` (default 20 s),
    /// cut so that an undo still fits before the watchdog.
    pub fn wait(&self) -> Result<Deadline> {
        let ceiling = self.left().saturating_sub(UNDO_RESERVE).max(self.total / 4);
        Deadline::configured(ceiling)
    }

    /// The deadline for undoing a failed add: what is left before the watchdog, less a
    /// second to report.
    pub fn undo(&self) -> Deadline {
        Deadline::after(
            self.left()
                .saturating_sub(Duration::from_secs(1))
                .max(Duration::from_millis(500)),
        )
    }
}

/// What every helper's add reads first.
pub struct Request<'a> {
    pub params: String,
    /// The backend `type` node.
    pub ty: Option<String>,
    pub mode: Mode,
    pub scan: Scan<'a>,
    pub key: String,
    pub budget: Budget,
}

/// What every helper's remove starts from, under its own lock.
pub struct RemoveStart {
    pub key: String,
    /// The deadline of this remove's waits.
    pub deadline: Deadline,
    pub lock: Lock,
    /// The record `add` left for this backend, checked to be of the helper's kind.
    pub rec: Option<Record>,
}

/// Takes the helper's lock and loads its record: a record of another kind is an error.
pub fn begin_remove(be: &Backend, lock: &str, kind: &str) -> Result<RemoveStart> {
    let budget = Budget::now();
    let key = be.path.state_key();
    // The lock first, so queueing behind another run does not use up our waits.
    let lock = Lock::claim(lock)?;
    let deadline = budget.wait()?;
    let rec = state::load(&key)?;
    if let Some(r) = &rec {
        r.require_kind(kind, &be.path.path)?;
    }
    Ok(RemoveStart {
        key,
        deadline,
        lock,
        rec,
    })
}

/// Reads `params`, `mode` and the frontend with `block`'s prologue (`request`); `None`
/// when `physical-device` is already there (libxl may call add twice: nothing to do).
pub fn begin_add<'a>(be: &'a Backend<'a>) -> Result<Option<Request<'a>>> {
    let budget = Budget::now();
    let Some(nodes) = AddNodes::read(be)? else {
        return Ok(None);
    };
    let fe = Frontend::read(be, &nodes.mode)?;
    Ok(Some(Request {
        params: nodes.params,
        ty: nodes.ty,
        mode: fe.mode,
        scan: fe.scan(be),
        key: be.path.state_key(),
        budget,
    }))
}

/// A block device as published: its path (symbolic links resolved), device number and
/// disk sequence number.
#[derive(Clone, Debug)]
pub struct Device {
    pub path: String,
    pub rdev: DevNum,
    pub diskseq: Option<u64>,
}

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
    // Opened read-only and non-blocking only to ask for the disk sequence number.
    let diskseq = open_nonblocking(&real)
        .ok()
        .and_then(|f| loopdev::diskseq(&f));
    Ok(Device {
        path: shown,
        rdev: loopdev::split_dev(meta.rdev()),
        diskseq,
    })
}

fn open_nonblocking(p: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(p)
}

/// The sharing check of `block` on the device numbers a disk is reachable by (a
/// multipath map and its path device), unless the mode is `w!`.
pub fn check_sharing(scan: &Scan, what: &str, devs: &[DevNum]) -> Result<()> {
    if scan.mode == Mode::Force {
        return Ok(());
    }
    if let Some(h) = scan.check(devs)? {
        return Err(busy(sharing::busy_message(what, scan.mode, &h)));
    }
    Ok(())
}

/// Writes the device nodes as `block` does (`write_dev`), `hotplug-status=connected`
/// last.
pub fn publish(be: &Backend, node: Option<&str>, dev: &Device) -> Result<()> {
    be.write_dev(node, &dev.path, dev.rdev, dev.diskseq)
}

/// Records the device in a remove record.
pub fn record_device(rec: &mut Record, dev: &Device) {
    rec.set("node", dev.path.as_str())
        .set("rdev", dev.rdev.to_linux_hex());
    if let Some(s) = dev.diskseq {
        rec.set("diskseq", format!("{s:x}"));
    }
}

/// The device a record names: (path, rdev, diskseq).
pub fn recorded_device(rec: &Record) -> Option<(String, DevNum, Option<u64>)> {
    let path = rec.get("node")?.to_string();
    let rdev = DevNum::parse_linux_hex(rec.get("rdev")?)?;
    let seq = rec
        .get("diskseq")
        .and_then(|s| u64::from_str_radix(s, 16).ok());
    Some((path, rdev, seq))
}

/// Every remove record of `kind` except ours, with its key.
pub fn other_records(kind: &str, own_key: &str) -> Vec<(String, Record)> {
    let Ok(entries) = std::fs::read_dir(crate::paths::record_dir()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name.starts_with('.') || name == own_key {
            continue;
        }
        if let Ok(Some(rec)) = state::load(&name)
            && rec.get("kind") == Some(kind)
        {
            out.push((name, rec));
        }
    }
    out
}

/// Whether the backend a record was made for still exists (a record whose backend
/// libxl has destroyed is stale: its remove will find nothing to share).
pub fn backend_alive(be: &Backend, rec: &Record) -> Result<bool> {
    let Some(path) = rec.get("backend") else {
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
        Some(b) => busy(format!("{}{tail}", b.0)),
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

    pub fn finish(self) -> Result<()> {
        if self.failed.is_empty() {
            Ok(())
        } else {
            Err(anyhow!("remove incomplete: {}", self.failed.join("; ")))
        }
    }
}

/// Who else uses a device locally: other backends of this type (device from their
/// `physical-device-path` when it is a block device, else `physical-device`) and local
/// mounts. Each entry says who.
pub fn other_users(be: &Backend, rdev: DevNum) -> Result<Vec<String>> {
    let mut users = Vec::new();
    for m in super::local_mounts()? {
        if m.dev == rdev {
            users.push(format!("mounted at {}", m.mount_point));
        }
    }
    let root = &be.path.type_dir;
    let Some(doms) = be.store.list(root)? else {
        return Ok(users);
    };
    for dom in doms {
        let Some(devs) = be.store.list(&format!("{root}/{dom}"))? else {
            continue;
        };
        for dev in devs {
            if dom == be.path.frontend.to_string() && dev == be.path.devid.to_string() {
                continue;
            }
            let other = format!("{root}/{dom}/{dev}");
            let by_path = be
                .store
                .read(&format!("{other}/physical-device-path"))?
                .and_then(|p| super::stat_block_device(&p));
            let d = match by_path {
                Some(d) => Some(d),
                None => be
                    .store
                    .read(&format!("{other}/physical-device"))?
                    .and_then(|v| super::parse_physical_device(&v)),
            };
            if d == Some(rdev) {
                users.push(format!("{other} (domain {dom})"));
            }
        }
    }
    Ok(users)
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

    #[test]
    fn records_round_trip_devices() {
        let mut r = Record::default();
        record_device(
            &mut r,
            &Device {
                path: "/dev/sdb".into(),
                rdev: DevNum::new(8, 16),
                diskseq: Some(0x2a),
            },
        );
        assert_eq!(
            recorded_device(&r),
            Some(("/dev/sdb".to_string(), DevNum::new(8, 16), Some(0x2a)))
        );
    }
}
