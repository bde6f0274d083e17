//! Pipelined batch reads over the daemon's unix socket.
//!
//! The sharing check reads a few nodes of every other backend, so its cost is the number
//! of requests times what the daemon spends on each. xenstore-rs sends one request at a
//! time; here a window of requests is written at once and the replies read after, over up
//! to `MAX_CONNS` connections, because oxenstored serves one request per ready connection
//! per turn of its event loop (measured: BENCHMARKS.md). Reads only, so their order does not
//! matter. Only used on the socket; on the xenbus device batches go one at a time through
//! xenstore-rs.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

pub const XS_DIRECTORY: u32 = 1;
pub const XS_READ: u32 = 2;
pub(crate) const XS_WATCH_EVENT: u32 = 15;
const XS_ERROR: u32 = 16;
pub(crate) const HEADER: usize = 16;
/// What a request may carry (xs_wire.h `XENSTORE_PAYLOAD_MAX`).
pub(crate) const PAYLOAD_MAX: usize = 4096;
/// Replies may be longer: oxenstored lists a directory of 1100 children (6.6 KB) in one
/// reply. Only a length no daemon would send is refused.
pub(crate) const REPLY_MAX: usize = 16 << 20;

/// Requests in flight per connection, and connections used for one batch. Measured against
/// oxenstored 4.17: 4 connections with 32 requests each cut its cost per request about in
/// half compared with one connection (see BENCHMARKS.md).
const WINDOW: usize = 32;
const MAX_CONNS: usize = 4;
/// A batch smaller than this stays on the first connection.
const PER_EXTRA_CONN: usize = 2 * WINDOW;

/// Appends one request of type `ty` in transaction `tx` (0: none) to `out`, framed as
/// xs_wire.h's `struct xsd_sockmsg` (type, request id, tx id, length; little-endian u32s)
/// and its payload; the id is `*next_id`, which then moves on (wrapping). A payload over
/// `PAYLOAD_MAX` is an `InvalidData` error, with nothing appended and no id used.
pub(crate) fn encode(
    next_id: &mut u32,
    ty: u32,
    tx: u32,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<u32> {
    if payload.len() > PAYLOAD_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "request of {} bytes is over xenstore's {PAYLOAD_MAX}",
                payload.len()
            ),
        ));
    }
    let id = *next_id;
    *next_id = next_id.wrapping_add(1);
    for v in [ty, id, tx, payload.len() as u32] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(payload);
    Ok(id)
}

/// One connection: requests out, replies in, matched by request id.
struct Conn {
    sock: UnixStream,
    /// Received bytes not yet parsed (`buf[start..]`).
    buf: Vec<u8>,
    start: usize,
    next_id: u32,
}

/// A reply: its type (the request's, or `XS_ERROR`) and payload.
pub(crate) struct Reply {
    pub(crate) ty: u32,
    pub(crate) payload: Vec<u8>,
}

impl Conn {
    fn new(sock: UnixStream) -> Conn {
        Conn {
            sock,
            buf: Vec::with_capacity(8192),
            start: 0,
            next_id: 1,
        }
    }

    /// Appends one request to `out`, returning its id.
    fn encode(&mut self, ty: u32, payload: &[u8], out: &mut Vec<u8>) -> io::Result<u32> {
        encode(&mut self.next_id, ty, 0, payload, out)
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sock.write_all(bytes)
    }

    /// The next reply (watch events, which we never ask for, are skipped).
    #[allow(
        clippy::indexing_slicing,
        reason = "header fields are read only once avail.len() >= HEADER, the payload once avail.len() >= HEADER + len; buf[have..] was just resized to have + 8192"
    )]
    fn recv(&mut self, id: u32) -> io::Result<Reply> {
        loop {
            let avail = &self.buf[self.start..];
            if avail.len() >= HEADER {
                let word = |i: usize| {
                    u32::from_le_bytes([avail[i], avail[i + 1], avail[i + 2], avail[i + 3]])
                };
                let (ty, rid, len) = (word(0), word(4), word(12) as usize);
                if len > REPLY_MAX {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("xenstored sent a reply of {len} bytes"),
                    ));
                }
                if avail.len() >= HEADER + len {
                    let payload = avail[HEADER..HEADER + len].to_vec();
                    self.start += HEADER + len;
                    if ty == XS_WATCH_EVENT {
                        continue;
                    }
                    // A mismatch means we lost track of the replies.
                    if rid != id {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("xenstored answered request {rid}, expected {id}"),
                        ));
                    }
                    return Ok(Reply { ty, payload });
                }
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let have = self.buf.len();
            self.buf.resize(have + 8192, 0);
            let n = loop {
                match self.sock.read(&mut self.buf[have..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r,
                }
            };
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    self.buf.truncate(have);
                    return Err(e);
                }
            };
            self.buf.truncate(have + n);
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "xenstored closed the connection",
                ));
            }
        }
    }
}

