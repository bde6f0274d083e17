//! NetBSD's encodings, without a single system call: the `dev_t` of `makedev(3)` and the
//! decimal spelling of `physical-device` xbdback reads, disklabel partitions, which
//! `vnd(4)` units are free, and the kernel ABI of `VNDIOCGET`. Compiled on every OS so
//! that Linux runs their tests; `platform::netbsd` uses them.

use std::collections::BTreeSet;

use crate::devnum::DevNum;

/// The raw partition (`d`) and partitions per disk of the x86 ports, the only NetBSD ports
/// with a Xen dom0 (`sys/arch/{amd64,i386}/include/disklabel.h`: `RAW_PART 3`,
/// `MAXPARTITIONS 16`).
pub const RAW_PART: u64 = 3;
pub const MAXPARTITIONS: u64 = 16;

/// NetBSD's `makedev(3)` (`sys/sys/types.h`), bit for bit:
/// `((x << 8) & 0x000fff00) | ((y << 12) & 0xfff00000) | (y & 0x000000ff)`.
/// Majors have 12 bits and minors 20: the low 8 bits of the minor stay at the bottom, its
/// next 12 go to the top. (The `libc` crate's version masks the major with `0x000ff00`,
/// keeping only its low 8 bits; we do not use it.)
pub const fn makedev(major: u64, minor: u64) -> u64 {
    ((major << 8) & 0x000f_ff00) | ((minor << 12) & 0xfff0_0000) | (minor & 0x0000_00ff)
}

/// NetBSD's `major(3)`.
pub const fn major(dev: u64) -> u64 {
    (dev & 0x000f_ff00) >> 8
}

/// NetBSD's `minor(3)`.
pub const fn minor(dev: u64) -> u64 {
    ((dev & 0xfff0_0000) >> 12) | (dev & 0x0000_00ff)
}

/// A kernel `dev_t` (as `stat` reports it) split into major and minor. `None` for values
/// `makedev` cannot produce (bits above 32), so a split always re-encodes to the same value.
pub fn split_dev(dev: u64) -> Option<DevNum> {
    (dev <= u64::from(u32::MAX)).then(|| DevNum::new(major(dev), minor(dev)))
}

/// The `physical-device` value NetBSD's xbdback reads (`xenbus_read_ul(..., 10)`): the
/// decimal `dev_t`, what upstream writes with `stat -f %r`.
pub fn format_physical_device(dev: DevNum) -> String {
    makedev(dev.major, dev.minor).to_string()
}

/// Parses a `physical-device` value as xbdback would accept it: decimal digits only (no
/// sign, no blanks, no `0x`), a `dev_t` that `makedev` can produce.
pub fn parse_physical_device(value: &str) -> Option<DevNum> {
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    split_dev(value.parse().ok()?)
}

/// Every partition device of the disk whose raw partition is `raw` (e.g. `vnd0a`..`vnd0p`
/// for `vnd0d`): a guest or a mount using any of them uses the disk.
pub fn disk_partitions(raw: DevNum) -> Vec<DevNum> {
    let base = raw.minor - raw.minor % MAXPARTITIONS;
    (0..MAXPARTITIONS)
        .map(|p| DevNum::new(raw.major, base + p))
        .collect()
}

/// The partitions of the same disk that overlap `dev`, a disklabel partition: by
/// convention `c` (the NetBSD part of the disk) and `d` (the whole disk, `RAW_PART`) overlap
/// every partition, while the others only overlap themselves and `c`/`d`. Wedges (`dk`) on
/// the disk are not seen.
pub fn overlapping_partitions(dev: DevNum) -> Vec<DevNum> {
    let part = dev.minor % MAXPARTITIONS;
    if part == 2 || part == RAW_PART {
        return disk_partitions(dev);
    }
    let base = dev.minor - part;
    vec![
        dev,
        DevNum::new(dev.major, base + 2),
        DevNum::new(dev.major, base + RAW_PART),
    ]
}

