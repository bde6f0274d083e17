//! `block-drbd`: its `params` (a resource name) and the output of `drbdadm role` and
//! `drbdadm sh-dev`.
//!
//! * `drbdadm role <res>`: DRBD 9 prints the local role alone (`Primary`, `Secondary`,
//!   `Unknown`); DRBD 8.4 (`drbdadm-84`) prints `<local>/<peer>` (`Primary/Secondary`,
//!   `Secondary/Unknown`), or `Unconfigured` for a device that is not up. The local role
//!   is the part before `/`, as in the drbd-utils script.
//! * `drbdadm sh-dev <res>`: one device path per volume (`/dev/drbd7`).

use std::fmt;

use crate::applet::parse::{ParseError, fail, shown};

/// A DRBD resource, optionally one volume of it (`r0/1`, as `drbdadm` accepts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    pub name: String,
    pub volume: Option<u32>,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.volume {
            Some(v) => write!(f, "{}/{v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// `params`: `[drbd:]<resource>[/<volume>]`.
pub fn parse_params(raw: &str) -> Result<Resource, ParseError> {
    let s = crate::applet::parse::strip_legacy_prefix(raw, "drbd");
    if s.is_empty() {
        return fail("params is empty: expected a DRBD resource name");
    }
    let (name, vol) = match s.split_once('/') {
        Some((n, v)) => (n, Some(v)),
        None => (s, None),
    };
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(['-', '.'])
        && name != "all"
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+'));
    if !ok {
        return fail(format!(
            "params {} is not a DRBD resource name (letters, digits, _ - . +)",
            shown(name)
        ));
    }
    let volume = match vol {
        None => None,
        Some(v) => Some(
            (!v.is_empty()
                && v.len() <= 5
                && v.bytes().all(|b| b.is_ascii_digit())
                && (v == "0" || !v.starts_with('0')))
            .then(|| v.parse::<u32>().ok())
            .flatten()
            .ok_or_else(|| format!("params volume {} is not a volume number", shown(v)))?,
        ),
    };
    Ok(Resource {
        name: name.to_string(),
        volume,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Primary,
    Secondary,
    Unknown,
    /// DRBD 8: the device is not up.
    Unconfigured,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "Primary",
            Role::Secondary => "Secondary",
            Role::Unknown => "Unknown",
            Role::Unconfigured => "Unconfigured",
        })
    }
}

/// The local role from `drbdadm role` output. Several lines (DRBD 8.4 with several
/// volumes) must agree.
pub fn parse_role(out: &str) -> Result<Role, ParseError> {
    let mut role = None;
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let local = line.split('/').next().unwrap_or(line);
        let r = match local {
            "Primary" => Role::Primary,
            "Secondary" => Role::Secondary,
            "Unknown" => Role::Unknown,
            "Unconfigured" => {
                return fail(
                    "the resource is not configured (drbdadm says Unconfigured): \
                            bring it up first (drbdadm up)",
                );
            }
            _ => return fail(format!("unexpected drbdadm role output {}", shown(line))),
        };
        match role {
            None => role = Some(r),
            Some(prev) if prev == r => {}
            Some(prev) => {
                return fail(format!(
                    "drbdadm role reports both {prev} and {r}: name one volume (<resource>/<volume>)"
                ));
            }
        }
    }
    role.ok_or_else(|| "drbdadm role printed nothing".into())
}

/// The one device of `drbdadm sh-dev` output.
pub fn parse_sh_dev(out: &str) -> Result<String, ParseError> {
    let devs: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match devs[..] {
        [d] if d.starts_with('/') && !d.contains(char::is_whitespace) => Ok(d.to_string()),
        [d] => fail(format!(
            "drbdadm sh-dev printed {}, not a device path",
            shown(d)
        )),
        [] => fail("drbdadm sh-dev printed no device"),
        _ => fail(format!(
            "the resource has {} volumes ({}): name one as <resource>/<volume>",
            devs.len(),
            devs.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params() {
        let r = parse_params("drbd:r0").unwrap();
        assert_eq!((r.name.as_str(), r.volume), ("r0", None));
        let r = parse_params("app01/1").unwrap();
        assert_eq!((r.name.as_str(), r.volume), ("app01", Some(1)));
        assert_eq!(r.to_string(), "app01/1");
        assert_eq!(parse_params("vm_disk-1.a+b").unwrap().name, "vm_disk-1.a+b");
        for (bad, want) in [
            ("", "params is empty"),
            ("drbd:", "params is empty"),
            ("-r0", "not a DRBD resource name"),
            ("all", "not a DRBD resource name"),
            ("r 0", "not a DRBD resource name"),
            ("r0/x", "params volume \"x\""),
            ("r0/", "params volume"),
            ("r0/01", "params volume"),
            ("/dev/drbd0", "not a DRBD resource name"),
        ] {
            let e = parse_params(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }

    #[test]
    fn roles_of_drbd_8_and_9() {
        // DRBD 9 (drbd-utils 9.22, drbdsetup role).
        assert_eq!(parse_role("Primary\n").unwrap(), Role::Primary);
        assert_eq!(parse_role("Secondary\n").unwrap(), Role::Secondary);
        assert_eq!(parse_role("Unknown\n").unwrap(), Role::Unknown);
        // DRBD 8.4 (drbdadm-84): local/peer.
        assert_eq!(parse_role("Primary/Secondary\n").unwrap(), Role::Primary);
        assert_eq!(parse_role("Secondary/Primary\n").unwrap(), Role::Secondary);
        assert_eq!(parse_role("Secondary/Unknown\n").unwrap(), Role::Secondary);
        assert_eq!(
            parse_role("Secondary/Secondary\nSecondary/Secondary\n").unwrap(),
            Role::Secondary
        );
        assert!(
            parse_role("Unconfigured\n")
                .unwrap_err()
                .to_string()
                .contains("drbdadm up")
        );
        assert!(
            parse_role("Primary/Secondary\nSecondary/Secondary\n")
                .unwrap_err()
                .to_string()
                .contains("name one volume")
        );
        assert!(parse_role("").is_err());
        assert!(parse_role("Primaryx\n").is_err());
    }

    #[test]
    fn sh_dev() {
        // drbd-utils 9.22 `drbdadm sh-dev r0` and a two-volume resource.
        assert_eq!(parse_sh_dev("/dev/drbd7\n").unwrap(), "/dev/drbd7");
        let e = parse_sh_dev("/dev/drbd10\n/dev/drbd11\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2 volumes") && e.contains("<resource>/<volume>"),
            "{e}"
        );
        assert!(parse_sh_dev("").is_err());
        assert!(parse_sh_dev("drbd7\n").is_err());
    }
}
