//! Linux dom0: the `block` script proper (interface doc §4.2), phy and file backends.

mod attach;
mod drbd;
mod iscsi;
pub mod loopdev;
mod nbd;

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use anyhow::{Context, Result, anyhow, bail};

use crate::backend::{Backend, busy};
use crate::devnum::DevNum;
use crate::invocation::{self, Action, LinuxEnv, Request, UsageError};
use crate::lease;
use crate::lock::Lock;
use crate::log;
use crate::mode::Mode;
use crate::mountinfo::{self, Mount};
use crate::request::{AddNodes, Frontend, read_only_file, refused_write, require_init_wait};
use crate::script::Script;
use crate::sharing::{self, Scan};
use crate::state::{self, Record};

use loopdev::{Attached, Detach, split_dev};

pub fn parse_invocation(args: &[String], env: &LinuxEnv) -> Result<Request, UsageError> {
    invocation::parse_linux(args, env)
}

pub fn stat_block_device(path: &str) -> Option<DevNum> {
    if !path.starts_with('/') {
        return None;
    }
    let meta = std::fs::metadata(path).ok()?;
    meta.file_type()
        .is_block_device()
        .then(|| split_dev(meta.rdev()))
}

/// The devices whose use conflicts with handing `dev` to a guest: `dev` itself, the whole
/// disk it is a partition of, its own partitions, and every device stacked on any of these
/// (device-mapper, md: sysfs `holders`), transitively. Upstream compares the device alone,
/// so a disk could go to a guest read-write while one of its partitions, or an LVM volume
/// on it, is mounted in dom0 or attached to another guest. Whatever sysfs cannot tell is
/// left out: the result always holds `dev`.
pub fn related_devices(dev: DevNum) -> Vec<DevNum> {
    related_devices_in(std::path::Path::new("/sys"), dev)
}

/// `related_devices` over the sysfs mounted at `sys` (a test builds a tree of its own:
/// this kernel may have neither partition tables nor device-mapper to show).
fn related_devices_in(sys: &std::path::Path, dev: DevNum) -> Vec<DevNum> {
    use std::path::{Path, PathBuf};
    fn dev_of(dir: &Path) -> Option<DevNum> {
        DevNum::parse_decimal_pair(&std::fs::read_to_string(dir.join("dev")).ok()?)
    }
    let mut out = vec![dev];
    let Ok(me) = std::fs::canonicalize(sys.join(format!("dev/block/{}:{}", dev.major, dev.minor)))
    else {
        return out;
    };
    let mut dirs: Vec<PathBuf> = vec![me.clone()];
    // A partition: its whole disk is the parent directory.
    if me.join("partition").exists()
        && let Some(parent) = me.parent()
    {
        dirs.push(parent.to_path_buf());
    }
    // A whole disk: its partitions are subdirectories with a `partition` file.
    if let Ok(entries) = std::fs::read_dir(&me) {
        for e in entries.flatten() {
            if e.path().join("partition").exists() {
                dirs.push(e.path());
            }
        }
    }
    // Everything stacked on those, transitively (bounded: sysfs has no cycles, but a
    // racing reconfiguration must not make us loop).
    let mut i = 0;
    while let Some(d) = dirs.get(i).cloned()
        && dirs.len() < 256
    {
        if let Ok(holders) = std::fs::read_dir(d.join("holders")) {
            for h in holders.flatten() {
                if let Ok(p) = std::fs::canonicalize(h.path())
                    && !dirs.contains(&p)
                {
                    dirs.push(p);
                }
            }
        }
        i += 1;
    }
    for d in &dirs {
        if let Some(n) = dev_of(d)
            && !out.contains(&n)
        {
            out.push(n);
        }
    }
    out
}

/// Every mount of this (dom0) system, from `/proc/self/mountinfo`.
pub fn local_mounts() -> Result<Vec<Mount>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo for the sharing check")?;
    mountinfo::parse(&text)
        .map_err(|line| anyhow!("cannot parse /proc/self/mountinfo line {line:?}"))
}

/// Another backend's `physical-device`, read the way blkback reads it (it is what blkback
/// opens, whatever the spelling).
pub fn parse_physical_device(value: &str) -> Option<DevNum> {
    DevNum::parse_blkback(value)
}

