//! Xenstore transactions and watches on our own wire code, and the two backend
//! primitives built on them (issue 11, points 3, 4 and 5), which `XenStore` serves as
//! `Store::write_into_existing` (every report and publication) and
//! `Store::wait_for_state`.
//!
//! xenstore-rs's blocking client has neither transactions nor watches (it always sends
//! tx_id 0), so these requests go over a connection of our own, framed as in `pipeline`
//! (xs_wire.h: four little-endian u32 `type, req_id, tx_id, len`, then the payload). The
//! connection is the daemon's unix socket (`XENSTORED_PATH`, default
//! `/run/xenstored/socket`), else the xenbus device, in the order xenstore-rs uses; a
//! driver domain has only the device. `pipeline::Conn` cannot serve here: it is bound to a
//! unix socket and drops watch events, so this module keeps its own reader, sharing
//! `pipeline`'s constants, error mapping and reply checking.
//!
//! Rules, from xenstore.txt (docs/misc) and the daemons' behaviour:
//! * a transaction sees a snapshot; `TRANSACTION_END` with `T` commits, and fails with
//!   `EAGAIN` when something it read or wrote changed meanwhile: the whole body is run
//!   again, at most `MAX_ATTEMPTS` times;
//! * `WRITE` creates missing parents, so a write into a removed backend directory would
//!   recreate it: the primitives read the directory inside the same transaction first;
//! * a watch fires once when registered, then for every change at or below its path,
//!   including the removal of the path or of a parent.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::pipeline::{
    HEADER, REPLY_MAX, Reply, XS_DIRECTORY, XS_READ, XS_WATCH_EVENT, encode, path_payload,
    payload_of,
};
use super::{Op, StoreError, list_result, read_result};

const XS_WATCH: u32 = 4;
const XS_UNWATCH: u32 = 5;
const XS_TRANSACTION_START: u32 = 6;
const XS_TRANSACTION_END: u32 = 7;
const XS_WRITE: u32 = 11;
const XS_RM: u32 = 13;

/// Attempts of one transaction before its `EAGAIN` is reported. A conflict needs another
/// writer under the same directory between our start and commit; libxl and blkback write
/// a handful of nodes per device, so 16 losses in a row mean a runaway writer.
pub const MAX_ATTEMPTS: u32 = 16;

/// The xenbus device per OS (xenstore-rs's `XENBUS_DEVICE_PATH`, which it does not export).
pub const XENBUS_DEVICE: &str = if cfg!(target_os = "freebsd") {
    "/dev/xen/xenstore"
} else if cfg!(target_os = "netbsd") {
    "/kern/xen/xenbus"
} else {
    "/dev/xen/xenbus"
};

/// Backend states (xen/include/public/io/xenbus.h `enum xenbus_state`).
pub const STATE_INIT_WAIT: u32 = 2;
pub const STATE_CLOSING: u32 = 5;

enum Link {
    Socket(UnixStream),
    Device(File),
}

impl Link {
    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Link::Socket(s) => s.write_all(b),
            Link::Device(f) => f.write_all(b),
        }
    }

    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        loop {
            let r = match self {
                Link::Socket(s) => s.read(b),
                Link::Device(f) => f.read(b),
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    /// Waits until a read would not block, or `until` passes (`false`).
    fn readable(&self, until: Instant) -> io::Result<bool> {
        let fd = match self {
            Link::Socket(s) => s.as_fd(),
            Link::Device(f) => f.as_fd(),
        };
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            // Rounded up, so a wait never ends a little before `until` and spins.
            let ms = left.as_millis().saturating_add(1).min(i32::MAX as u128) as i32;
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            match poll(
                &mut fds,
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(0) => continue,
                Ok(_) => return Ok(true),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(io::Error::from(e)),
            }
        }
    }
}

/// One message as read from the connection.
struct Msg {
    ty: u32,
    id: u32,
    payload: Vec<u8>,
}

struct Wire {
    link: Link,
    /// Received bytes not yet parsed.
    buf: Vec<u8>,
    next_id: u32,
    /// Watch events that arrived while a reply was awaited (payload `path\0token\0`).
    events: VecDeque<Vec<u8>>,
}

fn le_word(b: &[u8], at: usize) -> Option<u32> {
    let w = b.get(at..at + 4)?;
    Some(u32::from_le_bytes([
        *w.first()?,
        *w.get(1)?,
        *w.get(2)?,
        *w.get(3)?,
    ]))
}

