//! The storage helpers' pure parts, on every OS: what `params` means for `block-iscsi`,
//! `block-nbd` and `block-drbd`, and the records parsed from the tools' output
//! (`iscsiadm`, `multipath`, `nbd-client`'s sysfs files, `drbdadm`). No I/O here: each
//! parser is tested against fixtures in the real tools' formats (Debian 12: open-iscsi
//! 2.1.8, multipath-tools 0.9.4, nbd-client 3.24, drbd-utils 9.22; DRBD 8.4 role output).
//!
//! Fields are matched whole, never by substring: a session of `iqn...:disk10` is not one
//! of `iqn...:disk1`.

pub mod drbd;
pub mod iscsi;
pub mod nbd;

/// Strips the xend-era `<scheme>:` prefix of `params` (`iscsi:`, `nbd:`, `drbd:`), which
/// libxl's disk parser maps to `script=block-<scheme>`, once.
pub fn strip_legacy_prefix<'a>(params: &'a str, scheme: &str) -> &'a str {
    params
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix(':'))
        .unwrap_or(params)
}

/// Text that may appear in an error message about `params`: control characters escaped,
/// cut at 200 characters (the message goes to `hotplug-error`, which the guest may read).
pub fn shown(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(200)
        .collect::<String>()
        .escape_debug()
        .collect();
    if s.chars().count() > 200 {
        out.push_str("...");
    }
    format!("\"{out}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_prefixes() {
        assert_eq!(strip_legacy_prefix("drbd:r0", "drbd"), "r0");
        assert_eq!(strip_legacy_prefix("r0", "drbd"), "r0");
        assert_eq!(strip_legacy_prefix("drbdx:r0", "drbd"), "drbdx:r0");
        assert_eq!(
            strip_legacy_prefix("iscsi:iqn=a,portal=b", "iscsi"),
            "iqn=a,portal=b"
        );
        // Only once.
        assert_eq!(strip_legacy_prefix("nbd:nbd:x", "nbd"), "nbd:x");
    }

    #[test]
    fn shown_escapes_and_cuts() {
        assert_eq!(shown("a\nb"), "\"a\\nb\"");
        assert_eq!(shown(&"x".repeat(300)).len(), 200 + 5);
    }
}
