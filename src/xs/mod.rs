//! Xenstore access, behind a trait of our own so the logic does not depend on one client.
//!
//! Production uses xenstore-rs for every request: the unix socket named by
//! `XENSTORED_PATH` (default `/run/xenstored/socket`), else the xenbus device. A missing
//! node is `None`, never an error; every other failure is an error that names the path.
//! Batches of reads (the sharing check's scan of every other backend) additionally go
//! through `pipeline`, our own connections to the same socket that keep many requests in
//! flight, because xenstore-rs sends one at a time; on the device they go one at a time.

#[cfg(test)]
pub mod mem;
mod pipeline;
pub mod txn;

use std::cell::{OnceCell, RefCell};
use std::fmt;
use std::io;
use std::time::Instant;

use xenstore_rs::Xs;

pub use pipeline::Pipeline;
pub use txn::{Gone, Report, WaitError};

/// What one xenstore request was, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    List,
    Write,
    Remove,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Read => "read xenstore node",
            Op::List => "list xenstore directory",
            Op::Write => "write xenstore node",
            Op::Remove => "remove xenstore node",
        })
    }
}

/// The daemon's `XS_ERROR` answer: the errno name it sent (`ENOENT`, `E2BIG`, ...).
/// Carried inside the `io::Error`s of our own wire code, so that it is classified by
/// type; xenstore-rs only gives its text, "XS interface error E2BIG", which
/// `StoreError::new` reads in that one place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonErrno(pub String);

impl fmt::Display for DaemonErrno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "XS interface error {}", self.0)
    }
}

impl std::error::Error for DaemonErrno {}

/// A failed xenstore request. A missing node is never an error (`Ok(None)`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The daemon cannot return a listing whole (C xenstored and the xenbus ring answer
    /// E2BIG past 4096 bytes): callers must never take it for an empty one.
    #[error(
        "cannot list xenstore directory {path}: the daemon says the listing is too big for \
         one reply (E2BIG), and skipping entries could hand a disk to two guests"
    )]
    TooBig { path: String },
    /// EAGAIN: a transaction conflict or a busy daemon; the request may be retried.
    #[error("cannot {op} {path}")]
    Again {
        op: Op,
        path: String,
        #[source]
        source: io::Error,
    },
    /// EACCES (or EPERM, EROFS): the daemon's permissions refuse us.
    #[error("cannot {op} {path}")]
    Denied {
        op: Op,
        path: String,
        #[source]
        source: io::Error,
    },
    /// A value that is not UTF-8 text.
    #[error("xenstore node {path} is not valid UTF-8 text")]
    NotText { path: String },
    /// Anything else: the connection, the protocol, another errno.
    #[error("cannot {op} {path}")]
    Io {
        op: Op,
        path: String,
        #[source]
        source: io::Error,
    },
}

/// The errno name a client error carries, if the daemon sent one.
fn errno_name(e: &io::Error) -> Option<String> {
    if let Some(d) = e.get_ref().and_then(|r| r.downcast_ref::<DaemonErrno>()) {
        return Some(d.0.clone());
    }
    // xenstore-rs: `io::Error::new(kind, format!("XS interface error {name}"))`.
    e.to_string()
        .strip_prefix("XS interface error ")
        .map(str::to_string)
}

impl StoreError {
    /// Classifies a failed request `op` on `path`.
    pub fn new(op: Op, path: &str, source: io::Error) -> StoreError {
        let path = path.to_string();
        match errno_name(&source).as_deref() {
            Some("E2BIG") if op == Op::List => StoreError::TooBig { path },
            Some("EAGAIN") => StoreError::Again { op, path, source },
            Some("EACCES" | "EPERM" | "EROFS") => StoreError::Denied { op, path, source },
            _ => StoreError::Io { op, path, source },
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub trait Store {
    /// The value of a node, `None` when it does not exist.
    fn read(&self, path: &str) -> Result<Option<String>>;
    /// Writes a node, creating missing parents.
    fn write(&self, path: &str, value: &str) -> Result<()>;
    /// The children of a node, `None` when it does not exist. A listing that the daemon
    /// cannot return whole is an error: callers must never mistake it for an empty one.
    fn list(&self, path: &str) -> Result<Option<Vec<String>>>;
    /// Removes a node and its children; a missing node is not an error.
    fn rm(&self, path: &str) -> Result<()>;

    /// `read` of each path, results in the order of `paths`. The requests may be sent
    /// together and served in any order.
    fn read_many(&self, paths: &[String]) -> Vec<Result<Option<String>>> {
        paths.iter().map(|p| self.read(p)).collect()
    }

    /// `list` of each path, results in the order of `paths`, as `read_many`.
    fn list_many(&self, paths: &[String]) -> Vec<Result<Option<Vec<String>>>> {
        paths.iter().map(|p| self.list(p)).collect()
    }

    /// Writes `nodes` (names relative to `dir`, in order) in one transaction, only if
    /// `dir` still exists, retried on `EAGAIN` (`txn::XsTxn::report_into_existing`):
    /// every node lands or none does, and a removed backend directory is never recreated
    /// (`WRITE` creates missing parents; issue 11 points 3 and 4). `Vanished`: nothing
    /// was written. Errors: the daemon failed, or conflicts did not stop.
    fn write_into_existing(&self, dir: &str, nodes: &[(&str, &str)]) -> anyhow::Result<Report>;

    /// Waits on a xenstore watch, until `deadline`, for `dir`'s `state` to be `wanted` or
    /// later (before Closing) and returns it (`txn::XsTxn::wait_for_state`; issue 11
    /// point 5). Errors: `Gone` (removed, or Closing (5) or later), `Deadline`, the daemon.
    fn wait_for_state(
        &self,
        dir: &str,
        wanted: u32,
        deadline: Instant,
    ) -> std::result::Result<u32, WaitError>;
}

pub struct XenStore {
    xs: xenstore_rs::unix::XsUnix,
    /// Opened at the first batch; `None` inside when the socket cannot be reached.
    pipe: OnceCell<Option<Pipeline>>,
    /// Transactions and watches: a connection of our own (`txn`), opened at first use.
    txn: RefCell<Option<txn::XsTxn>>,
}

fn socket_path() -> String {
    std::env::var("XENSTORED_PATH").unwrap_or_else(|_| "/run/xenstored/socket".to_string())
}

impl XenStore {
    /// Errors: neither the socket nor the xenbus device can be opened.
    pub fn open() -> anyhow::Result<XenStore> {
        let xs = xenstore_rs::unix::XsUnix::new().map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to xenstore (socket {}, then the xenbus device): {e}",
                socket_path()
            )
        })?;
        Ok(XenStore {
            xs,
            pipe: OnceCell::new(),
            txn: RefCell::new(None),
        })
    }