/// The daemon's error reply as an `io::Error` whose message carries the errno name
/// (`ENOENT`, `E2BIG`, ...).
fn daemon_error(payload: &[u8]) -> io::Error {
    let name = String::from_utf8_lossy(payload.strip_suffix(&[0]).unwrap_or(payload)).into_owned();
    let kind = match name.as_str() {
        "ENOENT" => io::ErrorKind::NotFound,
        "EACCES" | "EPERM" | "EROFS" => io::ErrorKind::PermissionDenied,
        "EAGAIN" => io::ErrorKind::WouldBlock,
        "E2BIG" => io::ErrorKind::InvalidData,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, super::DaemonErrno(name))
}

/// A reply's payload, or the daemon's error, or a protocol error.
pub(crate) fn payload_of(ty: u32, r: Reply) -> io::Result<Vec<u8>> {
    if r.ty == ty {
        Ok(r.payload)
    } else if r.ty == XS_ERROR {
        Err(daemon_error(&r.payload))
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("xenstored answered type {} to a request of type {ty}", r.ty),
        ))
    }
}

pub(crate) fn path_payload(path: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(path.len() + 1);
    p.extend_from_slice(path.as_bytes());
    p.push(0);
    p
}

/// Connections of our own to the daemon's socket, for batches.
pub struct Pipeline {
    conns: RefCell<Vec<Conn>>,
    socket: String,
}

impl Pipeline {
    /// `read` of each path, in the order of `paths`.
    pub fn read_many(&self, paths: &[String]) -> Vec<super::Result<Option<String>>> {
        let replies = self.batch(XS_READ, paths);
        paths
            .iter()
            .zip(replies)
            .map(|(p, r)| super::read_result(p, r))
            .collect()
    }

    /// `list` of each path, in the order of `paths`.
    pub fn list_many(&self, paths: &[String]) -> Vec<super::Result<Option<Vec<String>>>> {
        let replies = self.batch(XS_DIRECTORY, paths);
        paths
            .iter()
            .zip(replies)
            .map(|(p, r)| super::list_result(p, r))
            .collect()
    }

    pub fn connect(sock: &str) -> io::Result<Pipeline> {
        let s = UnixStream::connect(sock)?;
        Ok(Pipeline {
            conns: RefCell::new(vec![Conn::new(s)]),
            socket: sock.to_string(),
        })
    }

