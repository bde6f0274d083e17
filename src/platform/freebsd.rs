//! FreeBSD dom0 (interface doc §4.5). FreeBSD's blkback opens the file or (character)
//! device named by `physical-device-path` itself, so there is nothing to attach and no
//! `physical-device` to spell. The sharing check therefore works on what paths name: two
//! paths are the same disk when they name the same file (`st_dev`, `st_ino`) or the same
//! device (`st_rdev`). Unlike upstream, add checks that `params` exists and is usable,
//! refuses to hand a disk to two guests (or to a guest while it is mounted) in conflicting
//! modes, and writes `hotplug-status`. Remove has nothing to undo.
//!
//! Everything but the mount listing (`getfsstat(2)`) is `std::os::unix` metadata, so the
//! platform is compiled, and its rules tested, on every OS.

use std::fs::{self, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::devnum::DevNum;
use crate::mountinfo::Mount;
use crate::record::Record;

use super::{
    Attached, Attachment, Device, FileTarget, Identity, LegacyNodes, Opened, Platform, Target,
    expand, or_unusable,
};

/// FreeBSD device numbers are opaque 64-bit ids (devfs gives majors no meaning), so they
/// are split at bit 32 only to fit `DevNum`; equality is all that matters.
pub fn split_dev(dev: u64) -> DevNum {
    DevNum::new(dev >> 32, dev & 0xffff_ffff)
}

/// What blkback can use: a regular file, or a character (or block) device. `None` for
/// directories, FIFOs, sockets.
pub fn identity_of(meta: &Metadata) -> Option<Identity> {
    let ft = meta.file_type();
    if ft.is_file() {
        Some(Identity::File {
            fs: split_dev(meta.dev()),
            ino: meta.ino(),
        })
    } else if ft.is_char_device() || ft.is_block_device() {
        Some(Identity::Dev(split_dev(meta.rdev())))
    } else {
        None
    }
}

/// What `path` names now, for blkback.
pub fn stat_identity(path: &str) -> Option<Identity> {
    if !path.starts_with('/') {
        return None;
    }
    identity_of(&fs::metadata(path).ok()?)
}

/// A disk device's number: FreeBSD has no block devices, disks are character devices.
pub fn stat_device(path: &str) -> Option<DevNum> {
    match stat_identity(path)? {
        Identity::Dev(d) => Some(d),
        Identity::File { .. } => None,
    }
}

/// The FreeBSD platform: its mounts, how paths are identified, where the lock lives.
pub struct FreeBsd {
    pub mounts: Box<dyn Fn() -> Result<Vec<Mount>> + Send + Sync>,
    pub stat: fn(&str) -> Option<Identity>,
    pub lock_dir: PathBuf,
}

impl FreeBsd {
    /// The running FreeBSD system.
    #[cfg(target_os = "freebsd")]
    pub fn host() -> FreeBsd {
        FreeBsd {
            mounts: Box::new(local_mounts),
            stat: stat_identity,
            lock_dir: crate::lock::lock_dir(),
        }
    }
}

fn nothing_to_attach() -> anyhow::Error {
    anyhow::anyhow!("FreeBSD's blkback opens files itself: there is nothing to attach")
}

impl Platform for FreeBsd {
    const PUBLISHED: &'static str = "physical-device-path";
    const ATTACHED_NODE: &'static str = "node";
    const ATTACHED_VERB: &'static str = "is used through";
    /// Never written (FreeBSD attaches nothing).
    const RECORD_KIND: &'static str = "none";

    fn classify(&self, params: &str) -> Result<Target> {
        let path = expand(params);
        let meta = match or_unusable(fs::metadata(&path), &path, "stat")? {
            Ok(m) => m,
            Err(other) => return Ok(other),
        };
        let Some(ident) = identity_of(&meta) else {
            return Ok(Target::Other {
                what: if meta.is_dir() {
                    format!("a directory ({path})")
                } else {
                    format!("neither a regular file nor a device ({path})")
                },
            });
        };
        // blkback opens what we write: the real path, so that a symlink changed later does
        // not swap the disk under the sharing check.
        let real = fs::canonicalize(&path)
            .ok()
            .and_then(|p| p.to_str().map(str::to_string))
            .unwrap_or(path);
        if fs::metadata(&real).ok().and_then(|m| identity_of(&m)) != Some(ident) {
            bail!("{real} changed while being attached");
        }
        Ok(Target::Device(Device {
            path: real,
            ident,
            file_mode: meta.is_file().then(|| meta.mode()),
            handle: None,
        }))
    }

    fn open_for_writing(&self, dev: &Device) -> io::Result<()> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev.path)
            .map(drop)
    }

    fn related(&self, dev: &Device) -> Result<Vec<Identity>> {
        Ok(vec![dev.ident])
    }

    fn related_what(&self, dev: &Device, _via: DevNum) -> String {
        format!("Device {}", dev.path)
    }

    fn open_file(&self, _file: &FileTarget, _read_only: bool) -> io::Result<Opened> {
        Err(io::Error::other(nothing_to_attach()))
    }

    fn attached_by(&self, _file: &FileTarget) -> Result<Vec<Attachment>> {
        Err(nothing_to_attach())
    }

    fn related_to_attachment(&self, dev: DevNum) -> Vec<DevNum> {
        vec![dev]
    }

    fn attach(
        &self,
        _file: &FileTarget,
        _opened: Opened,
        _read_only: bool,
        _backend: &str,
        _save: &dyn Fn(&Record) -> Result<()>,
    ) -> Result<Attached> {
        Err(nothing_to_attach())
    }

    fn undo_attach(&self, _attached: &Attached) -> Result<()> {
        Err(nothing_to_attach())
    }

    fn detach_recorded(&self, _rec: &Record) -> Result<()> {
        Err(nothing_to_attach())
    }

    fn detach_legacy(&self, _nodes: &LegacyNodes, _file: Option<&FileTarget>) -> Result<()> {
        Ok(())
    }

    /// FreeBSD's blkback does not read `physical-device`.
    fn format_physical_device(&self, _dev: Identity) -> Option<String> {
        None
    }

    fn parse_physical_device(&self, _value: &str) -> Option<DevNum> {
        None
    }

    fn stat_identity(&self, path: &str) -> Option<Identity> {
        (self.stat)(path)
    }

    fn local_mounts(&self) -> Result<Vec<Mount>> {
        (self.mounts)()
    }

    fn lock_dir(&self) -> PathBuf {
        self.lock_dir.clone()
    }

    /// FreeBSD attaches nothing, so it records nothing.
    fn load_record(&self, _key: &str) -> Result<Option<Record>> {
        Ok(None)
    }
}