/// Whether the block node `path` (after symlinks) names a disklabel partition of a disk the
/// kernel lists in `hw.disknames`: `/dev/wd1e` with `wd1` listed. Wedges (`dk0`), and
/// anything else without a partition letter, are not.
pub fn is_disk_partition(path: &str, disknames: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let Some(letter) = name.chars().last() else {
        return false;
    };
    let disk = &name[..name.len() - letter.len_utf8()];
    ('a'..='p').contains(&letter)
        && disk.ends_with(|c: char| c.is_ascii_digit())
        && disknames.split_whitespace().any(|d| d == disk)
}

/// The name of another partition of the disk of `path` (`/dev/wd1e`, `wd1d`): `wd1d`.
pub fn sibling_partition(path: &str, dev: DevNum) -> String {
    let name = path.rsplit('/').next().unwrap_or(path);
    let mut chars = name.chars();
    chars.next_back();
    let letter = (b'a' + (dev.minor % MAXPARTITIONS) as u8) as char;
    format!("{}{letter}", chars.as_str())
}

/// A unit number as NetBSD spells it in device names: decimal, no leading zero.
fn parse_unit(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

/// The `vnd` units the kernel has attached, from `hw.disknames` (`sysctl -n hw.disknames`
/// prints `wd0 cd0 vnd0 dk0`; without `-n` the line starts with `hw.disknames = `). An
/// attached unit is configured or open; an unconfigured unit detaches on last close.
pub fn vnd_units_in_use(disknames: &str) -> BTreeSet<u32> {
    disknames
        .split_whitespace()
        .filter_map(|d| parse_unit(d.strip_prefix("vnd")?))
        .collect()
}

/// The `vnd` units that have a block node in `/dev` (`vnd<N>d`), from the names of the
/// directory's entries, as upstream's `ls /dev/vnd[0-9]*d`.
pub fn vnd_units_with_nodes<'a>(dev_entries: impl IntoIterator<Item = &'a str>) -> BTreeSet<u32> {
    dev_entries
        .into_iter()
        .filter_map(|n| parse_unit(n.strip_prefix("vnd")?.strip_suffix('d')?))
        .collect()
}

/// The units to try, in order: those with nodes that the kernel does not list, lowest
/// first (upstream's order).
pub fn free_vnd_units(with_nodes: &BTreeSet<u32>, in_use: &BTreeSet<u32>) -> Vec<u32> {
    with_nodes.difference(in_use).copied().collect()
}

/// The block node of a unit's raw partition, as upstream names it in `vnd`.
pub fn vnd_node(unit: u32) -> String {
    format!("/dev/vnd{unit}d")
}

/// The character node of a unit's raw partition, for ioctls.
pub fn vnd_raw_node(unit: u32) -> String {
    format!("/dev/rvnd{unit}d")
}

/// The unit of a `vnd` node value: `/dev/vnd3d`, as upstream and we write it, or `vnd3`,
/// as NetBSD's pkgsrc writes it (`sysutils/xentools420`,
/// `patches/patch-tools_hotplug_NetBSD_block`: `vnconfig` is given the unit name).
pub fn parse_vnd_node(value: &str) -> Option<u32> {
    match value.strip_prefix("/dev/vnd") {
        Some(rest) => parse_unit(rest.strip_suffix('d')?),
        None => parse_unit(value.strip_prefix("vnd")?),
    }
}

/// `struct vnd_user` of `sys/dev/vndvar.h` (`int vnu_unit; dev_t vnu_dev; ino_t
/// vnu_ino;`, `dev_t` and `ino_t` 64-bit since NetBSD 6): which file backs a unit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VndUser {
    pub vnu_unit: i32,
    pub vnu_dev: u64,
    pub vnu_ino: u64,
}

/// NetBSD's `_IOWR(group, num, size)` (`sys/sys/ioccom.h`): `IOC_INOUT` (`0xc0000000`),
/// the size in bits 16..29 (`IOCPARM_MASK 0x1fff`), the group in bits 8..15.
pub const fn iowr(group: u8, num: u8, size: usize) -> u64 {
    0xc000_0000 | (((size as u64) & 0x1fff) << 16) | ((group as u64) << 8) | num as u64
}