impl Wire {
    fn new(link: Link) -> Wire {
        Wire {
            link,
            buf: Vec::with_capacity(4096),
            next_id: 1,
            events: VecDeque::new(),
        }
    }

    fn send(&mut self, ty: u32, tx: u32, payload: &[u8]) -> io::Result<u32> {
        let mut out = Vec::with_capacity(HEADER + payload.len());
        let id = encode(&mut self.next_id, ty, tx, payload, &mut out)?;
        // One write per message: the xenbus device parses a message only once it is whole,
        // and a write of header and payload together never interleaves with another.
        self.link.write_all(&out)?;
        Ok(id)
    }

    /// The next whole message; `None` when `until` passes first.
    fn recv(&mut self, until: Option<Instant>) -> io::Result<Option<Msg>> {
        loop {
            if let (Some(ty), Some(id), Some(len)) = (
                le_word(&self.buf, 0),
                le_word(&self.buf, 4),
                le_word(&self.buf, 12),
            ) {
                let len = len as usize;
                if len > REPLY_MAX {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("xenstored sent a message of {len} bytes"),
                    ));
                }
                if let Some(p) = self.buf.get(HEADER..HEADER + len) {
                    let payload = p.to_vec();
                    self.buf.drain(..HEADER + len);
                    return Ok(Some(Msg { ty, id, payload }));
                }
            }
            if let Some(t) = until
                && !self.link.readable(t)?
            {
                return Ok(None);
            }
            let mut chunk = [0u8; 4096];
            let n = self.link.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "xenstored closed the connection",
                ));
            }
            self.buf
                .extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    }

    /// One request and its reply's payload; watch events seen meanwhile are queued.
    fn call(&mut self, ty: u32, tx: u32, payload: &[u8]) -> io::Result<Vec<u8>> {
        let id = self.send(ty, tx, payload)?;
        loop {
            let Some(m) = self.recv(None)? else { continue };
            if m.ty == XS_WATCH_EVENT {
                self.events.push_back(m.payload);
                continue;
            }
            if m.id != id {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("xenstored answered request {}, expected {id}", m.id),
                ));
            }
            return payload_of(
                ty,
                Reply {
                    ty: m.ty,
                    payload: m.payload,
                },
            );
        }
    }

    /// Waits for the next watch event; `false` when `until` passes first.
    fn event(&mut self, until: Instant) -> io::Result<bool> {
        if self.events.pop_front().is_some() {
            return Ok(true);
        }
        match self.recv(Some(until))? {
            None => Ok(false),
            Some(m) if m.ty == XS_WATCH_EVENT => Ok(true),
            // A reply nobody waits for means the stream is out of step.
            Some(m) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("xenstored sent an unexpected message of type {}", m.ty),
            )),
        }
    }
}

fn two_strings(a: &str, b: &str) -> Vec<u8> {
    let mut p = path_payload(a);
    p.extend_from_slice(b.as_bytes());
    p.push(0);
    p
}

fn is_eagain(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// What a body passed to [`XsTxn::transaction`] asks for at its end.
pub enum Finish<T> {
    /// Commit; on `EAGAIN` the body runs again.
    Commit(T),
    /// Abort (nothing the body wrote lands) and return the value.
    Abort(T),
}

/// Requests inside one transaction. Every method's error names the path.
pub struct Txn<'a> {
    wire: &'a mut Wire,
    id: u32,
    /// Set when a request got `EAGAIN`: the attempt is lost, whatever the body returns.
    conflict: bool,
}

impl Txn<'_> {
    fn call(&mut self, ty: u32, payload: &[u8]) -> io::Result<Vec<u8>> {
        let r = self.wire.call(ty, self.id, payload);
        if let Err(e) = &r {
            self.conflict |= is_eagain(e);
        }
        r
    }

    /// The value of a node, `None` when it does not exist (as [`super::Store::read`]).
    pub fn read(&mut self, path: &str) -> super::Result<Option<String>> {
        let r = self.call(XS_READ, &path_payload(path));
        read_result(path, r)
    }

    /// The children of a node, `None` when it does not exist (as [`super::Store::list`]).
    pub fn list(&mut self, path: &str) -> super::Result<Option<Vec<String>>> {
        let r = self.call(XS_DIRECTORY, &path_payload(path));
        list_result(path, r)
    }

    /// Writes a node, creating missing parents.
    pub fn write(&mut self, path: &str, value: &str) -> super::Result<()> {
        let mut p = path_payload(path);
        p.extend_from_slice(value.as_bytes());
        self.call(XS_WRITE, &p)
            .map(drop)
            .map_err(|e| StoreError::new(Op::Write, path, e))
    }

    /// Removes a node and its children; a missing node is not an error.
    pub fn rm(&mut self, path: &str) -> super::Result<()> {
        match self.call(XS_RM, &path_payload(path)) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::new(Op::Remove, path, e)),
        }
    }

    /// Writes `nodes` (names relative to `dir`) only if `dir` exists, in this
    /// transaction: the body of [`XsTxn::report_into_existing`], public so a caller can
    /// add it to a transaction of its own.
    pub fn write_into_existing(
        &mut self,
        dir: &str,
        nodes: &[(&str, &str)],
    ) -> Result<Finish<Report>> {
        for (name, _) in nodes {
            if name.is_empty() || name.contains('/') {
                return Err(anyhow!("bad backend node name {name:?} for {dir}"));
            }
        }
        if self.read(dir)?.is_none() {
            return Ok(Finish::Abort(Report::Vanished));
        }
        for (name, value) in nodes {
            self.write(&format!("{dir}/{name}"), value)?;
        }
        Ok(Finish::Commit(Report::Written))
    }
}

