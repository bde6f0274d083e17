//! FreeBSD dom0: the `block` script (interface doc §4.5). FreeBSD's blkback opens the file
//! or (character) device named by `physical-device-path` itself, so there is nothing to
//! attach. Unlike upstream, add checks that `params` exists and is usable, refuses to hand
//! a disk to two guests (or to a guest while it is mounted) in conflicting modes, and
//! writes `hotplug-status`. Remove has nothing to undo.
//!
//! The script itself is in `freebsd_logic`, tested on every OS; this module supplies the
//! mounts (`getfsstat(2)`) and device numbers.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use anyhow::{Context, Result};
use nix::libc;

use super::bsd;
use super::freebsd_logic as fb;
use crate::backend::Backend;
use crate::devnum::DevNum;
use crate::invocation::{self, Action, LinuxEnv, Request, UsageError};
use crate::log;
use crate::mountinfo::Mount;
use crate::script::Script;

pub fn parse_invocation(args: &[String], _env: &LinuxEnv) -> Result<Request, UsageError> {
    invocation::parse_freebsd(args)
}

/// FreeBSD has no block devices: disks are character devices, and this answers for them.
pub fn stat_block_device(path: &str) -> Option<DevNum> {
    if !path.starts_with('/') {
        return None;
    }
    let meta = fs::metadata(path).ok()?;
    let ft = meta.file_type();
    (ft.is_char_device() || ft.is_block_device()).then(|| fb::split_dev(meta.rdev()))
}

/// Every mount whose source is a device, from `getfsstat(2)` (no waiting on stale network
/// filesystems), each device found by a `stat` of its `/dev` source.
pub fn local_mounts() -> Result<Vec<Mount>> {
    let mut cap = 0usize;
    let stats = loop {
        // SAFETY: a null buffer only asks for the number of mounts.
        let n = unsafe { libc::getfsstat(std::ptr::null_mut(), 0, libc::MNT_NOWAIT) };
        let n = usize::try_from(n)
            .map_err(|_| io::Error::last_os_error())
            .context("getfsstat failed: cannot list mounts for the sharing check")?;
        cap = cap.max(n) + 16;
        // SAFETY: statfs is plain integers and byte arrays; all zeroes is a valid value.
        let mut buf: Vec<libc::statfs> = (0..cap).map(|_| unsafe { std::mem::zeroed() }).collect();
        let bytes = libc::c_long::try_from(cap * std::mem::size_of::<libc::statfs>())
            .context("too many mounts")?;
        // SAFETY: the buffer holds `cap` entries and we pass its size in bytes.
        let got = unsafe { libc::getfsstat(buf.as_mut_ptr(), bytes, libc::MNT_NOWAIT) };
        let got = usize::try_from(got)
            .map_err(|_| io::Error::last_os_error())
            .context("getfsstat failed: cannot list mounts for the sharing check")?;
        if got < cap {
            buf.truncate(got);
            break buf;
        }
    };
    Ok(stats
        .iter()
        .filter_map(|s| {
            bsd::device_mount(
                &s.f_mntfromname,
                &s.f_mntonname,
                s.f_flags & (libc::MNT_RDONLY as u64) != 0,
            )
        })
        .collect())
}

/// FreeBSD's blkback does not read `physical-device`; nothing is ever parsed from it.
pub fn parse_physical_device(_value: &str) -> Option<DevNum> {
    None
}

pub fn format_physical_device(dev: DevNum) -> String {
    dev.to_linux_hex()
}

pub fn block(action: Action, be: &Backend, script: &Script) -> Result<()> {
    match action {
        Action::Add => fb::add(
            be,
            script,
            &fb::System {
                mounts: &local_mounts,
                lock_dir: &crate::paths::lock_dir(),
            },
        ),
        Action::Remove => {
            log::debug(&format!("{}: nothing to undo", be.path.path));
            Ok(())
        }
    }
}

/// The storage helpers (`block-iscsi`, `block-nbd`, `block-drbd`) are Linux-only.
pub fn storage_helper(
    personality: crate::cli::Personality,
    _action: Action,
    _be: &Backend,
) -> Result<()> {
    anyhow::bail!("{} is not supported on FreeBSD", personality.name())
}
