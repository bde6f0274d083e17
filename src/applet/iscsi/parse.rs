//! `block-iscsi`: its `params`, the CHAP credentials file, and the output of `iscsiadm`
//! and `multipath`, parsed.
//!
//! `params` (libxl passes `target=` verbatim, commas included):
//! `iqn=<IQN>,portal=<address>[:<port>][,lun=<N>][,multipath=y|n][,iface=<name>][,auth=<file>]`,
//! optionally behind the legacy `iscsi:` prefix. The portal is an IP address, as upstream
//! documents ("must be in IP format"), because `iscsiadm` reports sessions by address and
//! a host name could never be matched to one.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::applet::parse::{ParseError, fail, shown};

pub const DEFAULT_PORT: u16 = 3260;

const USAGE: &str =
    "iqn=<IQN>,portal=<address[:port]>[,lun=<N>][,multipath=y|n][,iface=<name>][,auth=<file>]";

/// An iSCSI portal: IP address and TCP port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Portal {
    pub addr: IpAddr,
    pub port: u16,
}

impl Portal {
    /// `a.b.c.d`, `a.b.c.d:port`, `[v6]`, `[v6]:port`; a bare IPv6 address is accepted
    /// too (it cannot be confused with a port).
    pub fn parse(s: &str) -> Option<Portal> {
        let ep = Endpoint::parse(s, DEFAULT_PORT)?;
        Some(Portal {
            addr: ep.host.parse().ok()?,
            port: ep.port,
        })
    }
}

impl Portal {
    /// As a socket address (the spelling of remove records).
    pub fn socket_addr(self) -> SocketAddr {
        SocketAddr::new(self.addr, self.port)
    }
}

impl From<SocketAddr> for Portal {
    fn from(a: SocketAddr) -> Portal {
        Portal {
            addr: a.ip(),
            port: a.port(),
        }
    }
}

impl fmt::Display for Portal {
    /// The spelling `iscsiadm -p` takes: `a.b.c.d:port` or `[v6]:port`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// A host and port as `iscsiadm` prints them (`host:port`, `[v6]:port`); the host may be
/// a name in sessions an administrator opened by hand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    fn parse(s: &str, default_port: u16) -> Option<Endpoint> {
        if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest.split_once(']')?;
            host.parse::<Ipv6Addr>().ok()?;
            let port = match after {
                "" => default_port,
                p => parse_port(p.strip_prefix(':')?)?,
            };
            return Some(Endpoint {
                host: host.to_string(),
                port,
            });
        }
        if s.parse::<Ipv6Addr>().is_ok() {
            return Some(Endpoint {
                host: s.to_string(),
                port: default_port,
            });
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, parse_port(p)?),
            None => (s, default_port),
        };
        if host.is_empty() || host.contains(':') {
            return None;
        }
        Some(Endpoint {
            host: host.to_string(),
            port,
        })
    }

    /// Whether this is `portal` (addresses compared as addresses, not as text).
    pub fn is(&self, portal: &Portal) -> bool {
        self.port == portal.port && self.host.parse::<IpAddr>().ok() == Some(portal.addr)
    }
}

fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|p| *p != 0)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub iqn: String,
    pub portal: Portal,
    pub lun: u64,
    pub multipath: bool,
    pub iface: Option<String>,
    /// A root-only file holding the CHAP credentials (see `parse_credentials`).
    pub auth: Option<String>,
}

