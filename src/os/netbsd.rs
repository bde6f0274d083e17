//! NetBSD dom0: the system calls behind `netbsd_logic`, which holds the `block` script
//! (interface doc §4.4) and is tested on every OS. phy: the device itself; file: a free
//! `vnd(4)` unit configured with `vnconfig`; xbdback reads `physical-device` as a decimal
//! `dev_t`. Here: mounts from `getvfsstat(2)`, `hw.disknames` from `sysctlbyname(3)`, the
//! file behind a unit from `VNDIOCGET`, and `/usr/sbin/vnconfig`.

use std::ffi::CStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use nix::libc;

use super::bsd;
use super::netbsd_logic::{self as nb, NetBsd, Target, VndUser};
use crate::backend::Backend;
use crate::devnum::DevNum;
use crate::invocation::{self, Action, LinuxEnv, Request, UsageError};
use crate::lock::Lock;
use crate::log;
use crate::mountinfo::Mount;
use crate::record::{self, Record};
use crate::script::Script;
use crate::sharing::{Holder, Scan};

const VNCONFIG: &str = "/usr/sbin/vnconfig";

pub fn parse_invocation(args: &[String], _env: &LinuxEnv) -> Result<Request, UsageError> {
    invocation::parse_netbsd(args)
}

pub fn stat_block_device(path: &str) -> Option<DevNum> {
    if !path.starts_with('/') {
        return None;
    }
    let meta = fs::metadata(path).ok()?;
    if !meta.file_type().is_block_device() {
        return None;
    }
    nb::split_dev(meta.rdev())
}

/// Every mount backed by a block device, from `getvfsstat(2)` (no waiting on stale
/// network filesystems), each device found by a `stat` of its `/dev` source.
pub fn local_mounts() -> Result<Vec<Mount>> {
    let mut cap = 0usize;
    let stats = loop {
        // SAFETY: a null buffer only asks for the number of mounts.
        let n = unsafe { libc::getvfsstat(std::ptr::null_mut(), 0, libc::MNT_NOWAIT) };
        let n = usize::try_from(n)
            .map_err(|_| io::Error::last_os_error())
            .context("getvfsstat failed: cannot list mounts for the sharing check")?;
        cap = cap.max(n) + 16;
        // SAFETY: statvfs is plain integers and byte arrays; all zeroes is a valid value.
        let mut buf: Vec<libc::statvfs> = (0..cap).map(|_| unsafe { std::mem::zeroed() }).collect();
        // SAFETY: the buffer holds `cap` entries and we pass its size in bytes.
        let got = unsafe {
            libc::getvfsstat(
                buf.as_mut_ptr(),
                cap * std::mem::size_of::<libc::statvfs>(),
                libc::MNT_NOWAIT,
            )
        };
        let got = usize::try_from(got)
            .map_err(|_| io::Error::last_os_error())
            .context("getvfsstat failed: cannot list mounts for the sharing check")?;
        // A full buffer may mean more mounts appeared meanwhile: ask again.
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
                s.f_flag & libc::ST_RDONLY != 0,
            )
        })
        .collect())
}

pub fn parse_physical_device(value: &str) -> Option<DevNum> {
    nb::parse_physical_device(value)
}

pub fn format_physical_device(dev: DevNum) -> String {
    nb::format_physical_device(dev)
}

pub fn block(action: Action, be: &Backend, script: &Script) -> Result<()> {
    nb::block(&System, action, be, script)
}

/// The storage helpers (`block-iscsi`, `block-nbd`, `block-drbd`) are Linux-only.
pub fn storage_helper(
    personality: crate::cli::Personality,
    _action: Action,
    _be: &Backend,
) -> Result<()> {
    bail!("{} is not supported on NetBSD", personality.name())
}

/// The real system behind `netbsd_logic::NetBsd`.
struct System;

impl NetBsd for System {
    fn classify(&self, params: &str) -> Result<Target> {
        classify(params)
    }

    fn open_check(&self, path: &str, read_only: bool) -> io::Result<(u64, u64)> {
        let f = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let m = f.metadata()?;
        Ok((m.dev(), m.ino()))
    }

    fn disknames(&self) -> Result<String> {
        disknames()
    }

    fn dev_entries(&self) -> Result<Vec<String>> {
        Ok(fs::read_dir("/dev")
            .context("cannot list /dev")?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect())
    }

    fn has_raw_node(&self, unit: u32) -> bool {
        fs::symlink_metadata(nb::vnd_raw_node(unit)).is_ok()
    }

    fn backing_of(&self, unit: u32) -> Result<Option<(u64, u64)>> {
        backing_of(unit)
    }

    fn stat_block(&self, path: &str) -> Option<DevNum> {
        stat_block_device(path)
    }

    fn vnconfig(&self, unit: u32, file: &str, read_only: bool) -> Result<()> {
        vnconfig(unit, file, read_only)
    }

    fn vnunconfig(&self, unit: u32) -> Result<()> {
        vnunconfig(unit)
    }

    fn lock(&self) -> Result<Lock> {
        Lock::claim("block")
    }

