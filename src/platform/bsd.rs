//! What the NetBSD and FreeBSD seams share.

use std::io;

use anyhow::{Context, Result};
use nix::libc::{c_char, c_int};

use crate::devnum::DevNum;
use crate::mountinfo::Mount;

/// A fixed-size C string field (`f_mntfromname`, ...) as text.
pub fn c_string(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A mount from `getvfsstat`/`getfsstat`'s names, kept only when its source is a block
/// device now (the sharing check compares device numbers).
pub fn device_mount(
    stat: fn(&str) -> Option<DevNum>,
    from: &[c_char],
    on: &[c_char],
    read_only: bool,
) -> Option<Mount> {
    let source = c_string(from);
    let dev = stat(&source)?;
    Some(Mount {
        dev,
        mount_point: c_string(on),
        source,
        read_only,
    })
}

/// The mount table from `getfsstat(2)` (FreeBSD) or `getvfsstat(2)` (NetBSD), asked with
/// `MNT_NOWAIT` so that a stale network file system cannot block us. `call(buf, bytes)` is
/// the system call: with a null `buf` it returns the number of mounts, else it fills at
/// most `bytes` bytes of `T`s and returns how many; -1 on error (`name` says which call
/// failed). A full buffer may mean more mounts appeared meanwhile: ask again.
///
/// # Safety
/// `T` must be the C struct the call fills (plain integers and byte arrays: all zeroes is
/// a valid value), and `call` must write no more than `bytes` bytes at `buf`.
pub unsafe fn mount_table<T>(name: &str, call: impl Fn(*mut T, usize) -> c_int) -> Result<Vec<T>> {
    let failed = || format!("{name} failed: cannot list mounts for the sharing check");
    let mut cap = 0usize;
    loop {
        let n = call(std::ptr::null_mut(), 0);
        let n = usize::try_from(n)
            .map_err(|_| io::Error::last_os_error())
            .with_context(failed)?;
        cap = cap.max(n) + 16;
        // SAFETY: the caller promises that all zeroes is a valid `T`.
        let mut buf: Vec<T> = (0..cap).map(|_| unsafe { std::mem::zeroed() }).collect();
        let got = call(buf.as_mut_ptr(), cap * std::mem::size_of::<T>());
        let got = usize::try_from(got)
            .map_err(|_| io::Error::last_os_error())
            .with_context(failed)?;
        if got < cap {
            buf.truncate(got);
            return Ok(buf);
        }
    }
}
