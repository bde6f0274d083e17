//! The NetBSD `block` script (interface doc §4.4), without a single system call: the
//! decimal `dev_t` spelling of `physical-device`, which `vnd(4)` units are free, and the
//! script's add and remove over the `NetBsd` trait. Compiled on every OS so that it is
//! unit-tested on Linux; `os::netbsd` implements the trait with the real system calls.
//!
//! Unlike upstream, add checks sharing (as on Linux), configures read-only units for
//! read-only disks, verifies that the unit really is backed by the file (`vnconfig` exits 0
//! when it cannot open it), and writes `physical-device-path`; remove unconfigures the unit
//! even when `params` is gone, and never one that another file has taken since.

use std::collections::BTreeSet;
use std::io;

use anyhow::{Context, Result, anyhow, bail};

use crate::backend::{Backend, busy};
use crate::devnum::DevNum;
use crate::invocation::Action;
use crate::lock::Lock;
use crate::log;
use crate::mode::Mode;
use crate::record::{self, Record};
use crate::request::{AddNodes, Frontend, read_only_file, refused_write, require_init_wait};
use crate::script::Script;
use crate::sharing::{self, Holder, Scan};

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

/// Upstream's relative-name rule (`expand_dev`): a name without `/` lives in `/dev`.
pub fn expand(params: &str) -> String {
    if params.starts_with('/') {
        params.to_string()
    } else {
        format!("/dev/{params}")
    }
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

/// The unit of a `vnd` node value (`/dev/vnd3d`, as upstream and we write it).
pub fn parse_vnd_node(value: &str) -> Option<u32> {
    parse_unit(value.strip_prefix("/dev/vnd")?.strip_suffix('d')?)
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

/// What `params` names (upstream: `[ -b ]` then `[ -f ]`), symlinks resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Block {
        path: String,
        rdev: DevNum,
    },
    File {
        path: String,
        dev: u64,
        ino: u64,
        perm: u32,
    },
    Other {
        what: String,
    },
}

/// The system calls and tools the NetBSD script needs, so that the script itself runs, and
/// is tested, anywhere. `os::netbsd` implements it for real.
pub trait NetBsd {
    /// What `params` names.
    fn classify(&self, params: &str) -> Result<Target>;
    /// Opens `path` as `vnconfig` will (read-write unless `read_only`) and says which
    /// file was opened, `(st_dev, st_ino)`.
    fn open_check(&self, path: &str, read_only: bool) -> io::Result<(u64, u64)>;
    /// `sysctl -n hw.disknames`.
    fn disknames(&self) -> Result<String>;
    /// The names in `/dev`.
    fn dev_entries(&self) -> Result<Vec<String>>;
    /// Whether the unit's raw node (`/dev/rvndNd`) exists, so it can be asked.
    fn has_raw_node(&self, unit: u32) -> bool;
    /// The file backing a unit, `(st_dev, st_ino)`; `None` when it is not configured.
    fn backing_of(&self, unit: u32) -> Result<Option<(u64, u64)>>;
    /// The device number of a block node.
    fn stat_block(&self, path: &str) -> Option<DevNum>;
    /// `vnconfig [-r] /dev/vndNd file`.
    fn vnconfig(&self, unit: u32, file: &str, read_only: bool) -> Result<()>;
    /// `vnconfig -u /dev/vndNd`.
    fn vnunconfig(&self, unit: u32) -> Result<()>;
    /// The `block` lock.
    fn lock(&self) -> Result<Lock>;
    /// The sharing check of `scan` on `cands` (`Scan::check`).
    fn sharing(&self, scan: &Scan, cands: &[DevNum]) -> Result<Option<Holder>>;
    /// The remove records (`record`).
    fn save(&self, key: &str, rec: &Record) -> Result<()>;
    fn load(&self, key: &str) -> Result<Option<Record>>;
    fn delete(&self, key: &str) -> Result<()>;
}