    /// Sends one request of type `ty` per path and returns the replies in path order.
    /// On the socket, up to `WINDOW` requests are in flight on each of up to `MAX_CONNS`
    /// connections; a connection that fails fails only its own requests and is dropped.
    #[allow(
        clippy::indexing_slicing,
        reason = "out, next, flight and broken have one entry per path or per connection (n <= conns.len()); c enumerates at most n connections, i comes from next[c] < paths.len()"
    )]
    pub fn batch(&self, ty: u32, paths: &[String]) -> Vec<io::Result<Vec<u8>>> {
        let mut conns = self.conns.borrow_mut();
        let want = paths.len().div_ceil(PER_EXTRA_CONN).clamp(1, MAX_CONNS);
        while conns.len() < want {
            match UnixStream::connect(&self.socket) {
                Ok(s) => conns.push(Conn::new(s)),
                Err(_) => break,
            }
        }
        let window = WINDOW;
        let n = conns.len().min(want);
        if n == 0 {
            return paths
                .iter()
                .map(|_| Err(io::Error::other("no xenstore connection")))
                .collect();
        }
        let mut out: Vec<Option<io::Result<Vec<u8>>>> = paths.iter().map(|_| None).collect();
        // Connection c serves requests c, c + n, c + 2n, ...: `next[c]` is its next unsent
        // one, `flight[c]` those sent and not yet answered (index, request id).
        let mut next: Vec<usize> = (0..n).collect();
        let mut flight: Vec<Vec<(usize, u32)>> = vec![Vec::new(); n];
        let mut broken = vec![false; n];
        let mut bytes = Vec::new();
        loop {
            let mut busy = false;
            for (c, conn) in conns.iter_mut().enumerate().take(n) {
                // Take this connection's replies, then refill its window.
                let mut failure = None;
                for (i, id) in flight[c].drain(..) {
                    if failure.is_none() {
                        match conn.recv(id) {
                            Ok(r) => out[i] = Some(payload_of(ty, r)),
                            Err(e) => failure = Some(e),
                        }
                    }
                    if let Some(e) = &failure {
                        out[i] = Some(Err(copy_error(e)));
                    }
                }
                bytes.clear();
                while failure.is_none() && flight[c].len() < window && next[c] < paths.len() {
                    let i = next[c];
                    next[c] += n;
                    match conn.encode(ty, &path_payload(&paths[i]), &mut bytes) {
                        Ok(id) => flight[c].push((i, id)),
                        Err(e) => out[i] = Some(Err(e)),
                    }
                }
                if failure.is_none() && !flight[c].is_empty() {
                    busy = true;
                    if let Err(e) = conn.send(&bytes) {
                        failure = Some(e);
                    }
                }
                if let Some(e) = failure {
                    broken[c] = true;
                    for (i, _) in flight[c].drain(..) {
                        out[i] = Some(Err(copy_error(&e)));
                    }
                    while next[c] < paths.len() {
                        out[next[c]] = Some(Err(copy_error(&e)));
                        next[c] += n;
                    }
                }
            }
            if !busy {
                break;
            }
        }
        // Replies still owed on a broken connection would be mistaken for later ones.
        // The first connection stays: its next request reports the failure again.
        for c in (1..n).rev() {
            if broken[c] {
                conns.remove(c);
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(io::Error::other("request not sent"))))
            .collect()
    }
}

