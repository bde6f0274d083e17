//! The one place the operator commands reach into the rest of the project: xenstore
//! batches, the sharing rules, remove records, loop identity, sysfs and the `block` lock.
//!
//! Everything the admin modules know about those comes through these functions, so that
//! when the modules they wrap change shape only this file is re-pointed. The host is the
//! Linux `Platform` (`platform::linux::Linux`): what `params` names is its `classify`, the
//! mounts its `local_mounts`, the records its `load_record`/`delete_record`, the lock
//! directory its `lock_dir`. Nothing here decides anything about sharing on its own:
//! `holders` is `sharing::SharingCheck::holders` (the walk of `block add`'s check, going on
//! past the first conflict), `device_of` its device rule, `loop_identity` the checks
//! `remove` makes before a detach.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};

use crate::devnum::DevNum;
use crate::invocation::BackendPath;
use crate::lock::{self, Lock};
use crate::mode::Mode;
use crate::platform::linux::blkdev::split_dev;
use crate::platform::linux::loopdev::{self, Attached, Detach};
use crate::platform::linux::{self, Linux};
use crate::platform::{self, Identity, Platform};
use crate::record;
use crate::sharing::{self, SharingCheck};
use crate::xs::{Store, StoreError, XenStore};

// The types of the wrapped modules the admin modules see, re-exported from here only.
pub use crate::mountinfo::Mount;
pub use crate::record::Record;
pub use crate::sharing::Holder;

/// The platform the operator commands inspect: this Linux dom0.
const HOST: Linux = Linux;

/// Connects to xenstore the way `block` does (`XENSTORED_PATH`, else the xenbus device).
pub fn open_store() -> Result<XenStore> {
    XenStore::open()
}

/// `list` of one directory (a single request).
pub fn list(store: &dyn Store, path: &str) -> Result<Option<Vec<String>>> {
    Ok(store.list(path)?)
}

/// `read` of one node (a single request).
pub fn read(store: &dyn Store, path: &str) -> Result<Option<String>> {
    Ok(store.read(path)?)
}

/// `list` of every path, pipelined on the daemon's socket; the first failure is the answer
/// (an incomplete inventory must not pass for a complete one).
pub fn list_all(store: &dyn Store, paths: &[String]) -> Result<Vec<Option<Vec<String>>>> {
    Ok(store
        .list_many(paths)
        .into_iter()
        .collect::<Result<_, StoreError>>()?)
}

/// `read` of every path, pipelined; the first failure is the answer.
pub fn read_all(store: &dyn Store, paths: &[String]) -> Result<Vec<Option<String>>> {
    Ok(store
        .read_many(paths)
        .into_iter()
        .collect::<Result<_, StoreError>>()?)
}

/// `read` of every path, pipelined; failures become `None` (for what is shown only when
/// readable, such as a domain's `name`).
pub fn read_lenient(store: &dyn Store, paths: &[String]) -> Vec<Option<String>> {
    store
        .read_many(paths)
        .into_iter()
        .map(|r| r.ok().flatten())
        .collect()
}

/// A backend's device as the sharing check sees it (`sharing::device_of` on this host).
pub fn device_of(
    physical_device_path: Option<&str>,
    physical_device: Option<&str>,
) -> Option<DevNum> {
    sharing::device_of(&HOST, physical_device_path, physical_device).map(Identity::dev)
}

/// The backend path type `sharing::SharingCheck` works on, for an existing backend
/// (`backend/<kind>/<domid>/<devid>`); `None` when the path is not of that form.
pub fn backend_path(path: &str, kind: &str) -> Option<BackendPath> {
    BackendPath::parse(path, "backend", kind).ok()
}

/// Xen's `DOMID_INVALID` (xen.h): the frontend of a request from no existing domain.
pub const DOMID_INVALID: u32 = 0x7ff4;

/// A backend path no backend has, for a request that is not any backend's (`explain`): the
/// walk then skips nothing. Device id `u32::MAX` is -1 to libxl, never a real vbd.
pub fn no_backend(kind: &str, frontend: u32) -> BackendPath {
    BackendPath {
        path: format!("backend/{kind}/{frontend}/{}", u32::MAX),
        type_dir: format!("backend/{kind}"),
        frontend,
        devid: u32::MAX,
    }
}