#[cfg(target_os = "freebsd")]
/// Every mount whose source is a device, from `getfsstat(2)` (no waiting on stale network
/// filesystems), each device found by a `stat` of its `/dev` source.
pub fn local_mounts() -> Result<Vec<Mount>> {
    use nix::libc;
    // SAFETY: `statfs` is the struct getfsstat fills, plain integers and byte arrays, and
    // the call is given the buffer's own size in bytes.
    let stats = unsafe {
        super::bsd::mount_table("getfsstat", |buf: *mut libc::statfs, bytes| {
            let bytes = libc::c_long::try_from(bytes).unwrap_or(0);
            libc::getfsstat(buf, bytes, libc::MNT_NOWAIT)
        })
    }?;
    Ok(stats
        .iter()
        .filter_map(|s| {
            super::bsd::device_mount(
                stat_device,
                &s.f_mntfromname,
                &s.f_mntonname,
                s.f_flags & (libc::MNT_RDONLY as u64) != 0,
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_from_real_metadata() {
        let dir = std::env::temp_dir().join(format!("xbh-fbsd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.img");
        std::fs::write(&f, b"x").unwrap();
        let l = dir.join("link.img");
        let _ = std::fs::remove_file(&l);
        std::os::unix::fs::symlink(&f, &l).unwrap();
        let a = stat_identity(f.to_str().unwrap()).unwrap();
        let b = stat_identity(l.to_str().unwrap()).unwrap();
        assert_eq!(a, b, "a symlink names the same file");
        assert!(matches!(a, Identity::File { .. }));
        assert_eq!(stat_identity(dir.to_str().unwrap()), None);
        assert_eq!(stat_identity("relative.img"), None);
        let null = stat_identity("/dev/null").unwrap();
        assert!(matches!(null, Identity::Dev(_)));
        assert_eq!(stat_device("/dev/null"), Some(null.dev()));
        assert_eq!(stat_device(f.to_str().unwrap()), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_and_numbers() {
        assert_eq!(expand("ada1"), "/dev/ada1");
        assert_eq!(expand("/vm/a.img"), "/vm/a.img");
        assert_eq!(split_dev(0x1_0000_005a), DevNum::new(1, 0x5a));
    }
}