/// The outcome of writing into a backend directory that may have been removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Every node was written, atomically.
    Written,
    /// The directory no longer exists: nothing was written, so it was not recreated.
    Vanished,
}

/// Why a backend is no longer one to serve (issue 11 points 3 and 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gone {
    pub dir: String,
    /// `None`: the directory was removed; `Some(s)`: its state is Closing (5) or later.
    pub state: Option<u32>,
}

impl fmt::Display for Gone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.state {
            None => write!(f, "backend {} was removed", self.dir),
            Some(s) => write!(
                f,
                "backend {} is closing (state {s}): the device is being torn down",
                self.dir
            ),
        }
    }
}

impl std::error::Error for Gone {}

/// A failed [`XsTxn::wait_for_state`].
#[derive(Debug)]
pub enum WaitError {
    /// Removed, or Closing (5) or later.
    Gone(Gone),
    /// The deadline passed; `last` is the state seen last (`None`: no `state` node).
    Deadline {
        dir: String,
        wanted: u32,
        last: Option<u32>,
    },
    /// The daemon failed, or `state` is not a number.
    Xenstore(anyhow::Error),
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitError::Gone(g) => g.fmt(f),
            WaitError::Deadline { dir, wanted, last } => {
                let last = last.map_or_else(|| "none".to_string(), |s| s.to_string());
                write!(
                    f,
                    "timed out waiting for backend {dir} to reach state {wanted} (last state: {last})"
                )
            }
            WaitError::Xenstore(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for WaitError {}

static TOKENS: AtomicU32 = AtomicU32::new(0);

/// A xenstore connection of our own, for transactions and watches.
pub struct XsTxn {
    wire: RefCell<Wire>,
}

impl XsTxn {
    /// Connects to the socket named by `XENSTORED_PATH` (default
    /// `/run/xenstored/socket`), else opens [`XENBUS_DEVICE`], like xenstore-rs.
    /// Errors name both.
    pub fn open() -> Result<XsTxn> {
        let sock = super::socket_path();
        match UnixStream::connect(&sock) {
            Ok(s) => Ok(XsTxn::over(Link::Socket(s))),
            Err(se) => XsTxn::open_device(Path::new(XENBUS_DEVICE)).map_err(|de| {
                anyhow!("cannot connect to xenstore (socket {sock}: {se}; then {de:#})")
            }),
        }
    }

    /// Connects to a daemon's unix socket.
    pub fn connect(socket: &Path) -> Result<XsTxn> {
        let s = UnixStream::connect(socket)
            .with_context(|| format!("cannot connect to xenstore socket {}", socket.display()))?;
        Ok(XsTxn::over(Link::Socket(s)))
    }

    /// Opens the xenbus device (the only way to xenstore in a driver domain).
    pub fn open_device(path: &Path) -> Result<XsTxn> {
        let f = File::options()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open xenbus device {}", path.display()))?;
        Ok(XsTxn::from_device(f))
    }

    /// A connection over an already open file spoken to with plain read(2)/write(2), as
    /// the xenbus device is.
    pub fn from_device(f: File) -> XsTxn {
        XsTxn::over(Link::Device(f))
    }

    fn over(link: Link) -> XsTxn {
        XsTxn {
            wire: RefCell::new(Wire::new(link)),
        }
    }

    /// Runs `body` in a transaction until it commits, aborts, or fails without a conflict.
    /// A commit refused with `EAGAIN`, or `EAGAIN` on any request of the body, runs it
    /// again with a fresh transaction, at most [`MAX_ATTEMPTS`] times in all; the last
    /// conflict is then the error. `body` must not have effects outside xenstore that a
    /// second run would repeat.
    pub fn transaction<T>(
        &self,
        mut body: impl FnMut(&mut Txn<'_>) -> Result<Finish<T>>,
    ) -> Result<T> {
        let mut wire = self
            .wire
            .try_borrow_mut()
            .map_err(|_| anyhow!("xenstore transaction started inside another"))?;
        for attempt in 1..=MAX_ATTEMPTS {
            let id = match wire.call(XS_TRANSACTION_START, 0, b"\0") {
                Ok(p) => parse_tx_id(&p)?,
                Err(e) if is_eagain(&e) => {
                    backoff(attempt);
                    continue;
                }
                Err(e) => return Err(e).context("cannot start a xenstore transaction"),
            };
            let mut tx = Txn {
                wire: &mut wire,
                id,
                conflict: false,
            };
            let r = body(&mut tx);
            let conflict = tx.conflict;
            let commit = matches!(r, Ok(Finish::Commit(_))) && !conflict;
            let end = wire.call(XS_TRANSACTION_END, id, if commit { b"T\0" } else { b"F\0" });
            match (r, end) {
                (Ok(Finish::Commit(v)), Ok(_)) if commit => return Ok(v),
                (Ok(Finish::Abort(v)), Ok(_)) => return Ok(v),
                // The body's own failure says more than a failed abort would.
                (Err(e), _) if !conflict => return Err(e),
                (_, Err(e)) if !is_eagain(&e) => {
                    return Err(e).context("cannot end a xenstore transaction");
                }
                // A conflict: at commit, or on a request of the body.
                _ => backoff(attempt),
            }
        }
        Err(anyhow!(
            "xenstore transaction still conflicting (EAGAIN) after {MAX_ATTEMPTS} attempts"
        ))
    }

    /// Writes `nodes` (names relative to `backend_dir`, in order) in one transaction, only
    /// if `backend_dir` still exists: a removed backend is never recreated (issue 11 point
    /// 3: `WRITE` creates missing parents), and a publication (`node`,
    /// `physical-device-path`, `diskseq`, `physical-device`, `hotplug-status`; point 4) is
    /// seen whole or not at all. `Vanished` means nothing was written. Retried on `EAGAIN`
    /// as [`XsTxn::transaction`].
    pub fn report_into_existing(
        &self,
        backend_dir: &str,
        nodes: &[(&str, &str)],
    ) -> Result<Report> {
        self.transaction(|tx| tx.write_into_existing(backend_dir, nodes))
            .with_context(|| format!("cannot report into backend {backend_dir}"))
    }

    /// Waits, with a xenstore watch on `backend_dir`, until its `state` is `wanted` or a
    /// later state before Closing, and returns that state. libxl runs the script at
    /// InitWait (2), other toolstacks and udev rules may at Initialising (1) (issue 11
    /// point 5). A removed directory, or a state of Closing (5) or later, is
    /// [`WaitError::Gone`]; `deadline` passing is [`WaitError::Deadline`]. A missing
    /// `state` node in an existing directory is waited for.
    pub fn wait_for_state(
        &self,
        backend_dir: &str,
        wanted: u32,
        deadline: Instant,
    ) -> Result<u32, WaitError> {
        let mut wire = self
            .wire
            .try_borrow_mut()
            .map_err(|_| WaitError::Xenstore(anyhow!("xenstore watch inside a transaction")))?;
        let token = format!(
            "xbh-state-{}-{}",
            std::process::id(),
            TOKENS.fetch_add(1, Ordering::Relaxed)
        );
        let watch = two_strings(backend_dir, &token);
        wire.call(XS_WATCH, 0, &watch)
            .with_context(|| format!("cannot watch xenstore node {backend_dir}"))
            .map_err(WaitError::Xenstore)?;
        let r = wait_loop(&mut wire, backend_dir, wanted, deadline);
        // The connection may be used again: stop the events and drop those queued.
        let _ = wire.call(XS_UNWATCH, 0, &watch);
        wire.events.clear();
        r
    }
}

/// Whether a wait in `dir` for the backend state `wanted` is over at the state `last`
/// (`None`: no `state` node yet): `Ok` with the state at `wanted` or later before
/// Closing (5), [`WaitError::Gone`] at Closing or later (xenbus.h `XenbusStateClosing`),
/// `None` while it goes on. The one rule of `wait_for_state` and of the test store's.
pub(crate) fn wait_over(
    dir: &str,
    last: Option<u32>,
    wanted: u32,
) -> Option<Result<u32, WaitError>> {
    match last {
        Some(s) if s >= STATE_CLOSING => Some(Err(WaitError::Gone(Gone {
            dir: dir.to_string(),
            state: Some(s),
        }))),
        Some(s) if s >= wanted => Some(Ok(s)),
        _ => None,
    }
}

fn wait_loop(wire: &mut Wire, dir: &str, wanted: u32, deadline: Instant) -> Result<u32, WaitError> {
    let state_path = format!("{dir}/state");
    loop {
        let last = match read_result(
            &state_path,
            wire.call(XS_READ, 0, &path_payload(&state_path)),
        )
        .map_err(|e| WaitError::Xenstore(e.into()))?
        {
            Some(v) => Some(v.trim().parse::<u32>().map_err(|_| {
                WaitError::Xenstore(anyhow!("backend node {state_path} is not a state: {v:?}"))
            })?),
            None => {
                let d = read_result(dir, wire.call(XS_READ, 0, &path_payload(dir)))
                    .map_err(|e| WaitError::Xenstore(e.into()))?;
                if d.is_none() {
                    return Err(WaitError::Gone(Gone {
                        dir: dir.to_string(),
                        state: None,
                    }));
                }
                None
            }
        };
        if let Some(over) = wait_over(dir, last, wanted) {
            return over;
        }
        let fired = wire
            .event(deadline)
            .map_err(|e| WaitError::Xenstore(anyhow!("waiting for a xenstore watch event: {e}")))?;
        if !fired {
            return Err(WaitError::Deadline {
                dir: dir.to_string(),
                wanted,
                last,
            });
        }
    }
}

fn parse_tx_id(p: &[u8]) -> Result<u32> {
    let s = String::from_utf8_lossy(p.strip_suffix(&[0]).unwrap_or(p)).into_owned();
    s.trim()
        .parse::<u32>()
        .map_err(|_| anyhow!("xenstored answered TRANSACTION_START with {s:?}"))
}

/// A short pause before another attempt, longer each time, so two writers that keep
/// conflicting fall out of step.
fn backoff(attempt: u32) {
    let jitter = u64::from(std::process::id() % 7);
    std::thread::sleep(Duration::from_millis(u64::from(attempt) * 2 + jitter));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_ids_are_parsed_with_or_without_nul() {
        assert_eq!(parse_tx_id(b"12\0").unwrap(), 12);
        assert_eq!(parse_tx_id(b"7").unwrap(), 7);
        assert!(parse_tx_id(b"x\0").is_err());
    }

    #[test]
    fn errors_say_what_happened() {
        let g = Gone {
            dir: "backend/vbd/5/51712".into(),
            state: None,
        };
        assert_eq!(g.to_string(), "backend backend/vbd/5/51712 was removed");
        let c = WaitError::Gone(Gone {
            dir: "b".into(),
            state: Some(6),
        });
        assert!(c.to_string().contains("closing (state 6)"));
        let d = WaitError::Deadline {
            dir: "b".into(),
            wanted: 2,
            last: Some(1),
        };
        assert!(d.to_string().contains("reach state 2 (last state: 1)"));
    }

    #[test]
    fn frames_split_across_reads_are_joined_and_events_queued() {
        // A socket pair stands in for the daemon: a watch event, then the reply cut in two.
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut w = Wire::new(Link::Device(File::from(std::os::fd::OwnedFd::from(a))));
        let t = std::thread::spawn(move || {
            let mut h = [0u8; 16];
            b.read_exact(&mut h).unwrap();
            let mut p = vec![0u8; le_word(&h, 12).unwrap() as usize];
            b.read_exact(&mut p).unwrap();
            let mut out = Vec::new();
            for v in [XS_WATCH_EVENT, 0, 0, 4] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(b"p\0t\0");
            for v in [XS_READ, le_word(&h, 4).unwrap(), 0, 2] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(b"ok");
            b.write_all(&out[..25]).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            b.write_all(&out[25..]).unwrap();
            b
        });
        let r = w.call(XS_READ, 0, &path_payload("/x")).unwrap();
        assert_eq!(r, b"ok");
        assert_eq!(w.events.len(), 1);
        assert!(w.event(Instant::now()).unwrap());
        // The peer stays open: no event comes, the deadline ends the wait.
        let _peer = t.join().unwrap();
        assert!(!w.event(Instant::now() + Duration::from_millis(20)).unwrap());
    }
}
