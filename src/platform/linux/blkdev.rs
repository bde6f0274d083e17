//! Generic block-device calls (not loop-specific): the disk sequence number, the block
//! layer's read-only flag, and the split of a `dev_t`. Used for phy targets, loop devices
//! and the storage helpers' iSCSI/NBD/DRBD devices alike.

use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::{Context, Result};

use crate::devnum::DevNum;

mod ioctl {
    // linux/fs.h: BLKGETDISKSEQ _IOR(0x12, 128, __u64); BLKROGET _IO(0x12, 94).
    nix::ioctl_read!(blk_get_diskseq, 0x12, 128, u64);
    nix::ioctl_read_bad!(blk_ro_get, 0x125E, nix::libc::c_int);
}

/// Splits a `dev_t` as glibc does (`gnu_dev_major`/`gnu_dev_minor`).
pub fn split_dev(dev: u64) -> DevNum {
    DevNum::new(nix::sys::stat::major(dev), nix::sys::stat::minor(dev))
}

/// The block layer's read-only flag of a block device (`BLKROGET`).
pub fn read_only(dev: &File) -> Result<bool> {
    let mut ro: nix::libc::c_int = 0;
    // SAFETY: `dev` is an open block device and BLKROGET writes exactly one int, into
    // `ro`, which lives for the call.
    unsafe { ioctl::blk_ro_get(dev.as_raw_fd(), &mut ro) }.context("BLKROGET failed")?;
    Ok(ro != 0)
}

/// The disk sequence number (`BLKGETDISKSEQ`, Linux 5.15+), `None` where unsupported.
pub fn diskseq(dev: &File) -> Option<u64> {
    let mut seq: u64 = 0;
    // SAFETY: `dev` is an open file and BLKGETDISKSEQ writes exactly one u64, into `seq`,
    // which lives for the call (other files answer ENOTTY).
    match unsafe { ioctl::blk_get_diskseq(dev.as_raw_fd(), &mut seq) } {
        Ok(_) => Some(seq),
        Err(_) => None,
    }
}