/// The NetBSD `block` script.
pub fn block(sys: &dyn NetBsd, action: Action, be: &Backend, script: &Script) -> Result<()> {
    match action {
        Action::Add => add(sys, be, script),
        Action::Remove => remove(sys, be),
    }
}

fn add(sys: &dyn NetBsd, be: &Backend, script: &Script) -> Result<()> {
    let Some(nodes) = AddNodes::read(be)? else {
        return Ok(());
    };
    let target = sys.classify(&nodes.params)?;
    if let Target::Other { what } = &target {
        return script.hand_over(&nodes.params, what, nodes.ty.as_deref());
    }
    let scan = Frontend::read(be, &nodes.mode)?.scan(be);
    match target {
        Target::Block { path, rdev } => add_phy(sys, be, &scan, &path, rdev),
        Target::File {
            path,
            dev,
            ino,
            perm,
        } => add_file(sys, be, &scan, &path, (dev, ino), perm),
        Target::Other { .. } => Ok(()),
    }
}

fn add_phy(sys: &dyn NetBsd, be: &Backend, scan: &Scan, path: &str, rdev: DevNum) -> Result<()> {
    let lock = sys.lock()?;
    if scan.mode != Mode::Force {
        // A partition overlaps the raw partition of its disk and the other way round.
        let cands = if is_disk_partition(path, &sys.disknames()?) {
            overlapping_partitions(rdev)
        } else {
            vec![rdev]
        };
        if let Some(h) = sys.sharing(scan, &cands)? {
            let what = if h.dev() == rdev {
                format!("Device {path}")
            } else {
                format!(
                    "Device {path} overlaps {},\nwhich",
                    sibling_partition(path, h.dev())
                )
            };
            return Err(busy(sharing::busy_message(&what, scan.mode, &h)));
        }
    }
    publish(be, path, rdev)?;
    log::debug(&format!(
        "block lock held for {} us",
        lock.held_for().as_micros()
    ));
    Ok(())
}

/// Upstream's `physical-device` (decimal, what xbdback acts on) and
/// `hotplug-status=connected`, after `physical-device-path`, which upstream lacks. Spelled
/// here rather than through `os::format_physical_device`, so the tests on other OSes see
/// NetBSD's spelling too.
fn publish(be: &Backend, path: &str, dev: DevNum) -> Result<()> {
    be.write("physical-device-path", path)?;
    be.write("physical-device", &format_physical_device(dev))?;
    be.report_success()
}

