//! `block-nbd`: its `params`, the `nbd-client` (3.24) command lines, and the sysfs files
//! of `/dev/nbdN`.
//!
//! `params`, optionally behind the legacy `nbd:` prefix:
//! * `<host> <port>`: the historical form (`nbd:134.100.233.115 20004`);
//! * `<host>:<port>`, `[<ipv6>]:<port>`, or `<host>` alone (port 10809);
//! * `nbd://<host>[:<port>][/<export>]` (NBD URI; the export is percent-decoded);
//! * `nbd+unix:///<export>?socket=<absolute path>`.
//!
//! TLS URIs (`nbds://`, `nbds+unix://`) are refused: `nbd-client` needs certificate files
//! that `params` cannot name safely.

use std::fmt;
use std::net::Ipv6Addr;

use crate::applet::parse::{ParseError, fail, shown};

pub const DEFAULT_PORT: u16 = 10809;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Server {
    Tcp { host: String, port: u16 },
    Unix { socket: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub server: Server,
    /// The export name; `None` is the server's default export.
    pub export: Option<String>,
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.server {
            Server::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}")?,
            Server::Tcp { host, port } => write!(f, "{host}:{port}")?,
            Server::Unix { socket } => write!(f, "unix:{socket}")?,
        }
        if let Some(e) = &self.export {
            write!(f, " export {e:?}")?;
        }
        Ok(())
    }
}

const USAGE: &str = "expected \"<host> <port>\", <host>:<port>, nbd://<host>[:<port>]/<export> \
                     or nbd+unix:///<export>?socket=<path>";

pub fn parse_params(raw: &str) -> Result<Params, ParseError> {
    // `nbd:` is the legacy prefix, unless it begins an `nbd://` URI.
    let s = if raw.starts_with("nbd://") {
        raw
    } else {
        crate::applet::parse::strip_legacy_prefix(raw, "nbd")
    };
    if s.is_empty() {
        return fail(format!("params is empty: {USAGE}"));
    }
    if let Some(rest) = s
        .strip_prefix("nbd://")
        .or_else(|| s.strip_prefix("nbd+tcp://"))
    {
        return parse_tcp_uri(rest);
    }
    if let Some(rest) = s.strip_prefix("nbd+unix://") {
        return parse_unix_uri(rest);
    }
    if s.starts_with("nbds://") || s.starts_with("nbds+") {
        return fail(format!(
            "params {}: TLS NBD URIs are not supported",
            shown(s)
        ));
    }
    if s.contains("://") {
        return fail(format!("params {}: unknown URI scheme: {USAGE}", shown(s)));
    }
    let words: Vec<&str> = s.split_whitespace().collect();
    let (host, port) = match words[..] {
        [host, port] => (
            host,
            parse_port(port)
                .ok_or_else(|| format!("params port {} is not a TCP port", shown(port)))?,
        ),
        [hp] => split_host_port(hp)?,
        _ => return fail(format!("params {} is not understood: {USAGE}", shown(s))),
    };
    Ok(Params {
        server: Server::Tcp {
            host: check_host(host)?,
            port,
        },
        export: None,
    })
}

fn split_host_port(s: &str) -> Result<(&str, u16), ParseError> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("params host {}: unclosed [", shown(s)))?;
        let port = match after {
            "" => DEFAULT_PORT,
            p => p
                .strip_prefix(':')
                .and_then(parse_port)
                .ok_or_else(|| format!("params port {} is not a TCP port", shown(after)))?,
        };
        return Ok((h, port));
    }
    if s.parse::<Ipv6Addr>().is_ok() {
        return Ok((s, DEFAULT_PORT));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Ok((
            h,
            parse_port(p).ok_or_else(|| format!("params port {} is not a TCP port", shown(p)))?,
        )),
        None => Ok((s, DEFAULT_PORT)),
    }
}

fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|p| *p != 0)
}

/// A host name, IPv4 or IPv6 address; never something `nbd-client` could take for an
/// option or a path.
fn check_host(h: &str) -> Result<String, ParseError> {
    let ok = if h.parse::<Ipv6Addr>().is_ok() {
        true
    } else {
        !h.is_empty()
            && h.len() <= 253
            && !h.starts_with(['-', '.'])
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
    };
    if ok {
        Ok(h.to_string())
    } else {
        fail(format!(
            "params host {} is not a host name or address",
            shown(h)
        ))
    }
}