/// Every conflicting holder of `cands` for a request by `frontend` (whose `vm` is
/// `frontend_uuid`) in `mode` on behalf of backend `me`, by the sharing module's rules and
/// walk (`SharingCheck::holders`): local mounts first, then guests of `me`'s backend type.
/// Read-only users may share, as for `block` (only `block-drbd` forbids it).
pub fn holders(
    store: &dyn Store,
    me: &BackendPath,
    frontend: u32,
    frontend_uuid: Option<&str>,
    mode: Mode,
    cands: &[DevNum],
) -> Result<Vec<Holder>> {
    let cands: Vec<Identity> = cands.iter().copied().map(Identity::Dev).collect();
    SharingCheck {
        platform: &HOST,
        store,
        me,
        frontend_id: frontend,
        frontend_vm: frontend_uuid.map(str::to_string),
        mode,
        read_only_sharing: true,
    }
    .holders(&cands)
}

/// A frontend's VM identity as `block add` reads it (`request::Frontend::read`): its `vm`,
/// `None` when missing or not readable here (EACCES in a driver domain: `sharing::readable`).
pub fn frontend_uuid(store: &dyn Store, domid: u32) -> Result<Option<String>> {
    crate::sharing::readable(store, &format!("/local/domain/{domid}/vm"))
}

/// The devices `block add` checks for a block device: itself, its whole disk or
/// partitions, what is stacked on them (`platform::linux::sysfs::related_devices`, what
/// `Platform::related` returns on Linux).
pub fn related_devices(dev: DevNum) -> Vec<DevNum> {
    linux::related_devices(dev)
}

/// The block device a backend's `params` names now, if any: a path, a name under `/dev`
/// (`block add`'s rule), or either after a qemu format prefix (`aio:`, `raw:`, ...), for
/// backends whose device is never published in `physical-device` (qdisk).
pub fn params_device(params: &str) -> Option<DevNum> {
    let path = match params.split_once(':') {
        Some((prefix, rest)) if !prefix.contains('/') => rest,
        _ => params,
    };
    if path.is_empty() {
        return None;
    }
    platform::stat_device(&platform::expand(path))
}

/// Every bound loop device over the file (`st_dev`, `st_ino`), as (path, device).
pub fn loops_over(file_dev: DevNum, ino: u64) -> Result<Vec<(String, DevNum)>> {
    loopdev::loops_backed_by(file_dev, ino)
}

/// The devices `block add` checks for an image file: every loop over it, each with its
/// related devices (`Platform::related_to_attachment` on Linux, as `block add` builds
/// them).
pub fn file_candidates(loops: &[(String, DevNum)]) -> Vec<DevNum> {
    let mut cands: Vec<DevNum> = Vec::new();
    for (_, d) in loops {
        for r in HOST.related_to_attachment(*d) {
            if !cands.contains(&r) {
                cands.push(r);
            }
        }
    }
    cands
}

/// This system's mounts (`/proc/self/mountinfo`).
pub fn local_mounts() -> Result<Vec<Mount>> {
    HOST.local_mounts()
}

/// What `params` names, as `block add` classifies it (`Platform::classify`: a relative
/// name means `/dev/<name>`; symbolic links followed).
pub enum Target {
    Block {
        path: String,
        dev: DevNum,
    },
    File {
        path: String,
        file_dev: DevNum,
        ino: u64,
        writable: bool,
    },
    /// Neither: `what` says what it is and names the path ("a directory (/srv)").
    Other {
        what: String,
    },
}

/// Errors: a NUL byte in `params`, or a failure to open or stat it other than "it does not
/// exist" (that is `Other`).
pub fn target(params: &str) -> Result<Target> {
    Ok(match HOST.classify(params)? {
        platform::Target::Device(d) => match d.ident {
            Identity::Dev(dev) => Target::Block { path: d.path, dev },
            Identity::File { .. } => bail!("{} is a file used as is, not on Linux", d.path),
        },
        platform::Target::File(f) => Target::File {
            path: f.path,
            file_dev: split_dev(f.dev),
            ino: f.ino,
            writable: f.perm & 0o222 != 0,
        },
        platform::Target::Other { what } => Target::Other { what },
    })
}

/// How `other` relates to `dev` in sysfs: `partition` (of `dev`), `whole-disk` (`dev` is
/// one of its partitions) or `stacked` (device-mapper, md on top).
pub fn relation(dev: DevNum, other: DevNum) -> &'static str {
    relation_in(Path::new("/sys"), dev, other)
}