    /// Runs `f` on the transaction connection, opening it first if needed.
    fn with_txn<T>(&self, f: impl FnOnce(&txn::XsTxn) -> T) -> anyhow::Result<T> {
        let mut slot = self
            .txn
            .try_borrow_mut()
            .map_err(|_| anyhow::anyhow!("xenstore transaction connection already in use"))?;
        if slot.is_none() {
            *slot = Some(txn::XsTxn::open()?);
        }
        match slot.as_ref() {
            Some(t) => Ok(f(t)),
            None => Err(anyhow::anyhow!("no xenstore transaction connection")),
        }
    }

    fn pipe(&self) -> Option<&Pipeline> {
        self.pipe
            .get_or_init(|| Pipeline::connect(&socket_path()).ok())
            .as_ref()
    }
}

/// xenstore-rs's errors as the bytes-level results `read_result`/`list_result` take.
fn bytes(r: io::Result<Box<str>>) -> io::Result<Vec<u8>> {
    r.map(|s| s.into_string().into_bytes())
}

fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// A value as text: the payload without a trailing NUL, which must be UTF-8.
pub(crate) fn read_result(path: &str, r: io::Result<Vec<u8>>) -> Result<Option<String>> {
    match r {
        Ok(mut v) => {
            if v.last() == Some(&0) {
                v.pop();
            }
            String::from_utf8(v)
                .map(Some)
                .map_err(|_| StoreError::NotText {
                    path: path.to_string(),
                })
        }
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(StoreError::new(Op::Read, path, e)),
    }
}

/// A listing: NUL-terminated names.
pub(crate) fn list_result(path: &str, r: io::Result<Vec<u8>>) -> Result<Option<Vec<String>>> {
    match r {
        Ok(v) => v
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8(s.to_vec()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Some)
            .map_err(|_| StoreError::Io {
                op: Op::List,
                path: path.to_string(),
                source: io::Error::new(io::ErrorKind::InvalidData, "a name is not valid UTF-8"),
            }),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(StoreError::new(Op::List, path, e)),
    }
}

impl Store for XenStore {
    fn read(&self, path: &str) -> Result<Option<String>> {
        match self.xs.read(path) {
            // xenstore-rs refuses a value that is not UTF-8 with InvalidData.
            Err(e) if e.kind() == io::ErrorKind::InvalidData && errno_name(&e).is_none() => {
                Err(StoreError::NotText {
                    path: path.to_string(),
                })
            }
            r => read_result(path, bytes(r)),
        }
    }

    fn write(&self, path: &str, value: &str) -> Result<()> {
        self.xs
            .write(path, value)
            .map_err(|e| StoreError::new(Op::Write, path, e))
    }

    fn list(&self, path: &str) -> Result<Option<Vec<String>>> {
        let r = self.xs.directory(path).map(|v| {
            let mut out = Vec::new();
            for name in v {
                out.extend_from_slice(name.as_bytes());
                out.push(0);
            }
            out
        });
        list_result(path, r)
    }

    fn rm(&self, path: &str) -> Result<()> {
        match self.xs.rm(path) {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(StoreError::new(Op::Remove, path, e)),
        }
    }

    fn read_many(&self, paths: &[String]) -> Vec<Result<Option<String>>> {
        match self.pipe() {
            Some(p) => p.read_many(paths),
            None => paths.iter().map(|p| self.read(p)).collect(),
        }
    }

    fn list_many(&self, paths: &[String]) -> Vec<Result<Option<Vec<String>>>> {
        match self.pipe() {
            Some(p) => p.list_many(paths),
            None => paths.iter().map(|p| self.list(p)).collect(),
        }
    }

    fn write_into_existing(&self, dir: &str, nodes: &[(&str, &str)]) -> anyhow::Result<Report> {
        self.with_txn(|t| t.report_into_existing(dir, nodes))?
    }

    fn wait_for_state(
        &self,
        dir: &str,
        wanted: u32,
        deadline: Instant,
    ) -> std::result::Result<u32, WaitError> {
        self.with_txn(|t| t.wait_for_state(dir, wanted, deadline))
            .map_err(WaitError::Xenstore)?
    }
}
