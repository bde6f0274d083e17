//! Linux dom0 (interface doc §4.2): targets classified from an `O_PATH` fd, files attached
//! to loop devices, `physical-device` in blkback's `%x:%x`, mounts from
//! `/proc/self/mountinfo`, related devices from sysfs.

pub mod blkdev;
pub mod loopdev;
pub mod sysfs;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use anyhow::{Context, Result, anyhow, bail};

use crate::devnum::DevNum;
use crate::log;
use crate::mountinfo::{self, Mount};
use crate::record::{self, Record};

use super::{
    Attached, Attachment, Device, FileTarget, Identity, LeaseDisk, LegacyNodes, Opened, Platform,
    TakenLease, Target, expand, or_unusable,
};
use crate::lease;
use crate::mode::Mode;
use blkdev::split_dev;
use loopdev::Detach;

pub use sysfs::related_devices;

impl TakenLease for lease::Held {
    fn record(&self) -> record::Lease {
        self.record.clone()
    }

    fn keep(self: Box<Self>) {
        lease::Held::keep(*self);
    }
}

/// The Linux platform.
#[derive(Clone, Copy, Debug, Default)]
pub struct Linux;

/// The device number of a path that is a block device now.
pub fn stat_block_device(path: &str) -> Option<DevNum> {
    if !path.starts_with('/') {
        return None;
    }
    let meta = std::fs::metadata(path).ok()?;
    meta.file_type()
        .is_block_device()
        .then(|| split_dev(meta.rdev()))
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

/// `params` opened once, without side effects (`O_PATH`: no device open, no FIFO block,
/// no automount), with every later decision taken from this fd.
fn open_target(params: &str) -> Result<Target> {
    let path = expand(params);
    if path.contains('\0') {
        bail!("params {params:?} contains a NUL byte");
    }
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_PATH | nix::libc::O_NOCTTY)
        .open(&path);
    let fd = match or_unusable(opened, &path, "open")? {
        Ok(f) => f,
        Err(other) => return Ok(other),
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
        Target::Device(Device {
            path: real,
            ident: Identity::Dev(split_dev(meta.rdev())),
            file_mode: None,
            handle: Some(fd),
        })
    } else if ft.is_file() {
        Target::File(FileTarget {
            path: real,
            dev: meta.dev(),
            ino: meta.ino(),
            perm: meta.mode(),
            handle: Some(fd),
        })
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

fn detach(attached: &loopdev::Attached, backing: (DevNum, u64)) -> Result<()> {
    match loopdev::detach_if_ours(attached, backing)? {
        Detach::Detached => log::debug(&format!("detached {}", attached.path)),
        Detach::AlreadyFree => log::debug(&format!("{} was already detached", attached.path)),
        Detach::Reused(why) => log::err(&format!("not detaching: {why}")),
    }
    Ok(())
}

impl Platform for Linux {
    const ATTACHED_NODE: &'static str = "node";
    const ATTACHED_VERB: &'static str = "is loopback-mounted through";
    const RECORD_KIND: &'static str = "loop";

    fn classify(&self, params: &str) -> Result<Target> {
        open_target(params)
    }

    fn diskseq(&self, dev: &Device) -> Option<u64> {
        // Opened read-only and non-blocking only to ask for the disk sequence number.
        let f = reopen(dev.handle.as_ref()?, false).ok()?;
        blkdev::diskseq(&f)
    }

    fn related(&self, dev: &Device) -> Result<Vec<Identity>> {
        Ok(related_devices(dev.ident.dev())
            .into_iter()
            .map(Identity::Dev)
            .collect())
    }

    fn related_what(&self, dev: &Device, via: DevNum) -> String {
        // A partition, whole disk or stacked device of ours is the one in use.
        format!("Device {} (through the related device {via})", dev.path)
    }

    fn open_file(&self, file: &FileTarget, read_only: bool) -> io::Result<Opened> {
        let fd = file
            .handle
            .as_ref()
            .ok_or_else(|| io::Error::other("the file was classified without an fd"))?;
        let f = reopen(fd, !read_only)?;
        let m = f.metadata()?;
        Ok(Opened {
            file: Some(f),
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    fn attached_by(&self, file: &FileTarget) -> Result<Vec<Attachment>> {
        Ok(loopdev::loops_backed_by(split_dev(file.dev), file.ino)?
            .into_iter()
            .map(|(p, d)| Attachment {
                label: format!("{p} ({d})"),
                dev: d,
            })
            .collect())
    }

    fn related_to_attachment(&self, dev: DevNum) -> Vec<DevNum> {
        related_devices(dev)
    }

    fn attach(
        &self,
        file: &FileTarget,
        opened: Opened,
        read_only: bool,
        backend: &str,
        save: &dyn Fn(&Record) -> Result<()>,
    ) -> Result<Attached> {
        let backing = opened
            .file
            .ok_or_else(|| anyhow!("{} is not open", file.path))?;
        let mut rec = record::Loop {
            backend: Some(backend.to_string()),
            params: Some(file.path.clone()),
            backing: (split_dev(file.dev), file.ino),
            device: record::Device {
                path: String::new(),
                rdev: DevNum::new(0, 0),
                diskseq: None,
            },
            lease: None,
        };
        let (attached, loopfd) = loopdev::attach(&backing, &file.path, read_only, |node, rdev| {
            rec.device.path = node.to_string();
            rec.device.rdev = rdev;
            save(&Record::Loop(rec.clone()))
        })?;
        rec.device.diskseq = attached.diskseq;
        Ok(Attached {
            path: attached.path,
            rdev: attached.rdev,
            diskseq: attached.diskseq,
            handle: Some(loopfd),
            record: Record::Loop(rec),
        })
    }

    fn undo_attach(&self, attached: &Attached) -> Result<()> {
        match &attached.handle {
            Some(fd) => loopdev::detach_fd(fd),
            None => Err(anyhow!("{} is not held open", attached.path)),
        }
    }

    fn detach_recorded(&self, rec: &Record) -> Result<()> {
        let Record::Loop(l) = rec else {
            bail!("a remove record of kind {} is not a loop", rec.kind());
        };
        let attached = loopdev::Attached {
            path: l.device.path.clone(),
            rdev: l.device.rdev,
            diskseq: l.device.diskseq,
        };
        detach(&attached, l.backing)
    }

    /// A loop attached without a record (by upstream's script, or before an upgrade):
    /// detach `node` only if it is still backed by `params` and matches
    /// `physical-device`/`diskseq`.
    fn detach_legacy(&self, nodes: &LegacyNodes, file: Option<&FileTarget>) -> Result<()> {
        let Some(file) = file else {
            return Ok(());
        };
        let node = &nodes.node;
        let rdev = match nodes
            .physical_device
            .as_deref()
            .and_then(DevNum::parse_linux_hex)
        {
            Some(d) => d,
            None => match stat_block_device(node) {
                Some(d) => d,
                None => {
                    log::debug(&format!("{node} is not a block device: nothing to detach"));
                    return Ok(());
                }
            },
        };
        let diskseq = nodes
            .diskseq
            .as_deref()
            .and_then(|s| u64::from_str_radix(s, 16).ok());
        detach(
            &loopdev::Attached {
                path: node.clone(),
                rdev,
                diskseq,
            },
            (split_dev(file.dev), file.ino),
        )
    }

    fn format_physical_device(&self, dev: Identity) -> Option<String> {
        Some(format_physical_device(dev.dev()))
    }

    fn parse_physical_device(&self, value: &str) -> Option<DevNum> {
        parse_physical_device(value)
    }

    fn stat_identity(&self, path: &str) -> Option<Identity> {
        stat_block_device(path).map(Identity::Dev)
    }

    fn stat_params_path(&self, path: &str) -> Option<Identity> {
        if !path.starts_with('/') {
            return None;
        }
        let meta = std::fs::metadata(path).ok()?;
        let ft = meta.file_type();
        if ft.is_block_device() {
            Some(Identity::Dev(split_dev(meta.rdev())))
        } else if ft.is_file() {
            Some(Identity::File {
                fs: split_dev(meta.dev()),
                ino: meta.ino(),
            })
        } else {
            None
        }
    }

    fn file_identity(&self, file: &FileTarget) -> Option<Identity> {
        Some(Identity::File {
            fs: split_dev(file.dev),
            ino: file.ino,
        })
    }

    fn local_mounts(&self) -> Result<Vec<Mount>> {
        local_mounts()
    }

    /// sanlock leases (`lease`): a device by its stable `/dev/disk/by-id` name, a file by
    /// its canonical path.
    fn take_lease(
        &self,
        disk: LeaseDisk<'_>,
        mode: Mode,
        vm: &str,
        key: &str,
    ) -> Result<Option<Box<dyn TakenLease>>> {
        let id = match disk {
            LeaseDisk::Device(d) => lease::Identity::of_block(&d.path, d.ident.dev()),
            LeaseDisk::File(f) => lease::Identity::of_file(&f.path),
        };
        Ok(lease::for_add(key, &id, mode, vm)?.map(|h| Box::new(h) as Box<dyn TakenLease>))
    }

    fn release_lease(&self, l: &record::Lease) -> Result<()> {
        lease::release(l)
    }
}