/// `VNDIOCGET`, `_IOWR('F', 3, struct vnd_user)`.
pub const VNDIOCGET: u64 = iowr(b'F', 3, std::mem::size_of::<VndUser>());

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u32]) -> BTreeSet<u32> {
        v.iter().copied().collect()
    }

    #[test]
    fn makedev_matches_netbsd_makedev_nodes() {
        // Values of amd64 MAKEDEV (makedisk_p16; majors.amd64: wd block 0, vnd block 14,
        // xbd block 142), as `stat -f %r` prints them.
        assert_eq!(format_physical_device(DevNum::new(0, 3)), "3"); // wd0d
        assert_eq!(format_physical_device(DevNum::new(0, 19)), "19"); // wd1d
        assert_eq!(format_physical_device(DevNum::new(14, 3)), "3587"); // vnd0d
        assert_eq!(format_physical_device(DevNum::new(14, 19)), "3603"); // vnd1d
        assert_eq!(format_physical_device(DevNum::new(142, 3)), "36355"); // xbd0d
        // Minors over 255 (unit 16 and up) move their high bits above the major.
        assert_eq!(makedev(0, 256), 0x0010_0000); // wd16a
        assert_eq!(makedev(14, 16 * 16 + 3), 0x0010_0e03); // vnd16d
        assert_eq!(makedev(0xfff, 0xfffff), 0xffff_ffff);
        // Majors over 255 keep their high bits (the libc crate's makedev drops them).
        assert_eq!(makedev(0x800, 0), 0x0008_0000);
        // makedev masks like the C macro.
        assert_eq!(makedev(0x1000, 0), 0);
    }

    #[test]
    fn split_inverts_makedev() {
        for (ma, mi) in [(0, 0), (14, 3), (142, 19), (0xfff, 0xfffff), (0x800, 0x100)] {
            let dev = makedev(ma, mi);
            assert_eq!((major(dev), minor(dev)), (ma, mi));
            assert_eq!(split_dev(dev), Some(DevNum::new(ma, mi)));
        }
        assert_eq!(split_dev(1 << 32), None);
    }

    #[test]
    fn physical_device_parse() {
        assert_eq!(parse_physical_device("3587"), Some(DevNum::new(14, 3)));
        assert_eq!(parse_physical_device("0"), Some(DevNum::new(0, 0)));
        assert_eq!(parse_physical_device("1048576"), Some(DevNum::new(0, 256)));
        assert_eq!(
            parse_physical_device("4294967295"),
            Some(DevNum::new(0xfff, 0xfffff))
        );
        for bad in [
            "",
            "e:3",
            "0xe03",
            "-3",
            "+3",
            " 3",
            "3 ",
            "3\n",
            "4294967296",
            "99999999999",
        ] {
            assert_eq!(parse_physical_device(bad), None, "{bad:?}");
        }
        for v in ["3", "19", "3587", "36355", "1048576"] {
            assert_eq!(
                parse_physical_device(v)
                    .map(format_physical_device)
                    .as_deref(),
                Some(v)
            );
        }
    }

    #[test]
    fn partitions_of_a_disk() {
        let p = disk_partitions(DevNum::new(14, 19)); // vnd1d
        assert_eq!(p.len(), 16);
        assert_eq!(p[0], DevNum::new(14, 16)); // vnd1a
        assert_eq!(p[3], DevNum::new(14, 19));
        assert_eq!(p[15], DevNum::new(14, 31)); // vnd1p
    }

    #[test]
    fn overlaps_within_a_disklabel() {
        let wd1 = |p: u64| DevNum::new(0, 16 + p);
        assert_eq!(overlapping_partitions(wd1(4)), vec![wd1(4), wd1(2), wd1(3)]); // e
        assert_eq!(overlapping_partitions(wd1(0)), vec![wd1(0), wd1(2), wd1(3)]); // a
        assert_eq!(overlapping_partitions(wd1(3)).len(), 16); // d: the whole disk
        assert_eq!(overlapping_partitions(wd1(2)).len(), 16); // c
        assert!(
            !overlapping_partitions(wd1(4)).contains(&wd1(5)),
            "e and f are apart"
        );
    }

    #[test]
    fn partition_names() {
        let names = "wd0 wd1 cd0 dk0 vnd0 xbd12";
        assert!(is_disk_partition("/dev/wd1e", names));
        assert!(is_disk_partition("/dev/xbd12d", names));
        assert!(is_disk_partition("/dev/vnd0a", names));
        assert!(!is_disk_partition("/dev/dk0", names));
        assert!(!is_disk_partition("/dev/wd2e", names));
        assert!(!is_disk_partition("/dev/wd1q", names));
        assert!(!is_disk_partition("/dev/wd1", names));
        assert!(!is_disk_partition("/dev/rwd1e", names));
        assert!(!is_disk_partition("", names));
        assert!(!is_disk_partition("/dev/wd1é", names));
        assert_eq!(sibling_partition("/dev/wd1e", DevNum::new(0, 19)), "wd1d");
        assert_eq!(
            sibling_partition("/dev/xbd0a", DevNum::new(142, 2)),
            "xbd0c"
        );
    }

    #[test]
    fn disknames_captures() {
        assert_eq!(vnd_units_in_use("wd0 cd0 vnd0 dk0"), set(&[0]));
        assert_eq!(vnd_units_in_use(""), set(&[]));
        assert_eq!(vnd_units_in_use("\n"), set(&[]));
        assert_eq!(vnd_units_in_use("ld0 vnd1 vnd3\n"), set(&[1, 3]));
        assert_eq!(
            vnd_units_in_use("hw.disknames = wd0 vnd0 vnd12 xbd0 cgd0"),
            set(&[0, 12])
        );
        // Names that merely start with vnd are not vnd units.
        assert_eq!(
            vnd_units_in_use("vnd vndx vnd01 vnd1a rvnd2 xvnd3 dk4"),
            set(&[])
        );
    }

    #[test]
    fn free_unit_selection() {
        let nodes = vnd_units_with_nodes([
            "vnd0a", "vnd0d", "rvnd0d", "vnd1d", "vnd2d", "vnd3d", "vnd10d", "vndd", "vnd", "wd0d",
            "vnd4", "console",
        ]);
        assert_eq!(nodes, set(&[0, 1, 2, 3, 10]));
        let pick = |disknames: &str| free_vnd_units(&nodes, &vnd_units_in_use(disknames));
        assert_eq!(pick("wd0 cd0 vnd0 dk0"), vec![1, 2, 3, 10]);
        assert_eq!(pick(""), vec![0, 1, 2, 3, 10]);
        assert_eq!(pick("ld0 vnd1 vnd3"), vec![0, 2, 10]);
        assert_eq!(pick("vnd0 vnd1 vnd2 vnd3 vnd10"), Vec::<u32>::new());
        // A unit the kernel lists but without nodes is irrelevant.
        assert_eq!(pick("vnd7"), vec![0, 1, 2, 3, 10]);
        assert_eq!(free_vnd_units(&set(&[]), &set(&[])), Vec::<u32>::new());
    }

    #[test]
    fn vnd_nodes() {
        assert_eq!(vnd_node(3), "/dev/vnd3d");
        assert_eq!(vnd_raw_node(3), "/dev/rvnd3d");
        assert_eq!(parse_vnd_node("/dev/vnd3d"), Some(3));
        assert_eq!(parse_vnd_node(&vnd_node(12)), Some(12));
        // pkgsrc's spelling.
        assert_eq!(parse_vnd_node("vnd3"), Some(3));
        assert_eq!(parse_vnd_node("vnd12"), Some(12));
        for bad in [
            "vnd3d",
            "/dev/vnd3",
            "/dev/rvnd3d",
            "/dev/vnd3a",
            "/dev/vndd",
            "/dev/vnd03d",
            "vnd",
            "vnd03",
            "vnd3a",
            "rvnd3",
            "dev/vnd3d",
            " vnd3",
            "vnd-1",
        ] {
            assert_eq!(parse_vnd_node(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn vndiocget_request() {
        assert_eq!(std::mem::size_of::<VndUser>(), 24);
        // IOC_INOUT | 24 << 16 | 'F' << 8 | 3.
        assert_eq!(VNDIOCGET, 0xc018_4603);
        // Sizes are cut to IOCPARM_MASK like the C macro.
        assert_eq!(iowr(b'F', 3, 0x2000 + 24), 0xc018_4603);
    }
}
