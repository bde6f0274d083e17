//! Loop devices through the kernel's ioctls, never through `losetup` text.
//!
//! * Attach: `LOOP_CTL_GET_FREE` then `LOOP_CONFIGURE` on that device, retried when another
//!   process configures it between the two calls (EBUSY); kernels before 5.8 lack
//!   `LOOP_CONFIGURE`, and get `LOOP_SET_FD` + `LOOP_SET_STATUS64` instead.
//! * Find: every bound loop whose backing file is a given (st_dev, st_ino), from
//!   `LOOP_GET_STATUS64`.
//! * Detach: `LOOP_CLR_FD` only after checking the device is still the one we attached
//!   (device number, backing inode, diskseq).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;

use crate::devnum::DevNum;

use super::blkdev::{diskseq, split_dev};

const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;
pub const LO_FLAGS_READ_ONLY: u32 = 1;

/// `struct loop_info64` (linux/loop.h).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LoopInfo64 {
    pub lo_device: u64,
    pub lo_inode: u64,
    pub lo_rdevice: u64,
    pub lo_offset: u64,
    pub lo_sizelimit: u64,
    pub lo_number: u32,
    pub lo_encrypt_type: u32,
    pub lo_encrypt_key_size: u32,
    pub lo_flags: u32,
    pub lo_file_name: [u8; LO_NAME_SIZE],
    pub lo_crypt_name: [u8; LO_NAME_SIZE],
    pub lo_encrypt_key: [u8; LO_KEY_SIZE],
    pub lo_init: [u64; 2],
}

/// `struct loop_config` (linux/loop.h, 5.8+).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LoopConfig {
    pub fd: u32,
    pub block_size: u32,
    pub info: LoopInfo64,
    pub reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::offset_of!(LoopInfo64, lo_flags) == 52);
const _: () = assert!(std::mem::offset_of!(LoopInfo64, lo_file_name) == 56);
const _: () = assert!(std::mem::offset_of!(LoopInfo64, lo_init) == 216);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);
const _: () = assert!(std::mem::offset_of!(LoopConfig, info) == 8);

impl LoopInfo64 {
    fn zeroed() -> Self {
        // SAFETY: LoopInfo64 is plain integers and byte arrays; all-zero is valid.
        unsafe { std::mem::zeroed() }
    }
}

mod ioctl {
    use super::{LoopConfig, LoopInfo64};
    nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
    nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);
    nix::ioctl_write_int_bad!(loop_set_fd, 0x4C00);
    nix::ioctl_none_bad!(loop_clr_fd, 0x4C01);
    nix::ioctl_write_ptr_bad!(loop_set_status64, 0x4C04, LoopInfo64);
    nix::ioctl_read_bad!(loop_get_status64, 0x4C05, LoopInfo64);
}

/// The identity of an attached loop device, enough to recognise it later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub path: String,
    pub rdev: DevNum,
    pub diskseq: Option<u64>,
}

/// The backing file of a loop device as (st_dev, st_ino); `None` if the loop is unbound.
pub fn backing_of(loopdev: &File) -> Result<Option<(DevNum, u64)>> {
    let mut info = LoopInfo64::zeroed();
    // SAFETY: the ioctl fills a LoopInfo64 we own; the fd is a valid open file.
    match unsafe { ioctl::loop_get_status64(loopdev.as_raw_fd(), &mut info) } {
        Ok(_) => Ok(Some((split_dev(info.lo_device), info.lo_inode))),
        Err(Errno::ENXIO) => Ok(None),
        Err(e) => Err(anyhow!(e).context("LOOP_GET_STATUS64 failed")),
    }
}

pub fn flags_of(loopdev: &File) -> Result<u32> {
    let mut info = LoopInfo64::zeroed();
    // SAFETY: as in backing_of.
    unsafe { ioctl::loop_get_status64(loopdev.as_raw_fd(), &mut info) }
        .context("LOOP_GET_STATUS64 failed")?;
    Ok(info.lo_flags)
}