fn parse_tcp_uri(rest: &str) -> Result<Params, ParseError> {
    let (authority, path, query) = split_uri(rest);
    if let Some(q) = query {
        return fail(format!(
            "params: NBD URI query {} is not supported over TCP",
            shown(q)
        ));
    }
    let (host, port) = if authority.is_empty() {
        ("localhost", DEFAULT_PORT)
    } else {
        split_host_port(authority)?
    };
    Ok(Params {
        server: Server::Tcp {
            host: check_host(host)?,
            port,
        },
        export: export_of(path)?,
    })
}

fn parse_unix_uri(rest: &str) -> Result<Params, ParseError> {
    let (authority, path, query) = split_uri(rest);
    if !authority.is_empty() {
        return fail(format!(
            "params: nbd+unix URIs have no host ({}): nbd+unix:///<export>?socket=<path>",
            shown(authority)
        ));
    }
    let mut socket = None;
    for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some(("socket", v)) if socket.is_none() => socket = Some(percent_decode(v)?),
            Some(("socket", _)) => return fail("params: socket= is given twice"),
            _ => {
                return fail(format!(
                    "params: NBD URI query {} is not supported (only socket=)",
                    shown(kv)
                ));
            }
        }
    }
    let socket = socket.ok_or_else(|| {
        "params: nbd+unix URI without socket=<path>: nbd+unix:///<export>?socket=<path>".to_string()
    })?;
    if !socket.starts_with('/') || socket.contains(['\0', '\n']) {
        return fail(format!(
            "params socket {} must be an absolute path",
            shown(&socket)
        ));
    }
    Ok(Params {
        server: Server::Unix { socket },
        export: export_of(path)?,
    })
}

/// `authority`, `path` (after the authority's `/`), `query`.
fn split_uri(rest: &str) -> (&str, &str, Option<&str>) {
    let (before_q, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let before_q = before_q.split('#').next().unwrap_or(before_q);
    match before_q.split_once('/') {
        Some((a, p)) => (a, p, query),
        None => (before_q, "", query),
    }
}

fn export_of(path: &str) -> Result<Option<String>, ParseError> {
    if path.is_empty() {
        return Ok(None);
    }
    let e = percent_decode(path)?;
    if e.len() > 4096 || e.chars().any(char::is_control) {
        return fail(format!(
            "params export {} must be at most 4096 bytes without control characters",
            shown(&e)
        ));
    }
    Ok(Some(e))
}

fn percent_decode(s: &str) -> Result<String, ParseError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("params: bad percent escape in {}", shown(s)))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| format!("params: {} is not UTF-8 once decoded", shown(s)).into())
}

/// `nbd-client` arguments to connect `device` (3.24 syntax:
/// `nbd-client [-N name] [-R] host [port] nbd_device`, `-u` for a unix socket).
pub fn connect_args(p: &Params, device: &str, read_only: bool) -> Vec<String> {
    let mut a = Vec::new();
    if let Server::Unix { .. } = p.server {
        a.push("-u".to_string());
    }
    if let Some(e) = &p.export {
        a.push("-N".to_string());
        a.push(e.clone());
    }
    if read_only {
        a.push("-R".to_string());
    }
    match &p.server {
        Server::Tcp { host, port } => {
            a.push(host.clone());
            a.push(port.to_string());
        }
        Server::Unix { socket } => a.push(socket.clone()),
    }
    a.push(device.to_string());
    a
}

/// `nbd-client -d <device>`.
pub fn disconnect_args(device: &str) -> Vec<String> {
    vec!["-d".to_string(), device.to_string()]
}

/// The index of a `/sys/block` entry named `nbd<N>`.
pub fn device_index(name: &str) -> Option<u32> {
    let n = name.strip_prefix("nbd")?;
    if n.is_empty() || (n.len() > 1 && n.starts_with('0')) || !n.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    n.parse().ok()
}

/// `/sys/block/nbdN/pid`: the pid of the task serving the connection (only present while
/// connected).
pub fn parse_pid(text: &str) -> Option<u32> {
    let t = text.trim_end_matches('\n');
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok().filter(|p| *p > 0)
}