/// Parses `params`; every error names the key at fault.
pub fn parse_params(raw: &str) -> Result<Params, ParseError> {
    let s = crate::applet::parse::strip_legacy_prefix(raw, "iscsi");
    if s.is_empty() {
        return fail(format!("params is empty: expected {USAGE}"));
    }
    let mut iqn = None;
    let mut portal = None;
    let mut lun = None;
    let mut multipath = None;
    let mut iface = None;
    let mut auth = None;
    for item in s.split(',') {
        let Some((key, value)) = item.split_once('=') else {
            return fail(format!(
                "params item {} is not key=value: expected {USAGE}",
                shown(item)
            ));
        };
        let slot = match key {
            "iqn" => &mut iqn,
            "portal" => &mut portal,
            "lun" => &mut lun,
            "multipath" => &mut multipath,
            "iface" => &mut iface,
            "auth" => &mut auth,
            other => {
                return fail(format!(
                    "params key {} is unknown (known: iqn, portal, lun, multipath, iface, auth)",
                    shown(other)
                ));
            }
        };
        if slot.is_some() {
            return fail(format!("params key {key} is given twice"));
        }
        if value.is_empty() {
            return fail(format!("params key {key} has an empty value"));
        }
        *slot = Some(value);
    }
    let iqn = iqn.ok_or_else(|| format!("params key iqn is missing: expected {USAGE}"))?;
    if !valid_iscsi_name(iqn) {
        return fail(format!(
            "params key iqn: {} is not an iSCSI name (iqn.<yyyy-mm>.<reversed domain>[:<id>], \
             eui.<16 hex digits> or naa.<16 or 32 hex digits>)",
            shown(iqn)
        ));
    }
    let portal_s =
        portal.ok_or_else(|| format!("params key portal is missing: expected {USAGE}"))?;
    let portal = Portal::parse(portal_s).ok_or_else(|| {
        format!(
            "params key portal: {} is not an IP address with an optional port \
             (a.b.c.d[:port] or [ipv6][:port])",
            shown(portal_s)
        )
    })?;
    let lun = match lun {
        None => 0,
        Some(l) => parse_lun(l)
            .ok_or_else(|| format!("params key lun: {} is not a LUN number", shown(l)))?,
    };
    let multipath = match multipath {
        None | Some("n") => false,
        Some("y") => true,
        Some(m) => {
            return fail(format!("params key multipath: {} must be y or n", shown(m)));
        }
    };
    if let Some(i) = iface
        && !valid_iface(i)
    {
        return fail(format!(
            "params key iface: {} is not an open-iscsi interface name",
            shown(i)
        ));
    }
    if let Some(a) = auth
        && (!a.starts_with('/') || a.contains('\0'))
    {
        return fail(format!(
            "params key auth: {} must be the absolute path of a credentials file",
            shown(a)
        ));
    }
    Ok(Params {
        iqn: iqn.to_string(),
        portal,
        lun,
        multipath,
        iface: iface.map(str::to_string),
        auth: auth.map(str::to_string),
    })
}

fn parse_lun(s: &str) -> Option<u64> {
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// RFC 3720 names. Beyond the RFC, nothing that could change the meaning of a path or an
/// argument: no `/`, no leading `-`, no white space; at most 223 bytes.
#[allow(
    clippy::indexing_slicing,
    reason = "every index is behind the b.len() >= 9 check before it"
)]
pub fn valid_iscsi_name(s: &str) -> bool {
    if s.len() > 223 {
        return false;
    }
    let hex = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(rest) = s.strip_prefix("eui.") {
        return rest.len() == 16 && hex(rest);
    }
    if let Some(rest) = s.strip_prefix("naa.") {
        return (rest.len() == 16 || rest.len() == 32) && hex(rest);
    }
    let Some(rest) = s.strip_prefix("iqn.") else {
        return false;
    };
    // yyyy-mm.
    let b = rest.as_bytes();
    if b.len() < 9
        || !b[..4].iter().all(u8::is_ascii_digit)
        || b[4] != b'-'
        || !b[5..7].iter().all(u8::is_ascii_digit)
        || b[7] != b'.'
    {
        return false;
    }
    rest[8..]
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b':' | b'_'))
}

fn valid_iface(s: &str) -> bool {
    s.len() <= 64
        && !s.starts_with(['-', '.'])
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b':' | b'_'))
}

/// One line of `iscsiadm -m session`:
/// `tcp: [3] 10.0.0.30:3260,1 iqn.2018-05.world.srv:dlp.target01 (non-flash)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub transport: String,
    pub sid: u32,
    pub portal: Endpoint,
    pub tpgt: u32,
    pub target: String,
}

