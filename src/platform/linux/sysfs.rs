//! The devices related to one, from sysfs: a conflict on any of them is a conflict on the
//! device (partitions, the whole disk, device-mapper and md holders).

use crate::devnum::DevNum;

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
pub(crate) fn related_devices_in(sys: &std::path::Path, dev: DevNum) -> Vec<DevNum> {
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
