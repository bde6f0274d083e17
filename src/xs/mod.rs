//! Xenstore access, behind a trait of our own so the logic does not depend on one client.
//!
//! Production uses xenstore-rs for every request: the unix socket named by
//! `XENSTORED_PATH` (default `/run/xenstored/socket`), else the xenbus device. A missing
//! node is `None`, never an error; every other failure is an error that names the path.
//! Batches of reads (the sharing check's scan of every other backend) additionally go
//! through `pipeline`, our own connections to the same socket that keep many requests in
//! flight, because xenstore-rs sends one at a time; on the device they go one at a time.

mod pipeline;
pub mod txn;

use std::cell::OnceCell;
use std::io;

use anyhow::{Context, Result, anyhow};
use xenstore_rs::Xs;

pub use pipeline::Pipeline;

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
}

pub struct XenStore {
    xs: xenstore_rs::unix::XsUnix,
    /// Opened at the first batch; `None` inside when the socket cannot be reached.
    pipe: OnceCell<Option<Pipeline>>,
}

fn socket_path() -> String {
    std::env::var("XENSTORED_PATH").unwrap_or_else(|_| "/run/xenstored/socket".to_string())
}

impl XenStore {
    pub fn open() -> Result<XenStore> {
        let xs = xenstore_rs::unix::XsUnix::new().map_err(|e| {
            anyhow!(
                "cannot connect to xenstore (socket {}, then the xenbus device): {e}",
                socket_path()
            )
        })?;
        Ok(XenStore {
            xs,
            pipe: OnceCell::new(),
        })
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

/// The daemon's `E2BIG`, with the code in the message.
fn too_big(e: &io::Error) -> bool {
    e.to_string().contains("E2BIG")
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
                .map_err(|_| anyhow!("xenstore node {path} is not valid UTF-8 text"))
        }
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read xenstore node {path}")),
    }
}

/// A listing: NUL-terminated names.
pub(crate) fn list_result(path: &str, r: io::Result<Vec<u8>>) -> Result<Option<Vec<String>>> {
    match r {
        Ok(v) => v
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8(s.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
            .map_err(|_| {
                anyhow!("cannot list xenstore directory {path}: a name is not valid UTF-8")
            }),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) if too_big(&e) => Err(anyhow!(
            "cannot list xenstore directory {path}: the daemon says the listing is too \
             big for one reply (E2BIG), and skipping entries could hand a disk to two \
             guests"
        )),
        Err(e) => Err(e).with_context(|| format!("cannot list xenstore directory {path}")),
    }
}

impl Store for XenStore {
    fn read(&self, path: &str) -> Result<Option<String>> {
        match self.xs.read(path) {
            // xenstore-rs refuses a value that is not UTF-8 with InvalidData.
            Err(e) if e.kind() == io::ErrorKind::InvalidData && !too_big(&e) => {
                Err(anyhow!("xenstore node {path} is not valid UTF-8 text"))
            }
            r => read_result(path, bytes(r)),
        }
    }

    fn write(&self, path: &str, value: &str) -> Result<()> {
        self.xs
            .write(path, value)
            .with_context(|| format!("cannot write xenstore node {path}"))
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
            Err(e) => Err(e).with_context(|| format!("cannot remove xenstore node {path}")),
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
}
