//! The platform seam: only what differs between Linux, NetBSD and FreeBSD dom0s, under the
//! one `block` applet (`applet::block`) and the sharing check (`sharing`), which are
//! written once and generic over `Platform`.
//!
//! A platform says what `params` names and opens it (`classify`, one `Target` type), turns
//! a file into a device (a loop device on Linux, a `vnd(4)` unit on NetBSD; FreeBSD's
//! blkback opens files itself, so it has nothing to attach), spells and parses
//! `physical-device` (Linux blkback: `%x:%x`; NetBSD xbdback: decimal `dev_t`; FreeBSD: not
//! read), lists the dom0 mounts, names the devices related to one (partitions, stacked
//! devices), and says where the lock and the remove records live. Linux also takes and
//! releases the cluster disk leases (issue 15, `lease`: sanlock exists there only); the
//! other platforms take none (the trait's defaults).
//!
//! NetBSD and FreeBSD are compiled on every OS (their system calls behind a small trait or
//! a cfg), so that Linux runs their rules in unit tests; Linux's loop ioctls only on Linux.
//! This module never imports the applets, the sharing check or `cli`.

use std::fs::File;
use std::io;
use std::path::PathBuf;

use anyhow::Result;

use crate::devnum::DevNum;
use crate::mode::Mode;
use crate::mountinfo::Mount;
use crate::record::{self, Record};

#[cfg(test)]
pub mod fake;
pub mod freebsd;
pub mod netbsd;

#[cfg(target_os = "linux")]
pub mod linux;

#[cfg(any(target_os = "netbsd", target_os = "freebsd"))]
mod bsd;

/// What the sharing check compares: a disk as its users reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// A device, by number: what mounts and other backends' devices are compared with.
    Dev(DevNum),
    /// A regular file used as is (FreeBSD's blkback opens files itself): the device of its
    /// file system and its inode. Never mounted, so only other backends can hold it.
    File { fs: DevNum, ino: u64 },
}

impl Identity {
    /// The device number that stands for the disk in messages and logs: the device itself,
    /// or the file system a file lives on.
    pub fn dev(self) -> DevNum {
        match self {
            Identity::Dev(d) => d,
            Identity::File { fs, .. } => fs,
        }
    }
}

/// A target handed to the guest as it is: a block device (Linux, NetBSD), or on FreeBSD a
/// disk (character) device or a regular file.
#[derive(Debug)]
pub struct Device {
    /// The path with symbolic links resolved: what is published and what blkback opens.
    pub path: String,
    pub ident: Identity,
    /// For a regular file used as is (FreeBSD): its permission bits, for the read-only
    /// refusal. `None` for devices.
    pub file_mode: Option<u32>,
    /// The classifying fd (Linux `O_PATH`), so later decisions use the same inode.
    pub handle: Option<File>,
}

/// A regular file that needs a device made from it (a loop device, a vnd unit).
#[derive(Debug)]
pub struct FileTarget {
    /// The path with symbolic links resolved.
    pub path: String,
    /// `st_dev` and `st_ino`, raw, as the platform's `stat` reports them.
    pub dev: u64,
    pub ino: u64,
    /// `st_mode`'s permission bits.
    pub perm: u32,
    /// The classifying fd (Linux `O_PATH`).
    pub handle: Option<File>,
}

/// What `params` names (upstream: `[ -b ]`, then `[ -f ]`), opened once.
#[derive(Debug)]
pub enum Target {
    Device(Device),
    File(FileTarget),
    /// Neither: a `block-<type>` script's business, or an error naming `what` it is
    /// ("a directory (/x)", "a path that does not exist (/y)").
    Other {
        what: String,
    },
}

/// The file opened for the attach, and which file that was (`st_dev`, `st_ino`): the
/// applet refuses a file replaced since `classify`.
#[derive(Debug)]
pub struct Opened {
    pub file: Option<File>,
    pub dev: u64,
    pub ino: u64,
}

/// A device already made from the file (another loop or vnd backed by it): a guest or a
/// mount using it uses the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// How busy messages name it: `/dev/loop3 (7:3)`, `vnd3`.
    pub label: String,
    pub dev: DevNum,
}

/// The device made from the file for this backend.
#[derive(Debug)]
pub struct Attached {
    pub path: String,
    pub rdev: DevNum,
    pub diskseq: Option<u64>,
    /// The device held open (Linux: the loop fd), for an undo.
    pub handle: Option<File>,
    /// The complete remove record of the attach, to be saved once it succeeded.
    pub record: Record,
}

/// The nodes an attach by upstream's script (or by a version without records) left.
#[derive(Clone, Debug, Default)]
pub struct LegacyNodes {
    /// The node naming the device (`Platform::ATTACHED_NODE`).
    pub node: String,
    pub physical_device: Option<String>,
    pub diskseq: Option<String>,
}