/// Every bound loop device whose backing file is (`dev`, `ino`), as device numbers.
pub fn loops_backed_by(dev: DevNum, ino: u64) -> Result<Vec<(String, DevNum)>> {
    let mut found = Vec::new();
    let entries = fs::read_dir("/sys/block").context("cannot list /sys/block")?;
    for entry in entries {
        let entry = entry.context("cannot list /sys/block")?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("loop") || !name[4..].bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // Unbound loops have no `loop` attribute directory: skip them without opening.
        if !entry.path().join("loop").exists() {
            continue;
        }
        let path = format!("/dev/{name}");
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => f,
            // Detached and removed while we looked.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            // Being detached (the kernel's `Lo_rundown`: LOOP_CLR_FD by its only opener,
            // completed asynchronously; drivers/block/loop.c `lo_open`): it refuses every
            // open, so nobody can use it any more.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot open {path}")),
        };
        let rdev = split_dev(file.metadata()?.rdev());
        if let Some((bdev, bino)) = backing_of(&file).with_context(|| path.clone())?
            && bdev == dev
            && bino == ino
        {
            found.push((path, rdev));
        }
    }
    Ok(found)
}

/// Attaches `backing` to a free loop device. `read_only` sets the loop's read-only flag.
/// `before_configure` is called with the chosen device before it is bound, so the caller
/// can record it first (a kill between the two then leaves a record, never an orphan).
pub fn attach(
    backing: &File,
    name: &str,
    read_only: bool,
    before_configure: impl FnMut(&str, DevNum) -> Result<()>,
) -> Result<(Attached, File)> {
    attach_using(
        Method::Configure,
        backing,
        name,
        read_only,
        before_configure,
    )
}

/// How a loop device is bound to its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `LOOP_CONFIGURE` (Linux 5.8+), falling back to `Legacy` where the kernel lacks it.
    Configure,
    /// `LOOP_SET_FD` + `LOOP_SET_STATUS64`.
    Legacy,
}

/// `attach` with the binding method chosen (tests force `Legacy` on modern kernels).
pub fn attach_using(
    method: Method,
    backing: &File,
    name: &str,
    read_only: bool,
    mut before_configure: impl FnMut(&str, DevNum) -> Result<()>,
) -> Result<(Attached, File)> {
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .context("cannot open /dev/loop-control")?;
    let mut last_err = None;
    for _ in 0..20 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { ioctl::loop_ctl_get_free(ctl.as_raw_fd()) }
            .context("LOOP_CTL_GET_FREE failed: no free loop device")?;
        let path = format!("/dev/loop{n}");
        let dev = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            // devtmpfs may not show a freshly added node yet: try again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                last_err = Some(anyhow!("{path} does not exist"));
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot open {path}")),
        };
        let meta = dev.metadata()?;
        if !meta.file_type().is_block_device() {
            bail!("{path} is not a block device");
        }
        let rdev = split_dev(meta.rdev());
        before_configure(&path, rdev)?;
        let bound = match method {
            Method::Configure => configure(&dev, backing, name, read_only),
            Method::Legacy => configure_legacy(&dev, backing, name, read_only),
        };
        match bound {
            Ok(()) => {
                let attached = Attached {
                    path,
                    rdev,
                    diskseq: diskseq(&dev),
                };
                return Ok((attached, dev));
            }
            // Someone else bound it between GET_FREE and CONFIGURE: take another.
            Err(Errno::EBUSY) => {
                last_err = Some(anyhow!("{path} was taken by another process"));
                continue;
            }
            Err(e) => return Err(anyhow!(e).context(format!("cannot bind {path} to {name}"))),
        }
    }
    Err(last_err
        .unwrap_or_else(|| anyhow!("no attempt made"))
        .context("could not get a free loop device after 20 attempts"))
}

fn info_for(name: &str, read_only: bool) -> LoopInfo64 {
    let mut info = LoopInfo64::zeroed();
    // At most LO_NAME_SIZE - 1 bytes, so the kernel's copy stays NUL-terminated.
    for (dst, src) in info
        .lo_file_name
        .iter_mut()
        .zip(name.bytes().take(LO_NAME_SIZE - 1))
    {
        *dst = src;
    }
    if read_only {
        info.lo_flags |= LO_FLAGS_READ_ONLY;
    }
    info
}

fn configure(dev: &File, backing: &File, name: &str, read_only: bool) -> Result<(), Errno> {
    let cfg = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size: 0,
        info: info_for(name, read_only),
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads a LoopConfig we own; both fds are open.
    match unsafe { ioctl::loop_configure(dev.as_raw_fd(), &cfg) } {
        Ok(_) => Ok(()),
        // Kernels before 5.8 do not know LOOP_CONFIGURE.
        Err(Errno::EINVAL | Errno::ENOTTY) => configure_legacy(dev, backing, name, read_only),
        Err(e) => Err(e),
    }
}

