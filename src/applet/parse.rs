//! What the helpers' parsers share (`iscsi::parse`, `nbd::parse`, `drbd::parse`): their
//! error type and how they show the input they refuse. The parsers do no I/O: each is
//! tested against fixtures in the real tools' formats (Debian 12: open-iscsi 2.1.8,
//! multipath-tools 0.9.4, nbd-client 3.24, drbd-utils 9.22; DRBD 8.4 role output).
//!
//! Fields are matched whole, never by substring: a session of `iqn...:disk10` is not one
//! of `iqn...:disk1`.

use std::fmt;

/// A refused `params` value, CHAP credentials file or tool output. The message names the
/// field and shows the offending text through [`shown`]; it goes to `hotplug-error` as is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError(String);

impl ParseError {
    pub fn new(message: impl Into<String>) -> ParseError {
        ParseError(message.into())
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

impl From<String> for ParseError {
    fn from(s: String) -> ParseError {
        ParseError(s)
    }
}

impl From<&str> for ParseError {
    fn from(s: &str) -> ParseError {
        ParseError(s.to_string())
    }
}

/// `Err(ParseError)` from a message, for `return fail(format!(..))`.
pub fn fail<T>(message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError::new(message))
}

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