/// `relation` over the sysfs mounted at `sys`.
fn relation_in(sys: &Path, dev: DevNum, other: DevNum) -> &'static str {
    let dir =
        |d: DevNum| fs::canonicalize(sys.join(format!("dev/block/{}:{}", d.major, d.minor))).ok();
    match (dir(dev), dir(other)) {
        (Some(a), Some(b)) if b.parent() == Some(a.as_path()) => "partition",
        (Some(a), Some(b)) if a.parent() == Some(b.as_path()) => "whole-disk",
        _ => "stacked",
    }
}

/// What sysfs says about a block device: its disk sequence number (the whole disk's for a
/// partition) and, for a bound loop, its backing file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    pub diskseq: Option<u64>,
    pub loop_backing: Option<String>,
}

pub fn device_info(dev: DevNum) -> DeviceInfo {
    let dir = format!("/sys/dev/block/{}:{}", dev.major, dev.minor);
    let read = |p: String| fs::read_to_string(p).ok().map(|s| s.trim_end().to_string());
    let diskseq = read(format!("{dir}/diskseq"))
        .or_else(|| read(format!("{dir}/../diskseq")))
        .and_then(|s| s.parse().ok());
    let loop_backing = read(format!("{dir}/loop/backing_file")).filter(|s| !s.is_empty());
    DeviceInfo {
        diskseq,
        loop_backing,
    }
}

/// The backing file (`st_dev`, `st_ino`) of the loop device at `path`, `None` when it is
/// not a bound loop.
pub fn loop_backing(path: &str) -> Option<(DevNum, u64)> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    loopdev::backing_of(&f).ok().flatten()
}

/// Whether the kernel has anything stacked on `dev` (sysfs `holders`).
pub fn has_kernel_holders(dev: DevNum) -> bool {
    fs::read_dir(format!(
        "/sys/dev/block/{}:{}/holders",
        dev.major, dev.minor
    ))
    .map(|mut d| d.next().is_some())
    .unwrap_or(false)
}

/// A remove record as the operator commands see it.
#[derive(Clone, Debug)]
pub struct RecordFile {
    /// The file name: the backend path with `/` as `-` (`BackendPath::record_key`).
    pub key: String,
    /// Its full path, for messages.
    pub file: String,
    /// The backend it was written for, as written (else as its key spells it).
    pub backend: String,
    /// `Record::kind`: `loop`, `iscsi`, `nbd`, `drbd` (`vnd` is NetBSD's).
    pub kind: String,
    pub record: Record,
}

/// Every remove record in `record::dir()` (temporary files of a save in progress are
/// skipped). A record that cannot be read or decoded is an error naming it.
pub fn records() -> Result<Vec<RecordFile>> {
    let dir = record::dir();
    let shown = dir.display();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {shown}")),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {shown}"))?;
        let name = entry.file_name();
        let key = name
            .to_str()
            .ok_or_else(|| anyhow!("{shown} holds a file whose name is not UTF-8: {name:?}"))?
            .to_string();
        if key.starts_with('.') {
            continue;
        }
        let Some(record) = HOST.load_record(&key)? else {
            continue;
        };
        let backend = record
            .backend()
            .map(str::to_string)
            .unwrap_or_else(|| key.replace('-', "/"));
        out.push(RecordFile {
            file: format!("{shown}/{key}"),
            backend,
            kind: record.kind().to_string(),
            key,
            record,
        });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// Reads one record again (sweep re-checks under the lock).
pub fn reload(key: &str) -> Result<Option<Record>> {
    HOST.load_record(key)
}

pub fn delete_record(key: &str) -> Result<()> {
    HOST.delete_record(key)
}

/// Releases the cluster lease (issue 15) a record names, if any (`Platform::release_lease`):
/// a record deleted by sweep takes its lease with it, as remove's would.
pub fn release_lease(rec: &Record) -> Result<()> {
    match rec.lease() {
        Some(l) => HOST.release_lease(l),
        None => Ok(()),
    }
}

/// The record key of the backend at `path` of `kind` (`BackendPath::record_key`); `None`
/// when the path is not a backend's.
pub fn record_key(path: &str, kind: &str) -> Option<String> {
    backend_path(path, kind).map(|b| b.record_key())
}

/// The loop a `loop` record names and the file it was attached over, as `remove` reads
/// them (`Platform::detach_recorded` on Linux).
pub struct RecordedLoop {
    pub attached: Attached,
    pub backing: (DevNum, u64),
    pub params: Option<String>,
}