pub fn format_physical_device(dev: DevNum) -> String {
    dev.to_linux_hex()
}

/// The storage helpers: `block-iscsi`, `block-nbd`, `block-drbd`.
pub fn storage_helper(
    personality: crate::cli::Personality,
    action: Action,
    be: &Backend,
) -> Result<()> {
    use crate::cli::Personality as P;
    match (personality, action) {
        (P::Iscsi, Action::Add) => iscsi::add(be),
        (P::Iscsi, Action::Remove) => iscsi::remove(be),
        (P::Nbd, Action::Add) => nbd::add(be),
        (P::Nbd, Action::Remove) => nbd::remove(be),
        (P::Drbd, Action::Add) => drbd::add(be),
        (P::Drbd, Action::Remove) => drbd::remove(be),
        (P::Block, _) => bail!("block is not a storage helper"),
    }
}

pub fn block(action: Action, be: &Backend, script: &Script) -> Result<()> {
    match action {
        Action::Add => add(be, script),
        Action::Remove => remove(be, script),
    }
}

/// `params` opened once, without side effects (`O_PATH`: no device open, no FIFO block,
/// no automount), with every later decision taken from this fd.
enum Target {
    Block {
        fd: File,
        path: String,
        rdev: DevNum,
    },
    File {
        fd: File,
        path: String,
        meta: Metadata,
    },
    Other {
        what: String,
    },
}

/// proc, sysfs, debugfs, tracefs, securityfs, cgroup, cgroup2, bpf, configfs, efivarfs,
/// pstore (`statfs` magic numbers, linux/magic.h).
const PSEUDO_FS: [u64; 11] = [
    0x9fa0,
    0x6265_6572,
    0x6462_6720,
    0x7472_6163,
    0x7363_6673,
    0x0027_e0eb,
    0x6367_7270,
    0xcafe_4a11,
    0x6265_6570,
    0xde5e_81e4,
    0x6165_676c,
];

/// Upstream `expand_dev`: a relative name means `/dev/<name>`.
fn expand(params: &str) -> String {
    if params.starts_with('/') {
        params.to_string()
    } else {
        format!("/dev/{params}")
    }
}

fn open_target(params: &str) -> Result<Target> {
    let path = expand(params);
    if path.contains('\0') {
        bail!("params {params:?} contains a NUL byte");
    }
    let fd = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_PATH | nix::libc::O_NOCTTY)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            let what = match e.raw_os_error() {
                Some(nix::libc::ENOENT) => "a path that does not exist".to_string(),
                Some(nix::libc::ELOOP) => "a symbolic link loop".to_string(),
                Some(nix::libc::ENOTDIR) => {
                    "a path through something that is not a directory".to_string()
                }
                _ => return Err(e).with_context(|| format!("cannot open params {path:?}")),
            };
            return Ok(Target::Other {
                what: format!("{what} ({path})"),
            });
        }
    };
    let meta = fd
        .metadata()
        .with_context(|| format!("cannot stat {path}"))?;
    // Files of kernel pseudo file systems are not disk images.
    if let Ok(fs) = nix::sys::statfs::fstatfs(&fd)
        && PSEUDO_FS.contains(&(fs.filesystem_type().0 as u64))
    {
        return Ok(Target::Other {
            what: format!("a file on a kernel pseudo file system ({path})"),
        });
    }
    let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .ok()
        .and_then(|p| p.to_str().map(str::to_string))
        .unwrap_or_else(|| path.clone());
    let ft = meta.file_type();
    Ok(if ft.is_block_device() {
        Target::Block {
            fd,
            path: real,
            rdev: split_dev(meta.rdev()),
        }
    } else if ft.is_file() {
        Target::File {
            fd,
            path: real,
            meta,
        }
    } else {
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        Target::Other {
            what: format!("{kind} ({real})"),
        }
    })
}

