//! A disk's identity across the hosts of a pool, and the lease file named after it.
//!
//! Files: their canonical path (a pool mounts its shared storage at one path on every host,
//! as libvirt's lock managers assume). Block devices: a stable id from `/dev/disk/by-id`
//! (the WWN first, then a device-mapper/LVM UUID, then any other id udev made), else the
//! canonical path. The lease file is the lower-case hex SHA-256 of the identity string,
//! libvirt virtlockd's `file_lockspace_dir` naming (docs/kbase/locking-lockd.rst), so a
//! name says nothing about the disk and has a fixed length.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::devnum::DevNum;

/// What identifies one disk on every host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity(pub String);

impl Identity {
    /// A file's identity: its canonical path (the caller resolved it already, from the
    /// very inode it attaches).
    pub fn of_file(canonical: &str) -> Identity {
        Identity(canonical.to_string())
    }

    /// A block device's identity: its most stable `/dev/disk/by-id` name, else `path`.
    pub fn of_block(path: &str, rdev: DevNum) -> Identity {
        Identity(
            stable_id_in(Path::new("/dev/disk/by-id"), rdev).unwrap_or_else(|| path.to_string()),
        )
    }

    /// The lower-case hex SHA-256 of the identity: the lease file's name.
    pub fn hash(&self) -> String {
        let d = Sha256::digest(self.0.as_bytes());
        d.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// How stable an id prefix is: WWNs are world-wide, dm/LVM UUIDs are written in the
/// metadata; names (`dm-name-`) can be renamed, so they come last.
fn rank(name: &str) -> u8 {
    if name.starts_with("wwn-") {
        0
    } else if name.starts_with("dm-uuid-") || name.starts_with("lvm-pv-uuid-") {
        1
    } else if name.starts_with("dm-name-") {
        3
    } else {
        2
    }
}

/// The best `by-id` link (full path) to the block device `rdev` in `dir`; ties broken by
/// name so every host picks the same one.
pub fn stable_id_in(dir: &Path, rdev: DevNum) -> Option<String> {
    let mut best: Option<(u8, String)> = None;
    for e in fs::read_dir(dir).ok()?.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Ok(m) = fs::metadata(e.path()) else {
            continue;
        };
        if !m.file_type().is_block_device()
            || DevNum::new(
                nix::sys::stat::major(m.rdev()),
                nix::sys::stat::minor(m.rdev()),
            ) != rdev
        {
            continue;
        }
        // Partitions of one disk share its ids with a "-partN" suffix: that is fine, the
        // suffix keeps them apart.
        let cand = (rank(&name), name);
        if best.as_ref().is_none_or(|b| cand < *b) {
            best = Some(cand);
        }
    }
    best.map(|(_, n)| dir.join(n).to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_libvirts_sha256_hex() {
        // printf %s /var/lib/xen/images/a.img | sha256sum
        assert_eq!(
            Identity::of_file("/var/lib/xen/images/a.img").hash(),
            "36b52b8264939ad529052a8b09f93cbb6d974c7ee1a2ebb5fff4603ff508032c"
        );
        assert_eq!(Identity::of_file("").hash().len(), 64);
    }

    #[test]
    fn ranks_prefer_wwn() {
        let mut v = [
            "scsi-0QEMU_x",
            "dm-name-vg-lv",
            "wwn-0x5000",
            "dm-uuid-LVM-abc",
        ];
        v.sort_by_key(|n| (rank(n), n.to_string()));
        assert_eq!(
            v,
            [
                "wwn-0x5000",
                "dm-uuid-LVM-abc",
                "scsi-0QEMU_x",
                "dm-name-vg-lv"
            ]
        );
    }
}