fn add_file(
    sys: &dyn NetBsd,
    be: &Backend,
    scan: &Scan,
    path: &str,
    backing: (u64, u64),
    perm: u32,
) -> Result<()> {
    let lock = sys.lock()?;
    require_init_wait(be)?;
    let read_only = scan.mode == Mode::Read;
    if !read_only && perm & 0o222 == 0 {
        return Err(read_only_file(path));
    }
    match sys.open_check(path, read_only) {
        Ok(opened) if opened == backing => {}
        Ok(_) => bail!("{path} was replaced while being attached"),
        Err(e) if !read_only && refused_write(&e) => {
            return Err(read_only_file(path).context(e.to_string()));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open {path}")),
    }

    let in_use = vnd_units_in_use(&sys.disknames()?);
    if scan.mode != Mode::Force {
        // Other units backed by the same file: any use of any of their partitions is a
        // use of the file.
        let mut vnds = Vec::new();
        for &u in &in_use {
            if !sys.has_raw_node(u) {
                log::debug(&format!("vnd{u} has no {}: skipped", vnd_raw_node(u)));
                continue;
            }
            if sys.backing_of(u)? == Some(backing) {
                let node = vnd_node(u);
                let rdev = sys.stat_block(&node).ok_or_else(|| {
                    anyhow!("vnd{u} is backed by {path}, but {node} is not a block device")
                })?;
                vnds.push((u, rdev));
            }
        }
        let cands: Vec<DevNum> = vnds.iter().flat_map(|(_, d)| disk_partitions(*d)).collect();
        if let Some(h) = sys.sharing(scan, &cands)? {
            let via = vnds
                .iter()
                .find(|(_, d)| disk_partitions(*d).contains(&h.dev()))
                .map(|(u, _)| format!("vnd{u}"))
                .unwrap_or_else(|| h.dev().to_string());
            let what = format!("File {path} is configured on {via},\nwhich");
            return Err(busy(sharing::busy_message(&what, scan.mode, &h)));
        }
    }

    let entries = sys.dev_entries()?;
    let free = free_vnd_units(
        &vnd_units_with_nodes(entries.iter().map(String::as_str)),
        &in_use,
    );
    let key = be.path.record_key();
    let mut rec = record::Vnd {
        backend: Some(be.path.path.clone()),
        params: Some(path.to_string()),
        backing,
        unit: 0,
        node: None,
    };
    let mut unit = None;
    let mut last_err: Option<anyhow::Error> = None;
    for u in free {
        // Recorded before vnconfig runs, so a kill at any point leaves a record that
        // finds the unit (remove checks the backing before unconfiguring).
        rec.unit = u;
        rec.node = Some(vnd_node(u));
        sys.save(&key, &Record::Vnd(rec.clone()))?;
        if let Err(e) = sys.vnconfig(u, path, read_only) {
            log::debug(&format!("vnd{u}: {e:#}"));
            last_err = Some(e);
            continue;
        }
        match sys.backing_of(u) {
            Ok(Some(b)) if b == backing => {
                unit = Some(u);
                break;
            }
            Ok(Some(_)) => {
                // Someone outside the lock took the unit between our look and vnconfig.
                last_err = Some(anyhow!("vnd{u} was configured for another file meanwhile"));
            }
            Ok(None) => {
                // vnconfig exits 0 when it cannot open the file.
                let _ = sys.delete(&key);
                bail!("vnconfig did not configure vnd{u} with {path} (see the hotplug log)");
            }
            Err(e) => return Err(e.context(format!("cannot check vnd{u} after vnconfig"))),
        }
    }
    let Some(unit) = unit else {
        let _ = sys.delete(&key);
        return Err(match last_err {
            Some(e) => e.context("no available vnd device"),
            None => anyhow!(
                "no available vnd device: every /dev/vnd*d unit is in use \
                 (create more with `cd /dev && sh MAKEDEV vndN`)"
            ),
        });
    };

    let undo = |e: anyhow::Error| -> anyhow::Error {
        if let Err(u) = sys.vnunconfig(unit) {
            log::err(&format!("could not undo vnconfig of vnd{unit}: {u:#}"));
            return e;
        }
        let _ = sys.delete(&key);
        e
    };
    let node = vnd_node(unit);
    let rdev = sys
        .stat_block(&node)
        .ok_or_else(|| anyhow!("{node} is not a block device"))
        .map_err(undo)?;
    be.write("vnd", &node).map_err(undo)?;
    publish(be, &node, rdev).map_err(undo)?;
    log::debug(&format!(
        "block lock held for {} us",
        lock.held_for().as_micros()
    ));
    Ok(())
}

/// Unconfigures `unit` if it is still backed by `backing` (when known).
fn unconfigure(sys: &dyn NetBsd, unit: u32, backing: Option<(u64, u64)>) -> Result<()> {
    match (sys.backing_of(unit)?, backing) {
        (None, _) => {
            log::debug(&format!("vnd{unit} is not configured: nothing to undo"));
            Ok(())
        }
        (Some(now), Some(ours)) if now != ours => {
            log::err(&format!(
                "not unconfiguring vnd{unit}: it is now backed by another file"
            ));
            Ok(())
        }
        _ => {
            sys.vnunconfig(unit)?;
            log::debug(&format!("unconfigured vnd{unit}"));
            Ok(())
        }
    }
}

fn remove(sys: &dyn NetBsd, be: &Backend) -> Result<()> {
    let key = be.path.record_key();
    let rec = match sys.load(&key)? {
        Some(Record::Vnd(rec)) => Some(rec),
        Some(other) => bail!(
            "the remove record of {} is of kind {:?}, not vnd",
            be.path.path,
            other.kind()
        ),
        None => None,
    };
    if let Some(rec) = rec {
        let _lock = sys.lock()?;
        unconfigure(sys, rec.unit, Some(rec.backing))?;
        sys.delete(&key)?;
    } else if let Some(vnd) = be.read("vnd")? {
        // Configured by upstream's script (or before an upgrade): trust the `vnd` node, but
        // check it against `params` while that is still there.
        match parse_vnd_node(&vnd) {
            Some(unit) => {
                let backing = match be.read("params")? {
                    Some(p) if !p.is_empty() => match sys.classify(&p)? {
                        Target::File { dev, ino, .. } => Some((dev, ino)),
                        _ => None,
                    },
                    _ => None,
                };
                let _lock = sys.lock()?;
                unconfigure(sys, unit, backing)?;
            }
            None => log::err(&format!(
                "{}: vnd node {vnd:?} is not a vnd device: not unconfiguring it",
                be.path.path
            )),
        }
    }
    // Upstream's NetBSD script removes the backend directory itself.
    log::debug(&format!("Removing {} from xenstore.", be.path.path));
    be.store.rm(&be.path.path)
}

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
        assert_eq!(expand("wd1e"), "/dev/wd1e");
        assert_eq!(expand("/dev/wd1e"), "/dev/wd1e");
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
        for bad in [
            "vnd3d",
            "/dev/vnd3",
            "/dev/rvnd3d",
            "/dev/vnd3a",
            "/dev/vndd",
            "/dev/vnd03d",
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

    // The script over a fake NetBSD: xenstore in a map, vnd units in a map.

    use crate::invocation::BackendPath;
    use crate::os::mem_store::MemStore;
    use crate::xs::Store;
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    const BE: &str = "/local/domain/0/backend/vbd/5/768";
    const IMG: &str = "/vm/a.img";
    const OURS: (u64, u64) = (0x71, 12);

    struct Fake {
        targets: BTreeMap<String, Target>,
        open_errno: Option<i32>,
        disknames: RefCell<String>,
        dev: Vec<String>,
        units: RefCell<BTreeMap<u32, (u64, u64)>>,
        busy_units: BTreeSet<u32>,
        vnconfig_noop: bool,
        unconfig_fails: bool,
        holder: Option<Holder>,
        cands: RefCell<Vec<Vec<DevNum>>>,
        /// Kept encoded, so the tests go through the real record codec.
        records: RefCell<BTreeMap<String, String>>,
        calls: RefCell<Vec<String>>,
        lock_dir: PathBuf,
    }

    impl Fake {
        fn new(tag: &str) -> Fake {
            let lock_dir =
                std::env::temp_dir().join(format!("xbh-nbsd-{tag}-{}", std::process::id()));
            let mut targets = BTreeMap::new();
            targets.insert(
                IMG.to_string(),
                Target::File {
                    path: IMG.into(),
                    dev: OURS.0,
                    ino: OURS.1,
                    perm: 0o644,
                },
            );
            targets.insert(
                "/dev/wd1e".to_string(),
                Target::Block {
                    path: "/dev/wd1e".into(),
                    rdev: DevNum::new(0, 20),
                },
            );
            Fake {
                targets,
                open_errno: None,
                disknames: RefCell::new("wd0 wd1 vnd0".into()),
                dev: [
                    "vnd0d", "vnd1d", "vnd2d", "vnd3d", "rvnd0d", "rvnd1d", "rvnd2d", "rvnd3d",
                    "wd0d",
                ]
                .map(String::from)
                .to_vec(),
                // vnd0 holds some other file.
                units: RefCell::new([(0, (0x71, 99))].into_iter().collect()),
                busy_units: BTreeSet::new(),
                vnconfig_noop: false,
                unconfig_fails: false,
                holder: None,
                cands: RefCell::default(),
                records: RefCell::default(),
                calls: RefCell::default(),
                lock_dir,
            }
        }

        fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }

        fn record(&self) -> Option<record::Vnd> {
            match Record::decode(self.records.borrow().get("backend-vbd-5-768")?) {
                Ok(Record::Vnd(r)) => Some(r),
                other => panic!("not a vnd record: {other:?}"),
            }
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.lock_dir);
        }
    }

    impl NetBsd for Fake {
        fn classify(&self, params: &str) -> Result<Target> {
            Ok(self.targets.get(params).cloned().unwrap_or(Target::Other {
                what: format!("a path that does not exist ({params})"),
            }))
        }
        fn open_check(&self, path: &str, read_only: bool) -> io::Result<(u64, u64)> {
            self.calls
                .borrow_mut()
                .push(format!("open {path} ro={read_only}"));
            match self.open_errno {
                Some(e) => Err(io::Error::from_raw_os_error(e)),
                None => Ok(OURS),
            }
        }
        fn disknames(&self) -> Result<String> {
            Ok(self.disknames.borrow().clone())
        }
        fn dev_entries(&self) -> Result<Vec<String>> {
            Ok(self.dev.clone())
        }
        fn has_raw_node(&self, unit: u32) -> bool {
            self.dev.contains(&format!("rvnd{unit}d"))
        }
        fn backing_of(&self, unit: u32) -> Result<Option<(u64, u64)>> {
            Ok(self.units.borrow().get(&unit).copied())
        }
        fn stat_block(&self, path: &str) -> Option<DevNum> {
            let u = parse_vnd_node(path)?;
            Some(DevNum::new(14, u64::from(u) * MAXPARTITIONS + RAW_PART))
        }
        fn vnconfig(&self, unit: u32, file: &str, read_only: bool) -> Result<()> {
            let r = if read_only { "-r " } else { "" };
            self.calls
                .borrow_mut()
                .push(format!("vnconfig {r}{} {file}", vnd_node(unit)));
            assert!(
                self.record().is_some_and(|r| r.unit == unit),
                "recorded before vnconfig"
            );
            if self.busy_units.contains(&unit) {
                bail!("vnconfig: /dev/rvnd{unit}d: VNDIOCSET: Device busy");
            }
            if !self.vnconfig_noop {
                self.units.borrow_mut().insert(unit, OURS);
                self.disknames.borrow_mut().push_str(&format!(" vnd{unit}"));
            }
            Ok(())
        }
        fn vnunconfig(&self, unit: u32) -> Result<()> {
            self.calls
                .borrow_mut()
                .push(format!("vnconfig -u {}", vnd_node(unit)));
            if self.unconfig_fails {
                bail!("vnconfig: VNDIOCCLR: Device busy");
            }
            self.units.borrow_mut().remove(&unit);
            Ok(())
        }
        fn lock(&self) -> Result<Lock> {
            Lock::claim_in(&self.lock_dir, "block")
        }
        fn sharing(&self, _scan: &Scan, cands: &[DevNum]) -> Result<Option<Holder>> {
            self.cands.borrow_mut().push(cands.to_vec());
            Ok(self.holder.clone())
        }
        fn save(&self, key: &str, rec: &Record) -> Result<()> {
            self.records
                .borrow_mut()
                .insert(key.to_string(), rec.encode()?);
            Ok(())
        }
        fn load(&self, key: &str) -> Result<Option<Record>> {
            match self.records.borrow().get(key) {
                Some(t) => Ok(Some(Record::decode(t)?)),
                None => Ok(None),
            }
        }
        fn delete(&self, key: &str) -> Result<()> {
            self.records.borrow_mut().remove(key);
            Ok(())
        }
    }

    fn store(params: &str, mode: &str) -> MemStore {
        let s = MemStore::default();
        s.set(&format!("{BE}/params"), params);
        s.set(&format!("{BE}/mode"), mode);
        s.set(&format!("{BE}/frontend-id"), "5");
        s.set(&format!("{BE}/state"), "2");
        s.set("/local/domain/5/vm", "/vm/five");
        s
    }

    fn run(
        sys: &Fake,
        s: &MemStore,
        action: Action,
    ) -> std::result::Result<(), (&'static str, String)> {
        let be = Backend::new(s, BackendPath::parse(BE, "backend", "vbd").unwrap());
        let script = Script::new("/nonexistent/scripts/block".into(), vec![]);
        block(sys, action, &be, &script).map_err(|e| crate::backend::describe(&e))
    }

    fn node(s: &MemStore, n: &str) -> Option<String> {
        s.get(&format!("{BE}/{n}"))
    }

    #[test]
    fn file_add_configures_the_first_free_unit() {
        let sys = Fake::new("add");
        let s = store(IMG, "w");
        run(&sys, &s, Action::Add).unwrap();
        assert_eq!(
            sys.calls(),
            [
                format!("open {IMG} ro=false"),
                format!("vnconfig /dev/vnd1d {IMG}")
            ]
        );
        assert_eq!(node(&s, "vnd").as_deref(), Some("/dev/vnd1d"));
        assert_eq!(
            node(&s, "physical-device-path").as_deref(),
            Some("/dev/vnd1d")
        );
        assert_eq!(node(&s, "physical-device").as_deref(), Some("3603")); // vnd1d
        assert_eq!(node(&s, "hotplug-status").as_deref(), Some("connected"));
        let rec = sys.record().unwrap();
        assert_eq!(rec.unit, 1);
        assert_eq!(rec.backing, (113, 12));
        assert_eq!(rec.node.as_deref(), Some("/dev/vnd1d"));
        // No other unit holds our file: nothing to check but other guests' use of it.
        assert_eq!(*sys.cands.borrow(), [Vec::<DevNum>::new()]);
        // Called again (libxl never does, but a retry might): nothing happens.
        run(&sys, &s, Action::Add).unwrap();
        assert_eq!(sys.calls().len(), 2);
    }

    #[test]
    fn read_only_disks_get_read_only_units() {
        let sys = Fake::new("ro");
        let s = store(IMG, "r");
        run(&sys, &s, Action::Add).unwrap();
        assert_eq!(
            sys.calls(),
            [
                format!("open {IMG} ro=true"),
                format!("vnconfig -r /dev/vnd1d {IMG}")
            ]
        );
    }

    #[test]
    fn busy_units_are_skipped_and_exhaustion_reported() {
        let mut sys = Fake::new("busy");
        sys.busy_units = [1, 2].into_iter().collect();
        let s = store(IMG, "w");
        run(&sys, &s, Action::Add).unwrap();
        assert_eq!(node(&s, "vnd").as_deref(), Some("/dev/vnd3d"));
        assert_eq!(sys.record().unwrap().unit, 3);

        let mut sys = Fake::new("none");
        sys.busy_units = [1, 2, 3].into_iter().collect();
        let s = store(IMG, "w");
        let (st, msg) = run(&sys, &s, Action::Add).unwrap_err();
        assert_eq!(st, "error");
        assert!(msg.contains("no available vnd device"), "{msg}");
        assert!(msg.contains("Device busy"), "{msg}");
        assert_eq!(sys.record(), None, "no record of a failed add");
        assert_eq!(node(&s, "hotplug-status"), None);

        let sys = Fake::new("full");
        *sys.disknames.borrow_mut() = "wd0 vnd0 vnd1 vnd2 vnd3".into();
        let (_, msg) = run(&sys, &store(IMG, "w"), Action::Add).unwrap_err();
        assert!(msg.contains("MAKEDEV"), "{msg}");
        assert!(!sys.calls().iter().any(|c| c.starts_with("vnconfig")));
    }

    #[test]
    fn vnconfig_success_is_not_trusted() {
        let mut sys = Fake::new("noop");
        sys.vnconfig_noop = true;
        let s = store(IMG, "w");
        let (_, msg) = run(&sys, &s, Action::Add).unwrap_err();
        assert!(msg.contains("did not configure vnd1"), "{msg}");
        assert_eq!(sys.record(), None);
        assert_eq!(node(&s, "physical-device"), None);
    }

    #[test]
    fn a_file_already_on_a_unit_in_use_is_refused() {
        let mut sys = Fake::new("shared");
        sys.units.borrow_mut().insert(3, OURS);
        sys.disknames.borrow_mut().push_str(" vnd3");
        sys.holder = Some(Holder::Guest {
            dev: DevNum::new(14, 3 * 16),
            domid: "6".into(),
            backend: "/local/domain/0/backend/vbd/6/768".into(),
        });
        let s = store(IMG, "w");
        let (st, msg) = run(&sys, &s, Action::Add).unwrap_err();
        assert_eq!(st, "busy");
        assert!(
            msg.starts_with(&format!(
                "File {IMG} is configured on vnd3,\nwhich is mounted in a guest domain (domain 6,"
            )),
            "{msg}"
        );
        assert_eq!(sys.cands.borrow()[0], disk_partitions(DevNum::new(14, 51)));
        assert!(!sys.calls().iter().any(|c| c.starts_with("vnconfig")));
        // w! skips the check.
        sys.holder = None;
        let s = store(IMG, "w!");
        run(&sys, &s, Action::Add).unwrap();
        assert!(sys.cands.borrow().len() == 1, "no check for w!");
    }

    #[test]
    fn file_add_refusals() {
        let sys = Fake::new("closing");
        let s = store(IMG, "w");
        s.set(&format!("{BE}/state"), "5");
        let (_, msg) = run(&sys, &s, Action::Add).unwrap_err();
        assert!(
            msg.contains("Path closed or removed during hotplug add"),
            "{msg}"
        );

        let mut sys = Fake::new("perm");
        sys.targets.insert(
            IMG.into(),
            Target::File {
                path: IMG.into(),
                dev: OURS.0,
                ino: OURS.1,
                perm: 0o444,
            },
        );
        let (st, msg) = run(&sys, &store(IMG, "w"), Action::Add).unwrap_err();
        assert_eq!(st, "busy");
        assert!(msg.contains("is read-only"), "{msg}");
        run(&sys, &store(IMG, "r"), Action::Add).unwrap();

        let mut sys = Fake::new("erofs");
        sys.open_errno = Some(nix::libc::EROFS);
        let (st, _) = run(&sys, &store(IMG, "w"), Action::Add).unwrap_err();
        assert_eq!(st, "busy");

        let sys = Fake::new("missing");
        let (st, msg) = run(&sys, &store("/vm/nope.img", "w"), Action::Add).unwrap_err();
        assert_eq!(st, "error");
        assert!(msg.contains("does not exist"), "{msg}");
        let (_, msg) = run(&sys, &store(IMG, "x"), Action::Add).unwrap_err();
        assert!(msg.contains("invalid mode"), "{msg}");
    }

    #[test]
    fn phy_add_checks_overlapping_partitions() {
        let mut sys = Fake::new("phy");
        let s = store("/dev/wd1e", "w");
        run(&sys, &s, Action::Add).unwrap();
        assert_eq!(node(&s, "physical-device").as_deref(), Some("20"));
        assert_eq!(
            node(&s, "physical-device-path").as_deref(),
            Some("/dev/wd1e")
        );
        assert_eq!(node(&s, "vnd"), None);
        assert_eq!(node(&s, "hotplug-status").as_deref(), Some("connected"));
        assert_eq!(
            sys.cands.borrow()[0],
            [DevNum::new(0, 20), DevNum::new(0, 18), DevNum::new(0, 19)]
        );
        sys.holder = Some(Holder::Local {
            dev: DevNum::new(0, 19),
            mount_point: "/data".into(),
        });
        let s = store("/dev/wd1e", "r");
        let (st, msg) = run(&sys, &s, Action::Add).unwrap_err();
        assert_eq!(st, "busy");
        assert_eq!(
            msg,
            "Device /dev/wd1e overlaps wd1d,\nwhich is mounted read-write in the privileged \
             domain (at /data),\nand so cannot be mounted read-only by a guest."
        );
        assert!(sys.calls().is_empty());
    }

    #[test]
    fn remove_unconfigures_the_recorded_unit_without_params() {
        let sys = Fake::new("rm");
        let s = store(IMG, "w");
        run(&sys, &s, Action::Add).unwrap();
        s.unset(&format!("{BE}/params"));
        s.unset(&format!("{BE}/vnd"));
        run(&sys, &s, Action::Remove).unwrap();
        assert_eq!(sys.calls().last().unwrap(), "vnconfig -u /dev/vnd1d");
        assert!(!sys.units.borrow().contains_key(&1));
        assert_eq!(sys.record(), None);
        assert!(s.list(BE).unwrap().is_none(), "backend directory removed");
        // vnd0, someone else's, untouched.
        assert!(sys.units.borrow().contains_key(&0));
    }

    #[test]
    fn remove_leaves_a_reused_unit_alone() {
        let sys = Fake::new("reused");
        let s = store(IMG, "w");
        run(&sys, &s, Action::Add).unwrap();
        sys.units.borrow_mut().insert(1, (0x71, 4242));
        run(&sys, &s, Action::Remove).unwrap();
        assert!(!sys.calls().iter().any(|c| c.starts_with("vnconfig -u")));
        assert_eq!(sys.units.borrow().get(&1), Some(&(0x71, 4242)));
        assert_eq!(sys.record(), None);
        assert!(s.list(BE).unwrap().is_none());
    }

    #[test]
    fn remove_of_an_upstream_attach_uses_the_vnd_node() {
        // Configured by upstream's script: no record, a `vnd` node, `params` gone.
        let sys = Fake::new("legacy");
        sys.units.borrow_mut().insert(2, OURS);
        let s = store(IMG, "w");
        s.unset(&format!("{BE}/params"));
        s.set(&format!("{BE}/vnd"), "/dev/vnd2d");
        run(&sys, &s, Action::Remove).unwrap();
        assert_eq!(sys.calls(), ["vnconfig -u /dev/vnd2d"]);
        assert!(s.list(BE).unwrap().is_none());
        // With params still there, it must match.
        let sys = Fake::new("legacy2");
        sys.units.borrow_mut().insert(2, (0x71, 4242));
        let s = store(IMG, "w");
        s.set(&format!("{BE}/vnd"), "/dev/vnd2d");
        run(&sys, &s, Action::Remove).unwrap();
        assert!(sys.calls().is_empty());
        // A `vnd` node that is not a vnd is never passed to vnconfig.
        let sys = Fake::new("legacy3");
        let s = store(IMG, "w");
        s.set(&format!("{BE}/vnd"), "/dev/wd0d");
        run(&sys, &s, Action::Remove).unwrap();
        assert!(sys.calls().is_empty());
        assert!(s.list(BE).unwrap().is_none());
    }

    #[test]
    fn a_failed_unconfigure_keeps_the_backend_and_the_record() {
        let mut sys = Fake::new("rmfail");
        let s = store(IMG, "w");
        run(&sys, &s, Action::Add).unwrap();
        sys.unconfig_fails = true;
        let (st, msg) = run(&sys, &s, Action::Remove).unwrap_err();
        assert_eq!(st, "error");
        assert!(msg.contains("VNDIOCCLR: Device busy"), "{msg}");
        assert!(sys.record().is_some(), "kept for a retry");
        assert_eq!(node(&s, "vnd").as_deref(), Some("/dev/vnd1d"));
    }

    #[test]
    fn remove_of_phy_just_removes_the_backend() {
        let sys = Fake::new("rmphy");
        let s = store("/dev/wd1e", "w");
        run(&sys, &s, Action::Add).unwrap();
        run(&sys, &s, Action::Remove).unwrap();
        assert!(sys.calls().is_empty());
        assert!(s.list(BE).unwrap().is_none());
        assert_eq!(s.get("/local/domain/5/vm").as_deref(), Some("/vm/five"));
    }
}