    fn sharing(&self, scan: &Scan, cands: &[DevNum]) -> Result<Option<Holder>> {
        scan.check(cands)
    }

    fn save(&self, key: &str, rec: &Record) -> Result<()> {
        Ok(record::save(key, rec)?)
    }

    fn load(&self, key: &str) -> Result<Option<Record>> {
        Ok(record::load(key)?)
    }

    fn delete(&self, key: &str) -> Result<()> {
        Ok(record::delete(key)?)
    }
}

fn classify(params: &str) -> Result<Target> {
    let path = nb::expand(params);
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(e) => {
            let what = match e.raw_os_error() {
                Some(libc::ENOENT) => "a path that does not exist",
                Some(libc::ELOOP) => "a symbolic link loop",
                Some(libc::ENOTDIR) => "a path through something that is not a directory",
                _ => return Err(e).with_context(|| format!("cannot stat params {path:?}")),
            };
            return Ok(Target::Other {
                what: format!("{what} ({path})"),
            });
        }
    };
    let real = fs::canonicalize(&path)
        .ok()
        .and_then(|p| p.to_str().map(str::to_string))
        .unwrap_or_else(|| path.clone());
    let ft = meta.file_type();
    Ok(if ft.is_block_device() {
        match nb::split_dev(meta.rdev()) {
            Some(rdev) => Target::Block { path: real, rdev },
            None => bail!(
                "{real} has a device number NetBSD cannot spell: {}",
                meta.rdev()
            ),
        }
    } else if ft.is_file() {
        Target::File {
            path: real,
            dev: meta.dev(),
            ino: meta.ino(),
            perm: meta.mode(),
        }
    } else {
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_char_device() {
            "a character device (use the block device, without the r)"
        } else {
            "neither a block device nor a regular file"
        };
        Target::Other {
            what: format!("{kind} ({real})"),
        }
    })
}

/// `hw.disknames`, as `sysctl -n hw.disknames` prints it.
fn disknames() -> Result<String> {
    let name = c"hw.disknames";
    for _ in 0..8 {
        let mut len: libc::size_t = 0;
        // SAFETY: a null old pointer asks for the size; nothing is written.
        let r = unsafe {
            libc::sysctlbyname(
                name.as_ptr(),
                std::ptr::null_mut(),
                &mut len,
                std::ptr::null(),
                0,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error()).context("sysctl hw.disknames");
        }
        let mut buf = vec![0u8; len + 64];
        let mut got: libc::size_t = buf.len();
        // SAFETY: `buf` has `got` writable bytes; the kernel writes at most that many.
        let r = unsafe {
            libc::sysctlbyname(
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                &mut got,
                std::ptr::null(),
                0,
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOMEM) {
                continue; // a disk appeared between the two calls
            }
            return Err(e).context("sysctl hw.disknames");
        }
        buf.truncate(got.min(buf.len()));
        let text = CStr::from_bytes_until_nul(&buf)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_else(|_| String::from_utf8_lossy(&buf).into_owned());
        return Ok(text);
    }
    bail!("sysctl hw.disknames keeps growing")
}

/// The file backing a vnd unit, as `(st_dev, st_ino)`, or `None` when the unit is not
/// configured (`VNDIOCGET` on its raw partition, as `vnconfig -l` does).
fn backing_of(unit: u32) -> Result<Option<(u64, u64)>> {
    let node = nb::vnd_raw_node(unit);
    let f = match OpenOptions::new().read(true).open(&node) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {node}")),
    };
    vnd_get(&f).with_context(|| format!("VNDIOCGET on {node}"))
}

fn vnd_get(f: &File) -> io::Result<Option<(u64, u64)>> {
    let mut vnu = VndUser {
        vnu_unit: -1,
        ..VndUser::default()
    };
    // SAFETY: VNDIOCGET reads and writes one `struct vnd_user`, which `VndUser` mirrors
    // (its size is encoded in the request and checked by a unit test).
    let r = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            nb::VNDIOCGET as libc::c_ulong,
            &mut vnu as *mut VndUser,
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok((vnu.vnu_ino != 0).then_some((vnu.vnu_dev, vnu.vnu_ino)))
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    log::debug(&format!("running {shown}"));
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if out.status.success() {
        // vnconfig only warns, and exits 0, when it cannot open the file: keep its words
        // in the hotplug log for the error that follows.
        let warn = String::from_utf8_lossy(&out.stderr);
        if !warn.trim().is_empty() {
            log::err(&format!("{shown}: {}", warn.trim()));
        }
        return Ok(());
    }
    let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if msg.is_empty() {
        msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    bail!("{shown} failed ({}): {msg}", out.status)
}

fn vnconfig(unit: u32, file: &str, read_only: bool) -> Result<()> {
    let mut cmd = Command::new(VNCONFIG);
    if read_only {
        cmd.arg("-r");
    }
    run(cmd.arg(nb::vnd_node(unit)).arg(file))
}

fn vnunconfig(unit: u32) -> Result<()> {
    run(Command::new(VNCONFIG).arg("-u").arg(nb::vnd_node(unit)))
}