/// A disk `block` hands to a guest, as a cluster lease (issue 15) names it.
#[derive(Clone, Copy, Debug)]
pub enum LeaseDisk<'a> {
    Device(&'a Device),
    File(&'a FileTarget),
}

/// A cluster lease an `add` took (`Platform::take_lease`): given back when dropped, so a
/// failed add releases what it took, unless [`TakenLease::keep`] was called.
pub trait TakenLease {
    /// What the remove record keeps, so that `remove` can release the lease.
    fn record(&self) -> record::Lease;
    /// The add succeeded: the host keeps the lease after this process exits.
    fn keep(self: Box<Self>);
}

/// Everything the `block` applet and the sharing check need from one dom0 OS.
pub trait Platform {
    /// The node whose presence means add has already run (libxl may call add twice): the
    /// node the backend driver acts on.
    const PUBLISHED: &'static str = "physical-device";
    /// The node naming the device made from a file (`node` on Linux, `vnd` on NetBSD).
    const ATTACHED_NODE: &'static str;
    /// How a busy message says a file is on a device: "is loopback-mounted through".
    const ATTACHED_VERB: &'static str;
    /// The `kind` of this platform's remove records (`loop`, `vnd`).
    const RECORD_KIND: &'static str;
    /// Whether remove deletes the backend directory (upstream's NetBSD script does).
    const REMOVES_BACKEND: bool = false;

    /// What `params` names, opened once without side effects. A name without `/` is
    /// under `/dev` (upstream `expand_dev`). Errors only for failures other than "this
    /// is not usable" (which is `Target::Other`).
    fn classify(&self, params: &str) -> Result<Target>;

    /// A device's disk sequence number, where the OS has one (Linux 5.15+).
    fn diskseq(&self, _dev: &Device) -> Option<u64> {
        None
    }

    /// Checks that a regular file used as is (`Device::file_mode` is `Some`) can be
    /// opened read-write; the error says why not.
    fn open_for_writing(&self, _dev: &Device) -> io::Result<()> {
        Ok(())
    }

    /// Everything whose use conflicts with handing `dev` to a guest, `dev` first: on
    /// Linux its partitions, whole disk and stacked devices (sysfs); on NetBSD the
    /// overlapping disklabel partitions.
    fn related(&self, dev: &Device) -> Result<Vec<Identity>>;

    /// How a busy message names `dev` when the related device `via` is the one in use:
    /// "Device /dev/sda1 (through the related device 8:0)".
    fn related_what(&self, dev: &Device, via: DevNum) -> String;

    /// Opens `file` for the attach (read-write unless `read_only`).
    fn open_file(&self, file: &FileTarget, read_only: bool) -> io::Result<Opened>;

    /// The devices already made from `file`.
    fn attached_by(&self, file: &FileTarget) -> Result<Vec<Attachment>>;

    /// The devices whose use is a use of the attachment `dev` (itself, its partitions).
    fn related_to_attachment(&self, dev: DevNum) -> Vec<DevNum>;

    /// Makes a device from `file` for the backend `backend`, calling `save` with its
    /// remove record (of `RECORD_KIND`) before the device is bound, so that a kill at any
    /// point leaves a record that finds the device. On error nothing stays bound.
    fn attach(
        &self,
        file: &FileTarget,
        opened: Opened,
        read_only: bool,
        backend: &str,
        save: &dyn Fn(&Record) -> Result<()>,
    ) -> Result<Attached>;

    /// Undoes our own `attach` (the publish after it failed).
    fn undo_attach(&self, attached: &Attached) -> Result<()>;

    /// Detaches the device a record of `RECORD_KIND` names, only if it is still ours.
    /// Errors for a record of another kind.
    fn detach_recorded(&self, rec: &Record) -> Result<()>;

    /// Detaches a device attached without a record, named by `nodes`, only if it is still
    /// backed by `file` (when `params` still names one).
    fn detach_legacy(&self, nodes: &LegacyNodes, file: Option<&FileTarget>) -> Result<()>;

    /// The `physical-device` value for `dev`; `None` where the backend does not read one.
    fn format_physical_device(&self, dev: Identity) -> Option<String>;

    /// Another backend's `physical-device`, read the way this OS's backend reads it.
    fn parse_physical_device(&self, value: &str) -> Option<DevNum>;

    /// What another backend's `physical-device-path` names now; `None` for anything the
    /// backend could not use (and for relative paths).
    fn stat_identity(&self, path: &str) -> Option<Identity>;

    /// What another backend's `params` path names, for holders that open it themselves
    /// (QEMU's `qdisk`, tapback's `vbd3`; issue 11 point 2): a device by number, a regular
    /// file by `(st_dev, st_ino)`; `None` for anything else and relative paths. Default:
    /// `stat_identity` (FreeBSD's already names files).
    fn stat_params_path(&self, path: &str) -> Option<Identity> {
        self.stat_identity(path)
    }

    /// A file target as `stat_params_path` names it, so a QEMU or tapback holder of the
    /// same file is found; `None` where that names no files.
    fn file_identity(&self, _file: &FileTarget) -> Option<Identity> {
        None
    }

    /// The dom0 mounts, with device numbers.
    fn local_mounts(&self) -> Result<Vec<Mount>>;

    /// The cluster lease (issue 15, README "Cluster leases") `add` takes on `disk` for the
    /// backend whose record key is `key`, after the local sharing check passed and under
    /// the `block` lock: exclusive for `w`, shared for `r`. `vm` is the frontend's `vm`
    /// node. `None` where leases are off (the configuration, mode `w!`) and on every OS
    /// without sanlock (the default). Errors: `busy` when another host holds the disk;
    /// an error when the lease manager cannot be used (never a silent fallback).
    fn take_lease(
        &self,
        _disk: LeaseDisk<'_>,
        _mode: Mode,
        _vm: &str,
        _key: &str,
    ) -> Result<Option<Box<dyn TakenLease>>> {
        Ok(None)
    }

    /// `remove`: gives back the lease a remove record names (`Record::lease`). Nothing
    /// held any more is not an error. Errors on an OS without cluster leases.
    fn release_lease(&self, lease: &record::Lease) -> Result<()> {
        anyhow::bail!(
            "the remove record names a cluster lease in lockspace {}, but cluster leases \
             exist on Linux only",
            lease.lockspace
        )
    }

    /// Where the `block` lock lives.
    fn lock_dir(&self) -> PathBuf {
        crate::lock::lock_dir()
    }

    /// The remove records (`record`): saved atomically, loaded, deleted.
    fn save_record(&self, key: &str, rec: &Record) -> Result<()> {
        Ok(record::save(key, rec)?)
    }
    fn load_record(&self, key: &str) -> Result<Option<Record>> {
        Ok(record::load(key)?)
    }
    fn delete_record(&self, key: &str) -> Result<()> {
        Ok(record::delete(key)?)
    }
}

/// Upstream's relative-name rule (`expand_dev`): a name without a leading `/` is in `/dev`.
pub fn expand(params: &str) -> String {
    if params.starts_with('/') {
        params.to_string()
    } else {
        format!("/dev/{params}")
    }
}

/// What an `open`/`stat` failure of `params` says it is, for `Target::Other`; `None` for
/// errors that are failures rather than answers.
pub fn unusable(e: &io::Error, path: &str) -> Option<String> {
    let what = match e.raw_os_error() {
        Some(nix::libc::ENOENT) => "a path that does not exist",
        Some(nix::libc::ELOOP) => "a symbolic link loop",
        Some(nix::libc::ENOTDIR) => "a path through something that is not a directory",
        _ => return None,
    };
    Some(format!("{what} ({path})"))
}

/// `r`, the opening or `stat` of `params`' `path`, as `classify` takes it: `Ok(Ok(_))`
/// on success, `Ok(Err(Target::Other))` when the failure says what `path` is
/// (`unusable`), `Err` ("cannot {doing} params ...") for any other failure.
pub fn or_unusable<T>(
    r: io::Result<T>,
    path: &str,
    doing: &str,
) -> Result<std::result::Result<T, Target>> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(e) => match unusable(&e, path) {
            Some(what) => Ok(Err(Target::Other { what })),
            None => Err(anyhow::Error::new(e).context(format!("cannot {doing} params {path:?}"))),
        },
    }
}