/// `iscsiadm -m session` (exit 0). A line that is not a session is an error: a session
/// skipped could be one we must not share.
pub fn parse_sessions(out: &str) -> Result<Vec<Session>, ParseError> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            parse_session(l)
                .ok_or_else(|| format!("unexpected iscsiadm output {}", shown(l)).into())
        })
        .collect()
}

fn parse_session(line: &str) -> Option<Session> {
    let (transport, rest) = line.split_once(": [")?;
    let (sid, rest) = rest.split_once("] ")?;
    let mut f = rest.split(' ').filter(|t| !t.is_empty());
    let (portal, tpgt) = f.next()?.rsplit_once(',')?;
    let target = f.next()?;
    match f.next() {
        None | Some("(non-flash)") | Some("(flash)") => {}
        Some(_) => return None,
    }
    if f.next().is_some() || transport.is_empty() || transport.contains(' ') {
        return None;
    }
    Some(Session {
        transport: transport.to_string(),
        sid: sid.parse().ok()?,
        portal: Endpoint::parse(portal, DEFAULT_PORT)?,
        tpgt: tpgt.parse().ok()?,
        target: target.to_string(),
    })
}

/// The sessions of exactly this target on exactly this portal.
pub fn sessions_of<'s>(sessions: &'s [Session], iqn: &str, portal: &Portal) -> Vec<&'s Session> {
    sessions
        .iter()
        .filter(|s| s.target == iqn && s.portal.is(portal))
        .collect()
}

/// One line of `iscsiadm -m discovery -t st`: `10.0.0.30:3260,1 iqn...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovered {
    pub portal: Endpoint,
    pub tpgt: u32,
    pub target: String,
}

/// `iscsiadm -m discovery -t st -p <portal>`. Lines in another format are skipped: only a
/// line naming our target exactly counts.
pub fn parse_discovery(out: &str) -> Vec<Discovered> {
    out.lines()
        .filter_map(|l| {
            let (ep, target) = l.trim().split_once(' ')?;
            let (portal, tpgt) = ep.rsplit_once(',')?;
            if target.is_empty() || target.contains(' ') {
                return None;
            }
            Some(Discovered {
                portal: Endpoint::parse(portal, DEFAULT_PORT)?,
                tpgt: tpgt.parse().ok()?,
                target: target.to_string(),
            })
        })
        .collect()
}

/// The LUN part of a udev `/dev/disk/by-path` name (systemd `path_id`): `lun-<n>` below
/// 256, `lun-0x<hex>` above.
pub fn by_path_lun(lun: u64) -> String {
    if lun < 256 {
        format!("lun-{lun}")
    } else {
        format!(
            "lun-0x{:04x}{:04x}00000000",
            lun & 0xffff,
            (lun >> 16) & 0xffff
        )
    }
}

/// Whether a `/dev/disk/by-path` entry is this LUN of this target through this portal:
/// `[<prefix>-]ip-<address>:<port>-iscsi-<iqn>-lun-<n>`, every field whole (partitions,
/// `-part1`, and other targets whose name merely ends the same never match).
pub fn by_path_is(name: &str, iqn: &str, lun: u64, portal: &Portal) -> bool {
    let suffix = format!("-iscsi-{iqn}-{}", by_path_lun(lun));
    let Some(head) = name.strip_suffix(&suffix) else {
        return false;
    };
    let Some(pos) = head.rfind("ip-") else {
        return false;
    };
    if pos != 0 && !head[..pos].ends_with('-') {
        return false;
    }
    let Some((addr, port)) = head[pos + 3..].rsplit_once(':') else {
        return false;
    };
    let addr = addr
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(addr);
    addr.parse::<IpAddr>().ok() == Some(portal.addr) && parse_port(port) == Some(portal.port)
}

/// A multipath map from `multipath -ll <device>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultipathMap {
    /// The map's name: `/dev/mapper/<name>`.
    pub name: String,
    pub wwid: Option<String>,
    /// The kernel name, `dm-<n>`.
    pub dm: String,
    /// The `major:minor` of every path device listed under it.
    pub paths: Vec<String>,
}