/// Re-opens an `O_PATH` fd for real, on the very same inode.
fn reopen(fd: &File, write: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(nix::libc::O_NOCTTY | nix::libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn add(be: &Backend, script: &Script) -> Result<()> {
    let Some(nodes) = AddNodes::read(be)? else {
        return Ok(());
    };
    let target = open_target(&nodes.params)?;
    if let Target::Other { what } = &target {
        return script.hand_over(&nodes.params, what, nodes.ty.as_deref());
    }
    let scan = Frontend::read(be, &nodes.mode)?.scan(be);
    match target {
        Target::Block { fd, path, rdev } => add_phy(be, &scan, &fd, &path, rdev),
        Target::File { fd, path, meta } => add_file(be, &scan, &fd, &path, &meta),
        Target::Other { .. } => Ok(()),
    }
}

fn add_phy(be: &Backend, scan: &Scan, fd: &File, path: &str, rdev: DevNum) -> Result<()> {
    // Opened read-only and non-blocking only to ask for the disk sequence number.
    let seq = reopen(fd, false).ok().and_then(|f| loopdev::diskseq(&f));
    let lock = Lock::claim("block")?;
    if scan.mode != Mode::Force
        && let Some(h) = scan.check(&related_devices(rdev))?
    {
        let what = if h.dev() == rdev {
            format!("Device {path}")
        } else {
            // A partition, whole disk or stacked device of ours is the one in use.
            format!("Device {path} (through the related device {})", h.dev())
        };
        return Err(busy(sharing::busy_message(&what, scan.mode, &h)));
    }
    // --- cluster lease (issue 15): after the local check, recorded before publishing;
    // released again if the add fails (the guard's drop), kept on success.
    let key = be.path.state_key();
    let id = lease::Identity::of_block(path, rdev);
    let lease = lease::for_add(&key, &id, scan.mode, &scan.frontend_uuid)?;
    lease.save_phy(&key, path)?;
    be.write_dev(None, path, rdev, seq)
        .inspect_err(|_| lease.forget_phy(&key))?;
    lease.keep();
    // --- end cluster lease
    log::debug(&format!(
        "block lock held for {} us",
        lock.held_for().as_micros()
    ));
    Ok(())
}

fn add_file(be: &Backend, scan: &Scan, fd: &File, path: &str, meta: &Metadata) -> Result<()> {
    let lock = Lock::claim("block")?;
    let key = be.path.state_key();
    // A record for this backend path without `physical-device` is an attach that never
    // finished (killed, or the backend was torn down and re-created): that loop belongs to
    // no one now. Detach it (with its identity checks) instead of forgetting it.
    if let Some(old) = state::load(&key)? {
        log::err(&format!("{key}: cleaning up an unfinished earlier attach"));
        remove_recorded(&key, &old)?;
    }
    require_init_wait(be)?;
    if scan.mode == Mode::Write && meta.mode() & 0o222 == 0 {
        return Err(read_only_file(path));
    }
    let backing = match reopen(fd, scan.mode.writable()) {
        Ok(f) => f,
        Err(e) if scan.mode.writable() && refused_write(&e) => {
            return Err(read_only_file(path).context(e.to_string()));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open {path}")),
    };
    let bdev = split_dev(meta.dev());
    if scan.mode != Mode::Force {
        let loops = loopdev::loops_backed_by(bdev, meta.ino())?;
        let mut cands: Vec<DevNum> = Vec::new();
        for (_, d) in &loops {
            for r in related_devices(*d) {
                if !cands.contains(&r) {
                    cands.push(r);
                }
            }
        }
        if let Some(h) = scan.check(&cands)? {
            let via = loops
                .iter()
                .find(|(_, d)| *d == h.dev())
                .map(|(p, d)| format!("{p} ({d})"))
                .unwrap_or_else(|| h.dev().to_string());
            let what = format!("File {path} is loopback-mounted through {via},\nwhich");
            return Err(busy(sharing::busy_message(&what, scan.mode, &h)));
        }
    }

    // --- cluster lease (issue 15): after the local check, before the loop is attached;
    // named in the remove record, released by the guard's drop if the add fails.
    let lease = lease::for_add(
        &key,
        &lease::Identity::of_file(path),
        scan.mode,
        &scan.frontend_uuid,
    )?;
    // --- end cluster lease
    let mut rec = Record::default();
    rec.set("kind", "loop")
        .set("backend", be.path.path.as_str())
        .set("params", path)
        .set("backing", format!("{}:{}", bdev, meta.ino()));
    lease.store(&mut rec); // cluster lease (issue 15)
    let (attached, loopfd) =
        loopdev::attach(&backing, path, scan.mode == Mode::Read, |node, rdev| {
            rec.set("node", node).set("rdev", rdev.to_string());
            state::save(&key, &rec)
        })
        .inspect_err(|_| {
            let _ = state::delete(&key);
        })?;
    let undo = |e: anyhow::Error| -> anyhow::Error {
        if let Err(d) = loopdev::detach_fd(&loopfd) {
            log::err(&format!(
                "could not undo attach of {}: {d:#}",
                attached.path
            ));
            return e;
        }
        let _ = state::delete(&key);
        e
    };
    if let Some(seq) = attached.diskseq {
        rec.set("diskseq", format!("{seq:x}"));
    }
    state::save(&key, &rec).map_err(undo)?;
    be.write_dev(
        Some(&attached.path),
        &attached.path,
        attached.rdev,
        attached.diskseq,
    )
    .map_err(undo)?;
    lease.keep(); // cluster lease (issue 15)
    log::debug(&format!(
        "block lock held for {} us",
        lock.held_for().as_micros()
    ));
    Ok(())
}

fn remove(be: &Backend, script: &Script) -> Result<()> {
    let key = be.path.state_key();
    if let Some(rec) = state::load(&key)? {
        // --- cluster lease (issue 15): a phy backend's record only names its lease.
        if rec.get("kind") == Some("phy") {
            lease::release_recorded(&rec)?;
            return state::delete(&key);
        }
        // --- end cluster lease
        if rec.get("kind") != Some("loop") {
            // Written by another personality (block-iscsi, ...) for this backend: its own
            // remove undoes it, not ours.
            log::err(&format!(
                "{key}: the record is a {} attachment, not a loop: left for its own script",
                rec.get("kind").unwrap_or("unknown")
            ));
            return Ok(());
        }
        let _lock = Lock::claim("block")?;
        return remove_recorded(&key, &rec);
    }
    // No record: a phy backend, one attached by the shell script, or nothing we know.
    let Some(params) = be.read("params")? else {
        log::debug(&format!(
            "{}: no params and no record: nothing to undo",
            be.path.path
        ));
        return Ok(());
    };
    let ty = be.read("type")?;
    match open_target(&params)? {
        Target::Block { .. } => Ok(()),
        Target::File { meta, .. } => remove_legacy_loop(be, &meta),
        Target::Other { .. } => match script.helper_for(ty.as_deref()) {
            Some(helper) => Err(script.exec(&helper)),
            None => Ok(()),
        },
    }
}

fn remove_recorded(key: &str, rec: &Record) -> Result<()> {
    let rdev = DevNum::parse_linux_hex(rec.require("rdev")?)
        .ok_or_else(|| anyhow!("record {key}: bad rdev"))?;
    let (bdev, bino) = rec
        .require("backing")?
        .rsplit_once(':')
        .and_then(|(d, i)| Some((DevNum::parse_linux_hex(d)?, i.parse::<u64>().ok()?)))
        .ok_or_else(|| anyhow!("record {key}: bad backing"))?;
    let diskseq = match rec.get("diskseq") {
        Some(s) => {
            Some(u64::from_str_radix(s, 16).map_err(|_| anyhow!("record {key}: bad diskseq"))?)
        }
        None => None,
    };
    let attached = Attached {
        path: rec.require("node")?.to_string(),
        rdev,
        diskseq,
    };
    detach(&attached, (bdev, bino))?;
    lease::release_recorded(rec)?; // cluster lease (issue 15): once the loop is gone
    state::delete(key)
}

fn detach(attached: &Attached, backing: (DevNum, u64)) -> Result<()> {
    match loopdev::detach_if_ours(attached, backing)? {
        Detach::Detached => log::debug(&format!("detached {}", attached.path)),
        Detach::AlreadyFree => log::debug(&format!("{} was already detached", attached.path)),
        Detach::Reused(why) => log::err(&format!("not detaching: {why}")),
    }
    Ok(())
}

/// A loop attached without a record (by upstream's script, or before an upgrade): detach
/// `node` only if it is still backed by `params` and matches `physical-device`/`diskseq`.
fn remove_legacy_loop(be: &Backend, meta: &Metadata) -> Result<()> {
    let Some(node) = be.read("node")? else {
        log::debug(&format!(
            "{}: file backend without node: nothing to detach",
            be.path.path
        ));
        return Ok(());
    };
    let rdev = match be
        .read("physical-device")?
        .as_deref()
        .and_then(DevNum::parse_linux_hex)
    {
        Some(d) => d,
        None => match stat_block_device(&node) {
            Some(d) => d,
            None => {
                log::debug(&format!("{node} is not a block device: nothing to detach"));
                return Ok(());
            }
        },
    };
    let diskseq = be
        .read("diskseq")?
        .and_then(|s| u64::from_str_radix(&s, 16).ok());
    let _lock = Lock::claim("block")?;
    detach(
        &Attached {
            path: node,
            rdev,
            diskseq,
        },
        (split_dev(meta.dev()), meta.ino()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    fn node(dir: &Path, dev: &str) {
        fs::create_dir_all(dir.join("holders")).unwrap();
        fs::write(dir.join("dev"), format!("{dev}\n")).unwrap();
    }

    /// sda (8:0) with partitions sda1 (8:1, holding dm-0 253:0, which holds dm-1 253:1)
    /// and sda2 (8:2); sdb (8:16) alone. Laid out as sysfs does it.
    fn tree() -> std::path::PathBuf {
        let sys = std::env::temp_dir().join(format!("xbh-sysfs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&sys);
        let blk = sys.join("devices/block");
        node(&blk.join("sda"), "8:0");
        for (p, d) in [("sda1", "8:1"), ("sda2", "8:2")] {
            node(&blk.join("sda").join(p), d);
            fs::write(blk.join("sda").join(p).join("partition"), "1\n").unwrap();
        }
        node(&blk.join("dm-0"), "253:0");
        node(&blk.join("dm-1"), "253:1");
        node(&blk.join("sdb"), "8:16");
        symlink(blk.join("dm-0"), blk.join("sda/sda1/holders/dm-0")).unwrap();
        symlink(blk.join("dm-1"), blk.join("dm-0/holders/dm-1")).unwrap();
        fs::create_dir_all(sys.join("dev/block")).unwrap();
        for (d, p) in [
            ("8:0", "sda"),
            ("8:1", "sda/sda1"),
            ("8:2", "sda/sda2"),
            ("253:0", "dm-0"),
            ("253:1", "dm-1"),
            ("8:16", "sdb"),
        ] {
            symlink(blk.join(p), sys.join("dev/block").join(d)).unwrap();
        }
        sys
    }

    fn sorted(mut v: Vec<DevNum>) -> Vec<DevNum> {
        v.sort();
        v
    }

    #[test]
    fn related_devices_follow_partitions_and_holders() {
        let sys = tree();
        let d = DevNum::new;
        // The whole disk: its partitions and everything stacked on them.
        assert_eq!(
            sorted(related_devices_in(&sys, d(8, 0))),
            vec![d(8, 0), d(8, 1), d(8, 2), d(253, 0), d(253, 1)]
        );
        // A partition: itself, its whole disk, what is stacked on it; not its sibling.
        let p1 = sorted(related_devices_in(&sys, d(8, 1)));
        assert_eq!(p1, vec![d(8, 0), d(8, 1), d(253, 0), d(253, 1)]);
        let p2 = sorted(related_devices_in(&sys, d(8, 2)));
        assert_eq!(p2, vec![d(8, 0), d(8, 2)]);
        // Unrelated disks and unknown devices: just themselves.
        assert_eq!(related_devices_in(&sys, d(8, 16)), vec![d(8, 16)]);
        assert_eq!(related_devices_in(&sys, d(9, 9)), vec![d(9, 9)]);
        fs::remove_dir_all(&sys).unwrap();
    }
}