/// The platform this binary runs on.
#[cfg(target_os = "linux")]
pub type Host = linux::Linux;
#[cfg(target_os = "netbsd")]
pub type Host = netbsd::NetBsd<netbsd::Kernel>;
#[cfg(target_os = "freebsd")]
pub type Host = freebsd::FreeBsd;

/// The device number of a path that is a block (FreeBSD: disk) device now, on this host.
pub fn stat_device(path: &str) -> Option<DevNum> {
    match host().stat_identity(path)? {
        Identity::Dev(d) => Some(d),
        Identity::File { .. } => None,
    }
}

/// The running system's platform.
pub fn host() -> Host {
    #[cfg(target_os = "linux")]
    return linux::Linux;
    #[cfg(target_os = "netbsd")]
    return netbsd::NetBsd::new(netbsd::Kernel);
    #[cfg(target_os = "freebsd")]
    return freebsd::FreeBsd::host();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn or_unusable_answers_what_params_is_and_fails_otherwise() {
        let gone = "/nonexistent-xbh-or-unusable/disk.img";
        match or_unusable(std::fs::metadata(gone), gone, "stat").unwrap() {
            Err(Target::Other { what }) => {
                assert_eq!(what, format!("a path that does not exist ({gone})"))
            }
            _ => panic!("a missing path is Target::Other"),
        }
        let denied = io::Error::from_raw_os_error(nix::libc::EACCES);
        let e = or_unusable::<()>(Err(denied), "/x", "open").unwrap_err();
        assert_eq!(e.to_string(), "cannot open params \"/x\"");
        assert!(format!("{e:#}").contains("ermission denied"), "{e:#}");
        assert_eq!(or_unusable(Ok(5), "/x", "stat").unwrap().ok(), Some(5));
    }
}