/// The first map in `multipath -ll` output (multipath-tools 0.9: a header
/// `<alias> (<wwid>) dm-<n> <vendor>,<product>` or `<wwid> dm-<n> <vendor>,<product>`,
/// then `size=` and the path group tree).
#[allow(
    clippy::indexing_slicing,
    reason = "t[0], t[1] and t[dm_at] exist: dm_at is a position in t and is 1 or 2"
)]
pub fn parse_multipath_ll(out: &str) -> Option<MultipathMap> {
    let mut map: Option<MultipathMap> = None;
    for line in out.lines() {
        let starts_tree = line.starts_with([' ', '`', '|', '\t']) || line.starts_with("size=");
        if !starts_tree {
            if map.is_some() {
                break;
            }
            let t: Vec<&str> = line.split_whitespace().collect();
            let dm_at = t.iter().position(|w| is_dm_name(w))?;
            let (name, wwid) = match dm_at {
                1 => (t[0], None),
                2 => (
                    t[0],
                    Some(t[1].strip_prefix('(')?.strip_suffix(')')?.to_string()),
                ),
                _ => return None,
            };
            map = Some(MultipathMap {
                name: name.to_string(),
                wwid,
                dm: t[dm_at].to_string(),
                paths: Vec::new(),
            });
        } else if let Some(m) = map.as_mut() {
            m.paths.extend(
                line.split_whitespace()
                    .filter(|w| is_devnum(w))
                    .map(str::to_string),
            );
        }
    }
    map.filter(|m| valid_map_name(&m.name))
}

fn is_dm_name(w: &str) -> bool {
    w.strip_prefix("dm-")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn is_devnum(w: &str) -> bool {
    let Some((a, b)) = w.split_once(':') else {
        return false;
    };
    let num = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    num(a) && num(b)
}

/// A name usable as `/dev/mapper/<name>`.
pub fn valid_map_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 127
        && s != "."
        && s != ".."
        && s != "control"
        && !s.starts_with('-')
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'+' | b'#'))
}

/// CHAP credentials, from a root-only file of `key=value` lines (`#` comments):
/// `username`, `password`, and for mutual CHAP `username_in`, `password_in`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub mutual: Option<(String, String)>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials {{ username: {:?}, password: ***, mutual: {} }}",
            self.username,
            if self.mutual.is_some() { "yes" } else { "no" }
        )
    }
}

/// open-iscsi keeps CHAP names and secrets in 256-byte buffers.
const MAX_CHAP: usize = 255;