/// Errors: the record is not a `loop` record.
pub fn recorded_loop(r: &RecordFile) -> Result<RecordedLoop> {
    let Record::Loop(l) = &r.record else {
        bail!(
            "remove record {} is of kind {}, not a loop",
            r.file,
            r.record.kind()
        );
    };
    Ok(RecordedLoop {
        attached: Attached {
            path: l.device.path.clone(),
            rdev: l.device.rdev,
            diskseq: l.device.diskseq,
        },
        backing: l.backing,
        params: l.params.clone(),
    })
}

/// Whether the recorded loop is still the one attached (device number, backing inode,
/// diskseq: `loopdev::identify`, the checks of `remove`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoopIdentity {
    Ours,
    Free,
    Reused(String),
}

pub fn loop_identity(l: &RecordedLoop) -> Result<LoopIdentity> {
    Ok(match loopdev::identify(&l.attached, l.backing)? {
        Detach::Detached => LoopIdentity::Ours,
        Detach::AlreadyFree => LoopIdentity::Free,
        Detach::Reused(why) => LoopIdentity::Reused(why),
    })
}

/// Detaches the recorded loop only if it is still ours (`loopdev::detach_if_ours`).
pub fn detach_if_ours(l: &RecordedLoop) -> Result<LoopIdentity> {
    Ok(match loopdev::detach_if_ours(&l.attached, l.backing)? {
        Detach::Detached => LoopIdentity::Ours,
        Detach::AlreadyFree => LoopIdentity::Free,
        Detach::Reused(why) => LoopIdentity::Reused(why),
    })
}

/// The `block` lock's file (in `Platform::lock_dir`).
pub fn lock_file() -> String {
    HOST.lock_dir().join(lock::BLOCK).display().to_string()
}

/// Claims the `block` lock, giving up after `limit` (the claim itself cannot be
/// interrupted: it is left waiting in a thread that ends with the process).
pub fn claim_block_lock(limit: Duration) -> Result<Lock> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(Lock::claim_in(&HOST.lock_dir(), lock::BLOCK));
    });
    match rx.recv_timeout(limit) {
        Ok(r) => Ok(r?),
        Err(_) => Err(anyhow!(
            "the block lock ({}) was not free within {} s",
            lock_file(),
            limit.as_secs()
        )),
    }
}

/// Who holds the `block` lock, from `/proc/locks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockHolder {
    /// The pid `/proc/locks` names: the process that took the flock. For the shell scripts
    /// that is `flock(1)`, gone by now; `open_by` then names the script.
    pub pid: u32,
    pub alive: bool,
    /// Live processes with the lock file open (the holder, and any waiter queued on the
    /// same file), with their command names.
    pub open_by: Vec<(u32, String)>,
    /// How long it has been held, about: since the later of the lock file's
    /// change time (a new file per holder, `locking.sh`'s protocol) and the start of the
    /// holding process (a file left by a killed holder is older than its next holder).
    pub held_for: Duration,
}

pub fn lock_holder() -> Result<Option<LockHolder>> {
    let path = lock_file();
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot stat {path}")),
    };
    let locks = fs::read_to_string("/proc/locks").context("cannot read /proc/locks")?;
    let dev = split_dev(meta.dev());
    let Some(pid) = flock_holder(&locks, dev, meta.ino()) else {
        return Ok(None);
    };
    let alive = Path::new(&format!("/proc/{pid}")).exists();
    let open_by = openers(meta.dev(), meta.ino());
    let changed = SystemTime::UNIX_EPOCH
        + Duration::new(meta.ctime().max(0) as u64, meta.ctime_nsec().max(0) as u32);
    // The holder's start: the pid's when alive; else the oldest process with the file
    // open (the script that ran flock(1); its children, which inherit the fd, are younger).
    let start = if alive {
        process_start(pid)
    } else {
        open_by.iter().filter_map(|(p, _)| process_start(*p)).min()
    };
    let since = start.map_or(changed, |s| s.max(changed));
    let held_for = SystemTime::now().duration_since(since).unwrap_or_default();
    Ok(Some(LockHolder {
        pid,
        alive,
        open_by,
        held_for,
    }))
}

