//! Device numbers and their xenstore spellings.
//!
//! Linux backends read `physical-device` as `%x:%x` (blkback's `xenbus_scanf`), and the
//! shell scripts write `stat -c %t:%T`: lower-case, unpadded hex. NetBSD's xbdback reads a
//! decimal `dev_t` instead (see `platform::netbsd::vnd`).

use std::fmt;

/// A block device number, split the way the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevNum {
    pub major: u64,
    pub minor: u64,
}

impl DevNum {
    pub const fn new(major: u64, minor: u64) -> Self {
        DevNum { major, minor }
    }

    /// `major:minor` in lower-case unpadded hex, exactly `stat -c %t:%T`.
    pub fn to_linux_hex(self) -> String {
        format!("{:x}:{:x}", self.major, self.minor)
    }

    /// Parses a `physical-device` value the way Linux blkback does (`%x:%x`): hex, either
    /// case, optionally zero-padded or `0x`-prefixed (krata writes `{:02x}:{:02x}`).
    /// Anything else, including trailing garbage, is `None`.
    pub fn parse_linux_hex(s: &str) -> Option<DevNum> {
        let (ma, mi) = s.trim_end_matches('\n').split_once(':')?;
        Some(DevNum::new(parse_hex_field(ma)?, parse_hex_field(mi)?))
    }

    /// Parses another backend's `physical-device` exactly as Linux blkback does
    /// (`xenbus_scanf("%x:%x")` then `MKDEV`): leading white space and `0x` skipped,
    /// anything after the minor ignored, each field wrapping at 32 bits, and the pair
    /// folded into a 12-bit major and 20-bit minor. The sharing check must see the device
    /// blkback will open, however the node is spelled (` 7:3`, `7:3 junk`, `1007:3`).
    pub fn parse_blkback(s: &str) -> Option<DevNum> {
        fn hex(s: &[u8]) -> Option<(u32, &[u8])> {
            let start = s.iter().position(|b| !matches!(b, b' ' | b'\t'..=b'\r'))?;
            let s = s.get(start..)?;
            if !s.first()?.is_ascii_hexdigit() {
                return None;
            }
            let s = match s {
                [b'0', b'x' | b'X', rest @ ..] => rest,
                _ => s,
            };
            let n = s.iter().take_while(|b| b.is_ascii_hexdigit()).count();
            let (digits, rest) = s.split_at_checked(n)?;
            let v = digits.iter().fold(0u32, |v, b| {
                v.wrapping_mul(16)
                    .wrapping_add(char::from(*b).to_digit(16).unwrap_or(0))
            });
            Some((v, rest))
        }
        let (ma, rest) = hex(s.as_bytes())?;
        let (mi, _) = hex(rest.strip_prefix(b":")?)?;
        let dev = (ma << 20) | mi;
        Some(DevNum::new(u64::from(dev >> 20), u64::from(dev & 0xf_ffff)))
    }

    /// Parses the decimal `major:minor` of `/proc/self/mountinfo` and sysfs `dev` files.
    pub fn parse_decimal_pair(s: &str) -> Option<DevNum> {
        let (ma, mi) = s.trim().split_once(':')?;
        Some(DevNum::new(parse_dec_field(ma)?, parse_dec_field(mi)?))
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}:{:x}", self.major, self.minor)
    }
}

fn parse_hex_field(s: &str) -> Option<u64> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    // Kernel majors and minors fit in 32 bits; 16 hex digits is the most a u64 can take.
    if digits.is_empty() || digits.len() > 16 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

fn parse_dec_field(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_matches_stat_format() {
        assert_eq!(DevNum::new(7, 0).to_linux_hex(), "7:0");
        assert_eq!(DevNum::new(0xfe, 0).to_linux_hex(), "fe:0");
        assert_eq!(DevNum::new(259, 1).to_linux_hex(), "103:1");
        assert_eq!(DevNum::new(7, 300).to_string(), "7:12c");
    }

    #[test]
    fn hex_parse_accepts_what_blkback_accepts() {
        assert_eq!(DevNum::parse_linux_hex("7:0"), Some(DevNum::new(7, 0)));
        assert_eq!(DevNum::parse_linux_hex("07:00"), Some(DevNum::new(7, 0)));
        assert_eq!(
            DevNum::parse_linux_hex("FE:1a"),
            Some(DevNum::new(0xfe, 0x1a))
        );
        assert_eq!(
            DevNum::parse_linux_hex("0x103:0x1"),
            Some(DevNum::new(0x103, 1))
        );
    }

    #[test]
    fn hex_parse_rejects_garbage() {
        for bad in [
            "",
            ":",
            "7",
            "7:",
            ":0",
            "7:0:1",
            "g:0",
            "7:0 ",
            " 7:0",
            "-1:0",
            "7:+1",
            "12345678901234567:0",
            "7;0",
        ] {
            assert_eq!(DevNum::parse_linux_hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn blkback_spellings() {
        let d = |a, b| Some(DevNum::new(a, b));
        assert_eq!(DevNum::parse_blkback("7:3"), d(7, 3));
        assert_eq!(DevNum::parse_blkback(" 7:3"), d(7, 3));
        assert_eq!(DevNum::parse_blkback("7:3\ngarbage"), d(7, 3));
        assert_eq!(DevNum::parse_blkback("0x7:0x3"), d(7, 3));
        assert_eq!(DevNum::parse_blkback("0:700003"), d(7, 3));
        assert_eq!(DevNum::parse_blkback("1007:3"), d(7, 3));
        assert_eq!(DevNum::parse_blkback("100000007:3"), d(7, 3));
        assert_eq!(DevNum::parse_blkback("103:1"), d(0x103, 1));
        assert_eq!(DevNum::parse_blkback("7"), None);
        assert_eq!(DevNum::parse_blkback("g:3"), None);
        assert_eq!(DevNum::parse_blkback(""), None);
    }

    #[test]
    fn decimal_pair() {
        assert_eq!(
            DevNum::parse_decimal_pair("259:3"),
            Some(DevNum::new(259, 3))
        );
        assert_eq!(
            DevNum::parse_decimal_pair("0:22\n"),
            Some(DevNum::new(0, 22))
        );
        assert_eq!(DevNum::parse_decimal_pair("a:3"), None);
        assert_eq!(DevNum::parse_decimal_pair("3"), None);
    }
}