/// `LOOP_SET_FD` + `LOOP_SET_STATUS64`, for kernels without `LOOP_CONFIGURE`. The read-only
/// flag follows the backing fd's open mode here.
pub fn configure_legacy(
    dev: &File,
    backing: &File,
    name: &str,
    read_only: bool,
) -> Result<(), Errno> {
    // SAFETY: LOOP_SET_FD takes the backing fd as its integer argument.
    unsafe { ioctl::loop_set_fd(dev.as_raw_fd(), backing.as_raw_fd()) }?;
    let info = info_for(name, read_only);
    // SAFETY: LOOP_SET_STATUS64 reads a LoopInfo64 we own.
    if let Err(e) = unsafe { ioctl::loop_set_status64(dev.as_raw_fd(), &info) } {
        // SAFETY: undo the bind we just made on our own fd.
        let _ = unsafe { ioctl::loop_clr_fd(dev.as_raw_fd()) };
        return Err(e);
    }
    Ok(())
}

/// What `detach_if_ours` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detach {
    Detached,
    /// The loop was already unbound (or its node is gone): nothing to do.
    AlreadyFree,
    /// The loop is bound to something else now: left alone.
    Reused(String),
}

/// Detaches `expected` only if it is still the device we attached to (`dev`, `ino`).
pub fn detach_if_ours(expected: &Attached, backing: (DevNum, u64)) -> Result<Detach> {
    let file = match open_if_ours(expected, backing)? {
        Ok(f) => f,
        Err(found) => return Ok(found),
    };
    // SAFETY: LOOP_CLR_FD takes no argument. On a device still open elsewhere (blkback),
    // the kernel defers the detach until the last close (autoclear).
    match unsafe { ioctl::loop_clr_fd(file.as_raw_fd()) } {
        Ok(_) => Ok(Detach::Detached),
        Err(Errno::ENXIO) => Ok(Detach::AlreadyFree),
        Err(e) => Err(anyhow!(e).context(format!("cannot detach {}", expected.path))),
    }
}

/// What `detach_if_ours` would find, without detaching: `Detached` means the loop is still
/// ours (it would be detached).
pub fn identify(expected: &Attached, backing: (DevNum, u64)) -> Result<Detach> {
    Ok(match open_if_ours(expected, backing)? {
        Ok(_) => Detach::Detached,
        Err(found) => found,
    })
}

/// The identity checks of `detach_if_ours`: the loop opened when it is still the one we
/// attached, else why not.
fn open_if_ours(expected: &Attached, backing: (DevNum, u64)) -> Result<Result<File, Detach>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(&expected.path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Err(Detach::AlreadyFree)),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", expected.path)),
    };
    let meta = file.metadata()?;
    let rdev = split_dev(meta.rdev());
    if !meta.file_type().is_block_device() || rdev != expected.rdev {
        return Ok(Err(Detach::Reused(format!(
            "{} is now device {rdev}, not {}",
            expected.path, expected.rdev
        ))));
    }
    let Some(now) = backing_of(&file)? else {
        return Ok(Err(Detach::AlreadyFree));
    };
    if now != backing {
        return Ok(Err(Detach::Reused(format!(
            "{} is now backed by inode {} on {}, not inode {} on {}",
            expected.path, now.1, now.0, backing.1, backing.0
        ))));
    }
    if let (Some(want), Some(have)) = (expected.diskseq, diskseq(&file))
        && want != have
    {
        return Ok(Err(Detach::Reused(format!(
            "{} has disk sequence {have:x}, not {want:x}: it was re-attached since",
            expected.path
        ))));
    }
    Ok(Ok(file))
}

/// Unconditionally detaches a loop device we hold open (undoing our own attach).
pub fn detach_fd(dev: &File) -> Result<()> {
    // SAFETY: LOOP_CLR_FD takes no argument.
    match unsafe { ioctl::loop_clr_fd(dev.as_raw_fd()) } {
        Ok(_) | Err(Errno::ENXIO) => Ok(()),
        Err(e) => Err(anyhow!(e).context("LOOP_CLR_FD failed")),
    }
}