/// The pid of the process holding a `FLOCK` on (`dev`, `ino`) in a `/proc/locks` text
/// (`N: FLOCK ADVISORY WRITE <pid> <maj>:<min>:<ino> 0 EOF`, major and minor in hex);
/// waiters (`N: -> FLOCK ...`) are not holders.
pub fn flock_holder(locks: &str, dev: DevNum, ino: u64) -> Option<u32> {
    let want = format!("{:02x}:{:02x}:{ino}", dev.major, dev.minor);
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            [_, "FLOCK", _, _, pid, id, ..] if *id == want => pid.parse().ok(),
            _ => None,
        }
    })
}

/// Live processes with the file (`dev`, `ino`) open, with their command names.
fn openers(dev: u64, ino: u64) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let open = fds.flatten().any(|fd| {
            fs::metadata(fd.path())
                .map(|m| m.dev() == dev && m.ino() == ino)
                .unwrap_or(false)
        });
        if open {
            let comm = fs::read_to_string(p.path().join("comm"))
                .map(|s| s.trim_end().to_string())
                .unwrap_or_default();
            out.push((pid, comm));
        }
    }
    out
}

/// When a process started (`/proc/<pid>/stat` field 22, clock ticks after boot).
fn process_start(pid: u32) -> Option<SystemTime> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&h| h > 0)? as u64;
    let boot: u64 = fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(boot)
            + Duration::from_millis(ticks * 1000 / hz),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flock_holder_is_found_and_waiters_are_not() {
        let locks = "1: POSIX  ADVISORY  WRITE 900 fe:00:55 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 1300 00:1a:5678 0 EOF\n";
        assert_eq!(flock_holder(locks, DevNum::new(0, 0x1a), 5678), Some(1234));
        assert_eq!(flock_holder(locks, DevNum::new(0, 0x1a), 567), None);
        assert_eq!(flock_holder(locks, DevNum::new(0xfe, 0), 55), None, "POSIX");
        let only_waiter = "2: -> FLOCK  ADVISORY  WRITE 1300 00:1a:5678 0 EOF\n";
        assert_eq!(flock_holder(only_waiter, DevNum::new(0, 0x1a), 5678), None);
    }

    #[test]
    fn relations_follow_the_sysfs_tree() {
        use std::os::unix::fs::symlink;
        let sys = std::env::temp_dir().join(format!("xbh-rel-{}", std::process::id()));
        let _ = fs::remove_dir_all(&sys);
        let blk = sys.join("devices/block");
        fs::create_dir_all(blk.join("sda/sda1")).unwrap();
        fs::create_dir_all(blk.join("dm-0")).unwrap();
        fs::create_dir_all(sys.join("dev/block")).unwrap();
        for (d, p) in [("8:0", "sda"), ("8:1", "sda/sda1"), ("253:0", "dm-0")] {
            symlink(blk.join(p), sys.join("dev/block").join(d)).unwrap();
        }
        let d = DevNum::new;
        assert_eq!(relation_in(&sys, d(8, 0), d(8, 1)), "partition");
        assert_eq!(relation_in(&sys, d(8, 1), d(8, 0)), "whole-disk");
        assert_eq!(relation_in(&sys, d(8, 1), d(253, 0)), "stacked");
        fs::remove_dir_all(&sys).unwrap();
    }

    #[test]
    fn params_name_devices_with_or_without_a_format_prefix() {
        let Some(dev) = linux::stat_block_device("/dev/loop0") else {
            return;
        };
        for p in ["/dev/loop0", "loop0", "aio:/dev/loop0", "raw:loop0"] {
            assert_eq!(params_device(p), Some(dev), "{p}");
        }
        for p in [
            "",
            "aio:",
            "/dev/null",
            "/nonexistent/x.img",
            "qcow2:/srv/x.qcow2",
        ] {
            assert_eq!(params_device(p), None, "{p}");
        }
    }

    #[test]
    fn record_keys_are_the_binary_s() {
        assert_eq!(
            record_key("backend/vbd/5/51712", "vbd").as_deref(),
            Some("backend-vbd-5-51712")
        );
        assert_eq!(
            record_key("/local/domain/0/backend/vbd3/5/51712", "vbd3").as_deref(),
            Some("backend-vbd3-5-51712")
        );
        assert_eq!(record_key("backend/vbd/x/51712", "vbd"), None);
    }

    #[test]
    fn this_process_has_a_start_time_in_the_past() {
        let s = process_start(std::process::id()).unwrap();
        let age = SystemTime::now().duration_since(s).unwrap();
        assert!(age < Duration::from_secs(24 * 3600), "{age:?}");
    }
}
