//! What the NetBSD and FreeBSD seams share.

use nix::libc::c_char;

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