fn copy_error(e: &io::Error) -> io::Error {
    match e
        .get_ref()
        .and_then(|r| r.downcast_ref::<super::DaemonErrno>())
    {
        Some(d) => io::Error::new(e.kind(), d.clone()),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const XS_WRITE: u32 = 11;
    const XS_RM: u32 = 13;
    use std::os::unix::net::UnixListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A stand-in daemon: answers each connection's requests in order.
    /// READ `/missing` is ENOENT, `/big` 6000 bytes, `/bad` not UTF-8, `/close` hangs up;
    /// any other READ answers `v:<path>`. DIRECTORY `/huge` is E2BIG, others `a`, `b`.
    struct FakeDaemon {
        sock: String,
        conns: Arc<AtomicUsize>,
        requests: Arc<AtomicUsize>,
    }

    fn serve(mut s: UnixStream, requests: Arc<AtomicUsize>) {
        let mut h = [0u8; 16];
        while s.read_exact(&mut h).is_ok() {
            let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
            let (ty, id) = (word(0), word(4));
            let mut p = vec![0u8; word(12) as usize];
            if s.read_exact(&mut p).is_err() {
                return;
            }
            requests.fetch_add(1, Ordering::SeqCst);
            let path = String::from_utf8_lossy(p.split(|&b| b == 0).next().unwrap()).to_string();
            let (rty, body): (u32, Vec<u8>) = match (ty, path.as_str()) {
                (_, "/missing") => (XS_ERROR, b"ENOENT\0".to_vec()),
                (XS_READ, "/big") => (XS_READ, vec![b'x'; 6000]),
                (XS_READ, "/bad") => (XS_READ, vec![0xff, 0xfe]),
                (XS_READ, "/close") => return,
                (XS_READ, _) => (XS_READ, format!("v:{path}").into_bytes()),
                (XS_DIRECTORY, "/huge") => (XS_ERROR, b"E2BIG\0".to_vec()),
                (XS_DIRECTORY, _) => (XS_DIRECTORY, b"a\0b\0".to_vec()),
                (XS_WRITE, _) | (XS_RM, _) => (ty, b"OK\0".to_vec()),
                _ => (XS_ERROR, b"EINVAL\0".to_vec()),
            };
            let mut out = Vec::new();
            for v in [rty, id, 0, body.len() as u32] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&body);
            if s.write_all(&out).is_err() {
                return;
            }
        }
    }

    impl FakeDaemon {
        fn start(tag: &str) -> FakeDaemon {
            let sock = std::env::temp_dir()
                .join(format!("xbh-xs-{tag}-{}", std::process::id()))
                .to_string_lossy()
                .into_owned();
            let _ = std::fs::remove_file(&sock);
            let l = UnixListener::bind(&sock).unwrap();
            let conns = Arc::new(AtomicUsize::new(0));
            let requests = Arc::new(AtomicUsize::new(0));
            let (c, r) = (conns.clone(), requests.clone());
            std::thread::spawn(move || {
                for s in l.incoming() {
                    let Ok(s) = s else { return };
                    c.fetch_add(1, Ordering::SeqCst);
                    let r = r.clone();
                    std::thread::spawn(move || serve(s, r));
                }
            });
            FakeDaemon {
                sock,
                conns,
                requests,
            }
        }
    }

    impl Drop for FakeDaemon {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.sock);
        }
    }

    #[test]
    fn batches_keep_order_over_a_few_connections() {
        let d = FakeDaemon::start("batch");
        let xs = Pipeline::connect(&d.sock).unwrap();
        let paths: Vec<String> = (0..1000)
            .map(|i| {
                if i % 7 == 0 {
                    "/missing".to_string()
                } else {
                    format!("/n{i}")
                }
            })
            .collect();
        let got = xs.read_many(&paths);
        assert_eq!(got.len(), paths.len());
        for (p, r) in paths.iter().zip(&got) {
            let r = r.as_ref().unwrap();
            if p == "/missing" {
                assert_eq!(r, &None);
            } else {
                assert_eq!(r.as_deref(), Some(format!("v:{p}").as_str()));
            }
        }
        assert_eq!(d.conns.load(Ordering::SeqCst), MAX_CONNS);
        assert_eq!(d.requests.load(Ordering::SeqCst), 1000);
        let lists = xs.list_many(&["/x".to_string(), "/huge".into(), "/missing".into()]);
        assert_eq!(lists[0].as_ref().unwrap().as_ref().unwrap().len(), 2);
        assert!(
            matches!(&lists[1], Err(crate::xs::StoreError::TooBig { path }) if path == "/huge"),
            "{:?}",
            lists[1]
        );
        assert!(lists[2].as_ref().unwrap().is_none());
        // Small batches stay on the first connection; nothing new is opened.
        assert_eq!(xs.read_many(&["/a".to_string()]).len(), 1);
        assert_eq!(d.conns.load(Ordering::SeqCst), MAX_CONNS);
        assert!(xs.read_many(&[]).is_empty());
    }

    #[test]
    fn a_lost_connection_fails_only_its_requests() {
        let d = FakeDaemon::start("lost");
        let xs = Pipeline::connect(&d.sock).unwrap();
        let mut paths: Vec<String> = (0..200).map(|i| format!("/n{i}")).collect();
        // Index 1 goes to the second connection, which the daemon then drops.
        paths[1] = "/close".into();
        let got = xs.read_many(&paths);
        let n = got.len().div_ceil(PER_EXTRA_CONN).min(MAX_CONNS);
        for (i, r) in got.iter().enumerate() {
            if i % n == 1 {
                assert!(r.is_err(), "{i}: {r:?}");
            } else {
                assert!(r.as_ref().unwrap().is_some(), "{i}: {r:?}");
            }
        }
        // The broken connection is dropped; the store still works.
        let again = xs.read_many(&["/a".to_string()]);
        assert_eq!(again[0].as_ref().unwrap().as_deref(), Some("v:/a"));
        assert!(xs.read_many(&paths[2..]).iter().all(|r| r.is_ok()));
    }

    #[test]
    fn encode_frames_and_refuses_oversized_payloads() {
        let mut next = u32::MAX;
        let mut out = Vec::new();
        assert_eq!(
            encode(&mut next, XS_READ, 7, b"/a\0", &mut out).unwrap(),
            u32::MAX
        );
        assert_eq!(next, 0, "ids wrap");
        let words: Vec<u32> = out[..HEADER]
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(words, [XS_READ, u32::MAX, 7, 3]);
        assert_eq!(&out[HEADER..], b"/a\0");
        let big = vec![b'x'; PAYLOAD_MAX + 1];
        let e = encode(&mut next, XS_WRITE, 0, &big, &mut out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            (next, out.len()),
            (0, HEADER + 3),
            "nothing used or appended"
        );
    }
}
