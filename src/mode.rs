//! The backend `mode` node.
//!
//! libxl writes only `r` or `w`; the xend era also produced `w!` (force: skip every sharing
//! check), `rw` and `ro`. Our own request is parsed strictly (anything else is refused),
//! while other backends' modes are read the lenient upstream way (`canonicalise_mode`),
//! except that a value we cannot make sense of counts as writable: when guessing, guess the
//! answer that refuses to share.

use anyhow::{Result, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Read-only access.
    Read,
    /// Read-write access, subject to the sharing check.
    Write,
    /// Read-write with every sharing check skipped (`w!`), on the administrator's word.
    Force,
}

impl Mode {
    /// Parses the mode of the backend being attached. Accepts `r`, `ro`, `w`, `rw`, `w!`,
    /// `rw!`.
    pub fn parse_request(s: &str) -> Result<Mode> {
        Ok(match s {
            "r" | "ro" => Mode::Read,
            "w" | "rw" => Mode::Write,
            "w!" | "rw!" => Mode::Force,
            _ => bail!("invalid mode {s:?}: expected r or w (or w! to skip the sharing check)"),
        })
    }

    /// The upstream `canonicalise_mode`, for the modes of *other* backends: no `w` means
    /// read-only, `w` with `!` means force, else read-write. An empty or missing mode is
    /// unknown and counts as read-write.
    pub fn canonicalise_other(s: Option<&str>) -> Mode {
        match s {
            None | Some("") => Mode::Write,
            Some(s) if !s.contains('w') => {
                if s.bytes().all(|b| matches!(b, b'r' | b'o' | b'!')) {
                    Mode::Read
                } else {
                    Mode::Write
                }
            }
            Some(s) if s.contains('!') => Mode::Force,
            Some(_) => Mode::Write,
        }
    }

    pub fn writable(self) -> bool {
        !matches!(self, Mode::Read)
    }

    /// As upstream `canonicalise_mode` spells it, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Read => "r",
            Mode::Write => "w",
            Mode::Force => "w!",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_modes() {
        assert_eq!(Mode::parse_request("r").unwrap(), Mode::Read);
        assert_eq!(Mode::parse_request("ro").unwrap(), Mode::Read);
        assert_eq!(Mode::parse_request("w").unwrap(), Mode::Write);
        assert_eq!(Mode::parse_request("rw").unwrap(), Mode::Write);
        assert_eq!(Mode::parse_request("w!").unwrap(), Mode::Force);
        for bad in ["", "x", "W", "r ", "wr", "!", "w!!", "read"] {
            let err = Mode::parse_request(bad).unwrap_err().to_string();
            assert!(err.contains("invalid mode"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn other_modes_lean_to_writable() {
        assert_eq!(Mode::canonicalise_other(Some("r")), Mode::Read);
        assert_eq!(Mode::canonicalise_other(Some("ro")), Mode::Read);
        assert_eq!(Mode::canonicalise_other(Some("w")), Mode::Write);
        assert_eq!(Mode::canonicalise_other(Some("rw")), Mode::Write);
        assert_eq!(Mode::canonicalise_other(Some("w!")), Mode::Force);
        assert_eq!(Mode::canonicalise_other(None), Mode::Write);
        assert_eq!(Mode::canonicalise_other(Some("")), Mode::Write);
        assert_eq!(Mode::canonicalise_other(Some("garbage")), Mode::Write);
    }
}
