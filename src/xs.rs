//! Xenstore access, behind a trait of our own so the logic does not depend on one client.
//!
//! Production uses xenstore-rs: the unix socket named by `XENSTORED_PATH` (default
//! `/run/xenstored/socket`), else the xenbus device. A missing node is `None`, never an
//! error; every other failure is an error that names the path.

use std::io;

use anyhow::{Context, Result, anyhow};
use xenstore_rs::Xs;

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
}

pub struct XenStore {
    xs: xenstore_rs::unix::XsUnix,
}

impl XenStore {
    pub fn open() -> Result<XenStore> {
        let xs = xenstore_rs::unix::XsUnix::new().map_err(|e| {
            let sock = std::env::var("XENSTORED_PATH")
                .unwrap_or_else(|_| "/run/xenstored/socket".to_string());
            anyhow!("cannot connect to xenstore (socket {sock}, then the xenbus device): {e}")
        })?;
        Ok(XenStore { xs })
    }
}

fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// xenstore-rs maps the daemon's `E2BIG` to `InvalidData` with the code in the message.
fn too_big(e: &io::Error) -> bool {
    e.to_string().contains("E2BIG")
}

impl Store for XenStore {
    fn read(&self, path: &str) -> Result<Option<String>> {
        match self.xs.read(path) {
            Ok(v) => Ok(Some(v.into_string())),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::InvalidData && !too_big(&e) => {
                Err(anyhow!("xenstore node {path} is not valid UTF-8 text"))
            }
            Err(e) => Err(e).with_context(|| format!("cannot read xenstore node {path}")),
        }
    }

    fn write(&self, path: &str, value: &str) -> Result<()> {
        self.xs
            .write(path, value)
            .with_context(|| format!("cannot write xenstore node {path}"))
    }

    fn list(&self, path: &str) -> Result<Option<Vec<String>>> {
        match self.xs.directory(path) {
            Ok(v) => Ok(Some(v.into_iter().map(|s| s.into_string()).collect())),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) if too_big(&e) => Err(anyhow!(
                "cannot list xenstore directory {path}: the daemon says the listing is too \
                 big for one reply (E2BIG), and skipping entries could hand a disk to two \
                 guests"
            )),
            Err(e) => Err(e).with_context(|| format!("cannot list xenstore directory {path}")),
        }
    }

    fn rm(&self, path: &str) -> Result<()> {
        match self.xs.rm(path) {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove xenstore node {path}")),
        }
    }
}
