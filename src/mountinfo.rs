//! `/proc/self/mountinfo`, parsed.
//!
//! Upstream stats the first field of every `/proc/mounts` line, which misses mounts whose
//! source is not a path (or is a stale path) and forks a `stat` per mount. mountinfo names
//! the device number of every mount directly (field 3), so no path is ever stat-ed.

use crate::devnum::DevNum;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub dev: DevNum,
    pub mount_point: String,
    pub source: String,
    /// True when writes through this mount are impossible: the mount itself or its
    /// superblock is read-only.
    pub read_only: bool,
}

/// Parses the whole text of a mountinfo file. Malformed lines are returned as errors
/// (`Err(line)`) rather than skipped, so the caller can refuse instead of missing a mount.
pub fn parse(text: &str) -> Result<Vec<Mount>, String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| parse_line(l).ok_or_else(|| l.to_string()))
        .collect()
}

/// One line: `id parent major:minor root mount-point mount-options [optional...] - fstype
/// source super-options`.
pub fn parse_line(line: &str) -> Option<Mount> {
    let mut fields = line.split(' ');
    let _id = fields.next()?;
    let _parent = fields.next()?;
    let dev = DevNum::parse_decimal_pair(fields.next()?)?;
    let _root = fields.next()?;
    let mount_point = unescape(fields.next()?);
    let mount_opts = fields.next()?;
    // Optional fields end at a lone "-".
    loop {
        if fields.next()? == "-" {
            break;
        }
    }
    let _fstype = fields.next()?;
    let source = unescape(fields.next()?);
    let super_opts = fields.next()?;
    let read_only = has_ro(mount_opts) || has_ro(super_opts);
    Some(Mount {
        dev,
        mount_point,
        source,
        read_only,
    })
}

fn has_ro(opts: &str) -> bool {
    opts.split(',').any(|o| o == "ro")
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&c, tail)) = rest.split_first() {
        if c == b'\\'
            && let Some(([a, b, d], after)) = tail.split_first_chunk::<3>()
            && [a, b, d].iter().all(|x| (b'0'..=b'7').contains(*x))
        {
            let v = u32::from(a - b'0') * 64 + u32::from(b - b'0') * 8 + u32::from(d - b'0');
            out.push(v as u8);
            rest = after;
        } else {
            out.push(c);
            rest = tail;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
61 22 7:3 / /mnt/with\\040space ro,relatime shared:30 - ext4 /dev/loop3 ro
62 22 7:4 / /mnt/bind rw,relatime - ext2 /dev/loop4 ro
63 22 259:1 /sub /srv rw,relatime shared:31 master:2 - xfs /dev/nvme0n1p1 rw,attr2
";

    #[test]
    fn parses_fields() {
        let m = parse(SAMPLE).unwrap();
        assert_eq!(m.len(), 5);
        assert_eq!(m[0].dev, DevNum::new(254, 0));
        assert_eq!(m[0].mount_point, "/");
        assert!(!m[0].read_only);
        assert_eq!(m[2].mount_point, "/mnt/with space");
        assert_eq!(m[2].source, "/dev/loop3");
        assert!(m[2].read_only);
        // rw mount of a read-only superblock cannot write either.
        assert!(m[3].read_only);
        // Several optional fields before the separator.
        assert_eq!(m[4].dev, DevNum::new(259, 1));
        assert_eq!(m[4].mount_point, "/srv");
        assert!(!m[4].read_only);
    }

    #[test]
    fn errors_rather_than_skipping() {
        assert_eq!(parse("garbage\n").unwrap_err(), "garbage");
        assert!(parse_line("1 2 x:y / / rw - ext4 /dev/a rw").is_none());
        assert!(parse_line("1 2 7:0 / / rw shared:1").is_none());
        assert!(parse_line("1 2 7:0 / / rw -").is_none());
    }

    #[test]
    fn escapes() {
        assert_eq!(unescape("a\\011b\\134c\\012"), "a\tb\\c\n");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
        assert_eq!(unescape("\\999"), "\\999");
    }

    #[test]
    fn real_file_parses() {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mounts = parse(&text).unwrap();
        assert!(mounts.iter().any(|m| m.mount_point == "/"));
    }
}