/// `/sys/block/nbdN/size`: 512-byte sectors.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim_end_matches('\n');
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16, export: Option<&str>) -> Params {
        Params {
            server: Server::Tcp {
                host: host.into(),
                port,
            },
            export: export.map(Into::into),
        }
    }

    #[test]
    fn every_form() {
        let table: &[(&str, Params)] = &[
            ("134.100.233.115 20004", tcp("134.100.233.115", 20004, None)),
            (
                "nbd:134.100.233.115 20004",
                tcp("134.100.233.115", 20004, None),
            ),
            (
                "nbd-server.example:10810",
                tcp("nbd-server.example", 10810, None),
            ),
            ("nbd:localhost:10810", tcp("localhost", 10810, None)),
            ("localhost", tcp("localhost", 10809, None)),
            ("[::1]:10810", tcp("::1", 10810, None)),
            ("::1", tcp("::1", 10809, None)),
            (
                "nbd://10.0.0.1/disk1",
                tcp("10.0.0.1", 10809, Some("disk1")),
            ),
            (
                "nbd://10.0.0.1:10900/disk%201",
                tcp("10.0.0.1", 10900, Some("disk 1")),
            ),
            (
                "nbd://[fd00::1]:10900/a/b",
                tcp("fd00::1", 10900, Some("a/b")),
            ),
            ("nbd://host", tcp("host", 10809, None)),
            ("nbd://host/", tcp("host", 10809, None)),
            ("nbd:nbd://host/x", tcp("host", 10809, Some("x"))),
            ("nbd+tcp://host/x", tcp("host", 10809, Some("x"))),
            ("nbd:///x", tcp("localhost", 10809, Some("x"))),
            (
                "nbd+unix:///disk1?socket=/run/nbd.sock",
                Params {
                    server: Server::Unix {
                        socket: "/run/nbd.sock".into(),
                    },
                    export: Some("disk1".into()),
                },
            ),
            (
                "nbd+unix://?socket=/run/a%20b.sock",
                Params {
                    server: Server::Unix {
                        socket: "/run/a b.sock".into(),
                    },
                    export: None,
                },
            ),
        ];
        for (s, want) in table {
            assert_eq!(&parse_params(s).unwrap(), want, "{s}");
        }
    }

    #[test]
    fn bad_params() {
        for (s, want) in [
            ("", "params is empty"),
            ("nbd:", "params is empty"),
            ("a b c", "is not understood"),
            ("host port", "params port \"port\""),
            ("host:0", "params port \"0\""),
            ("host:99999", "params port"),
            ("-oops 10809", "params host \"-oops\""),
            ("/dev/sda 10809", "params host"),
            ("ho st:1", "params port \"st:1\""),
            ("nbds://host/x", "TLS"),
            ("http://host/x", "unknown URI scheme"),
            ("nbd://host/x?tls=on", "query"),
            ("nbd://-x/e", "params host"),
            ("nbd://host/%zz", "percent escape"),
            ("nbd://host/%0a", "control characters"),
            ("nbd+unix:///x", "without socket="),
            ("nbd+unix:///x?socket=rel.sock", "absolute path"),
            ("nbd+unix://host/x?socket=/s", "have no host"),
            ("nbd+unix:///x?socket=/a&socket=/b", "twice"),
            ("nbd+unix:///x?socket=/a&foo=1", "only socket="),
            ("[::1:10809", "unclosed"),
        ] {
            let e = parse_params(s).unwrap_err().to_string();
            assert!(e.contains(want), "{s:?}: {e}");
        }
    }

    #[test]
    fn command_lines() {
        let p = tcp("10.0.0.1", 10809, Some("disk1"));
        assert_eq!(
            connect_args(&p, "/dev/nbd3", true),
            ["-N", "disk1", "-R", "10.0.0.1", "10809", "/dev/nbd3"]
        );
        assert_eq!(
            connect_args(&tcp("h", 20004, None), "/dev/nbd0", false),
            ["h", "20004", "/dev/nbd0"]
        );
        let u = parse_params("nbd+unix:///e?socket=/s").unwrap();
        assert_eq!(
            connect_args(&u, "/dev/nbd1", false),
            ["-u", "-N", "e", "/s", "/dev/nbd1"]
        );
        assert_eq!(disconnect_args("/dev/nbd1"), ["-d", "/dev/nbd1"]);
        assert_eq!(u.to_string(), "unix:/s export \"e\"");
        assert_eq!(tcp("::1", 1, None).to_string(), "[::1]:1");
    }

    #[test]
    fn sysfs() {
        assert_eq!(device_index("nbd0"), Some(0));
        assert_eq!(device_index("nbd15"), Some(15));
        for bad in ["nbd", "nbd01", "nbd1p1", "loop0", "nbdx"] {
            assert_eq!(device_index(bad), None, "{bad}");
        }
        assert_eq!(parse_pid("4242\n"), Some(4242));
        assert_eq!(parse_pid("0\n"), None);
        assert_eq!(parse_pid(""), None);
        assert_eq!(parse_size("2097152\n"), Some(2097152));
        assert_eq!(parse_size("0\n"), Some(0));
        assert_eq!(parse_size("x"), None);
    }
}