/// Parses a credentials file. Errors name the line and the key, never a value.
pub fn parse_credentials(text: &str) -> Result<Credentials, ParseError> {
    let mut user = None;
    let mut pass = None;
    let mut user_in = None;
    let mut pass_in = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return fail(format!("line {} is not key=value", n + 1));
        };
        let k = k.trim();
        let slot = match k {
            "username" => &mut user,
            "password" => &mut pass,
            "username_in" => &mut user_in,
            "password_in" => &mut pass_in,
            _ => {
                return fail(format!(
                    "line {}: unknown key {} (known: username, password, username_in, password_in)",
                    n + 1,
                    shown(k)
                ));
            }
        };
        if slot.is_some() {
            return fail(format!("line {}: {k} is given twice", n + 1));
        }
        if v.is_empty() || v.len() > MAX_CHAP || v.chars().any(char::is_control) {
            return fail(format!(
                "line {}: {k} must be 1 to {MAX_CHAP} bytes without control characters",
                n + 1
            ));
        }
        *slot = Some(v.to_string());
    }
    let (Some(username), Some(password)) = (user, pass) else {
        return fail("username and password are both required");
    };
    let mutual = match (user_in, pass_in) {
        (None, None) => None,
        (Some(u), Some(p)) => Some((u, p)),
        _ => return fail("username_in and password_in go together"),
    };
    Ok(Credentials {
        username,
        password,
        mutual,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const IQN: &str = "iqn.2003-01.org.linux-iscsi.dom0:disk1";

    fn p4(a: [u8; 4], port: u16) -> Portal {
        Portal {
            addr: IpAddr::from(a),
            port,
        }
    }

    #[test]
    fn params_full_and_defaults() {
        let p = parse_params(&format!("iqn={IQN},portal=127.0.0.1")).unwrap();
        assert_eq!(p.iqn, IQN);
        assert_eq!(p.portal, p4([127, 0, 0, 1], 3260));
        assert_eq!(
            (p.lun, p.multipath, &p.iface, &p.auth),
            (0, false, &None, &None)
        );
        let p = parse_params(&format!(
            "iscsi:iqn={IQN},portal=[::1]:3261,lun=3,multipath=y,iface=iface0,auth=/etc/xen/chap"
        ))
        .unwrap();
        assert_eq!(p.portal.to_string(), "[::1]:3261");
        assert_eq!(p.lun, 3);
        assert!(p.multipath);
        assert_eq!(p.iface.as_deref(), Some("iface0"));
        assert_eq!(p.auth.as_deref(), Some("/etc/xen/chap"));
        assert_eq!(
            parse_params(&format!("portal=10.0.0.1:3260,iqn={IQN},multipath=n"))
                .unwrap()
                .portal
                .to_string(),
            "10.0.0.1:3260"
        );
    }

    #[test]
    fn bad_params_name_the_key() {
        let ok = format!("iqn={IQN},portal=127.0.0.1");
        let table: &[(String, &str)] = &[
            (String::new(), "params is empty"),
            ("iscsi:".into(), "params is empty"),
            // The backdrift.org form: a bare IQN.
            (IQN.into(), "is not key=value"),
            (format!("{ok},lun"), "is not key=value"),
            (format!("{ok},foo=1"), "params key \"foo\" is unknown"),
            (format!("{ok},iqn={IQN}"), "params key iqn is given twice"),
            (format!("{ok},lun="), "params key lun has an empty value"),
            ("portal=127.0.0.1".into(), "params key iqn is missing"),
            (format!("iqn={IQN}"), "params key portal is missing"),
            (
                "iqn=disk1,portal=127.0.0.1".into(),
                "params key iqn: \"disk1\"",
            ),
            (
                "iqn=iqn.2003-01.org/x,portal=1.2.3.4".into(),
                "params key iqn:",
            ),
            (
                "iqn=iqn.03-01.org.x,portal=1.2.3.4".into(),
                "params key iqn:",
            ),
            ("iqn=eui.123,portal=1.2.3.4".into(), "params key iqn:"),
            (
                format!("iqn={IQN},portal=target.example"),
                "params key portal:",
            ),
            (format!("iqn={IQN},portal=1.2.3.4:0"), "params key portal:"),
            (
                format!("iqn={IQN},portal=1.2.3.4:99999"),
                "params key portal:",
            ),
            (format!("iqn={IQN},portal=[::1"), "params key portal:"),
            (format!("{ok},lun=-1"), "params key lun:"),
            (format!("{ok},lun=01"), "params key lun:"),
            (format!("{ok},lun=x"), "params key lun:"),
            (format!("{ok},multipath=yes"), "params key multipath:"),
            (format!("{ok},iface=-x"), "params key iface:"),
            (format!("{ok},iface=a/b"), "params key iface:"),
            (format!("{ok},auth=chap.txt"), "params key auth:"),
        ];
        for (params, want) in table {
            let e = parse_params(params).unwrap_err().to_string();
            assert!(e.contains(want), "{params:?}: {e}");
        }
    }

    #[test]
    fn iscsi_names() {
        assert!(valid_iscsi_name(IQN));
        assert!(valid_iscsi_name(
            "iqn.2001-05.com.equallogic:0-8a0906-23fe93404-c82797962054a96d-examplehost"
        ));
        assert!(valid_iscsi_name("eui.02004567A425678D"));
        assert!(valid_iscsi_name("naa.52004567BA64678D"));
        assert!(!valid_iscsi_name("iqn.2001-05"));
        assert!(!valid_iscsi_name("iqn.2001-05.com x"));
        assert!(!valid_iscsi_name("-iqn.2001-05.com"));
        assert!(!valid_iscsi_name(&format!(
            "iqn.2001-05.{}",
            "a".repeat(300)
        )));
    }

    // open-iscsi 2.1.8, `session_info_print_flat`.
    const SESSIONS: &str = "\
tcp: [1] 10.0.0.30:3260,1 iqn.2003-01.org.linux-iscsi.dom0:disk10 (non-flash)
tcp: [2] 10.0.0.30:3260,1 iqn.2003-01.org.linux-iscsi.dom0:disk1 (non-flash)
tcp: [3] 10.0.0.31:3260,1 iqn.2003-01.org.linux-iscsi.dom0:disk1 (non-flash)
tcp: [4] [fe80::1]:3260,2 iqn.2003-01.org.linux-iscsi.dom0:disk1 (non-flash)
iser: [5] san.example:3260,1 iqn.2003-01.org.linux-iscsi.dom0:disk1 (non-flash)
";

    #[test]
    fn sessions_match_whole_fields() {
        let s = parse_sessions(SESSIONS).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(s[3].portal.host, "fe80::1");
        assert_eq!(s[3].tpgt, 2);
        assert_eq!(s[4].transport, "iser");
        let portal = p4([10, 0, 0, 30], 3260);
        let m = sessions_of(&s, IQN, &portal);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].sid, 2, "disk10 must not match disk1");
        let v6 = Portal::parse("[fe80:0::1]:3260").unwrap();
        assert_eq!(sessions_of(&s, IQN, &v6)[0].sid, 4);
        assert!(sessions_of(&s, "iqn.2003-01.org.linux-iscsi.dom0:disk", &portal).is_empty());
        assert!(sessions_of(&s, IQN, &p4([10, 0, 0, 30], 3261)).is_empty());
        // Older open-iscsi without the flash marker.
        let old = parse_sessions("tcp: [7] 10.0.0.30:3260,1 iqn.2003-01.x:y\n").unwrap();
        assert_eq!(old[0].sid, 7);
        assert_eq!(parse_sessions("").unwrap(), vec![]);
        assert!(parse_sessions("iscsiadm: No active sessions.\n").is_err());
        assert!(parse_sessions("tcp: [1] 10.0.0.30:3260,1 a b c\n").is_err());
    }

    #[test]
    fn discovery() {
        // `iscsiadm -m discovery -t st -p 10.0.0.30` (idbm_print_node_flat).
        let out = "\
10.0.0.30:3260,1 iqn.2003-01.org.linux-iscsi.dom0:disk10
10.0.0.30:3260,1 iqn.2003-01.org.linux-iscsi.dom0:disk1
[fd00::30]:3260,1 iqn.2003-01.org.linux-iscsi.dom0:disk1
garbage
";
        let d = parse_discovery(out);
        assert_eq!(d.len(), 3);
        let portal = p4([10, 0, 0, 30], 3260);
        assert_eq!(
            d.iter()
                .filter(|n| n.target == IQN && n.portal.is(&portal))
                .count(),
            1
        );
        assert_eq!(d[2].portal.host, "fd00::30");
    }

    #[test]
    fn by_path_names() {
        let portal = p4([10, 0, 0, 30], 3260);
        let name = format!("ip-10.0.0.30:3260-iscsi-{IQN}-lun-0");
        assert!(by_path_is(&name, IQN, 0, &portal));
        assert!(!by_path_is(&format!("{name}-part1"), IQN, 0, &portal));
        assert!(!by_path_is(&name, IQN, 1, &portal));
        assert!(!by_path_is(&name, IQN, 0, &p4([10, 0, 0, 3], 3260)));
        assert!(!by_path_is(&name, IQN, 0, &p4([10, 0, 0, 30], 3261)));
        // disk10's link must never be taken for disk1, nor a longer name ending the same.
        let ten = "ip-10.0.0.30:3260-iscsi-iqn.2003-01.org.linux-iscsi.dom0:disk10-lun-0";
        assert!(!by_path_is(ten, IQN, 0, &portal));
        let longer = "ip-10.0.0.30:3260-iscsi-xiqn.2003-01.org.linux-iscsi.dom0:disk1-lun-0";
        assert!(!by_path_is(longer, IQN, 0, &portal));
        // Offload HBAs prefix the PCI path.
        let pci = format!("pci-0000:00:1f.0-ip-10.0.0.30:3260-iscsi-{IQN}-lun-0");
        assert!(by_path_is(&pci, IQN, 0, &portal));
        let v6 = format!("ip-fe80::1:3260-iscsi-{IQN}-lun-2");
        assert!(by_path_is(
            &v6,
            IQN,
            2,
            &Portal::parse("[fe80::1]").unwrap()
        ));
        assert_eq!(by_path_lun(255), "lun-255");
        assert_eq!(by_path_lun(256), "lun-0x0100000000000000");
        assert_eq!(by_path_lun(0x4001_0002), "lun-0x0002400100000000");
    }

    #[test]
    fn multipath_topology() {
        // multipath-tools 0.9.4, `multipath -ll /dev/sdb`, user_friendly_names yes.
        let friendly = "\
mpatha (36001405b6f5a3f8a2e34d6d9c2c1e0f4) dm-0 LIO-ORG,disk1
size=1.0G features='0' hwhandler='1 alua' wp=rw
`-+- policy='service-time 0' prio=50 status=active
  `- 3:0:0:0 sdb 8:16 active ready running
";
        let m = parse_multipath_ll(friendly).unwrap();
        assert_eq!(m.name, "mpatha");
        assert_eq!(m.wwid.as_deref(), Some("36001405b6f5a3f8a2e34d6d9c2c1e0f4"));
        assert_eq!(m.dm, "dm-0");
        assert_eq!(m.paths, vec!["8:16"]);
        // user_friendly_names no: the name is the WWID, printed once.
        let wwid = "\
36001405b6f5a3f8a2e34d6d9c2c1e0f4 dm-3 LIO-ORG,disk1
size=1.0G features='1 queue_if_no_path' hwhandler='1 alua' wp=rw
|-+- policy='service-time 0' prio=50 status=active
| `- 3:0:0:0 sdb 8:16 active ready running
`-+- policy='service-time 0' prio=10 status=enabled
  `- 4:0:0:0 sdc 8:32 active ready running
";
        let m = parse_multipath_ll(wwid).unwrap();
        assert_eq!(m.name, "36001405b6f5a3f8a2e34d6d9c2c1e0f4");
        assert_eq!((m.wwid, m.dm.as_str()), (None, "dm-3"));
        assert_eq!(m.paths, vec!["8:16", "8:32"]);
        assert_eq!(parse_multipath_ll(""), None);
        assert_eq!(parse_multipath_ll("control dm-0 x,y\n"), None);
        assert_eq!(parse_multipath_ll("no map here\n"), None);
    }

    #[test]
    fn credentials() {
        let c = parse_credentials("# CHAP for disk1\nusername=xen\npassword=s3cret=x\n").unwrap();
        assert_eq!(c.username, "xen");
        assert_eq!(c.password, "s3cret=x");
        assert!(c.mutual.is_none());
        assert!(!format!("{c:?}").contains("s3cret"));
        let c =
            parse_credentials("username=a\npassword=b\nusername_in=c\npassword_in=d\n").unwrap();
        assert_eq!(c.mutual, Some(("c".into(), "d".into())));
        for (bad, want) in [
            ("username=a\n", "both required"),
            ("username=a\npassword=\n", "line 2: password must be"),
            ("username=a\npassword=b\nusername_in=c\n", "go together"),
            ("user=a\n", "line 1: unknown key"),
            ("username=a\nusername=b\n", "given twice"),
            ("password\n", "line 1 is not key=value"),
        ] {
            let e = parse_credentials(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
        let e = parse_credentials("username=a\npassword=sec\u{7}ret\n")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("sec"), "{e}");
    }
}
