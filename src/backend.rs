//! One backend directory in xenstore: reading its nodes, writing results, reporting.
//!
//! The result contract (interface doc §1.2, §4.1): libxl looks only at the exit status and,
//! on failure, at `hotplug-error`. So a failure writes `hotplug-error` first, then
//! `hotplug-status` (`error`, or `busy` for a sharing conflict), and exits 1; a success
//! writes the device nodes and then `hotplug-status=connected`, which is always the last
//! write of a successful run.

use std::fmt;

use anyhow::{Result, anyhow};

use crate::devnum::DevNum;
use crate::invocation::BackendPath;
use crate::log;
use crate::xs::Store;

/// A refusal because the device is in use, or a read-only file was asked read-write:
/// reported as `hotplug-status=busy` (upstream's `ebusy`).
#[derive(Debug)]
pub struct Busy(pub String);

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Busy {}

pub fn busy(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Busy(msg.into()))
}

/// Debian's oxenstored refuses values over 2048 bytes (`quota-maxsize`); keep the error
/// well under that so it is never lost to E2BIG.
const MAX_ERROR_LEN: usize = 1500;

pub struct Backend<'a> {
    pub store: &'a dyn Store,
    pub path: BackendPath,
}

impl<'a> Backend<'a> {
    pub fn new(store: &'a dyn Store, path: BackendPath) -> Self {
        Backend { store, path }
    }

    pub fn read(&self, name: &str) -> Result<Option<String>> {
        self.store.read(&self.path.node(name))
    }

    /// A node that must exist and be non-empty (upstream `xenstore_read` semantics).
    pub fn require(&self, name: &str) -> Result<String> {
        match self.read(name)? {
            Some(v) if !v.is_empty() => Ok(v),
            Some(_) => Err(anyhow!("backend node {} is empty", self.path.node(name))),
            None => Err(anyhow!("backend node {} is missing", self.path.node(name))),
        }
    }

    pub fn write(&self, name: &str, value: &str) -> Result<()> {
        let path = self.path.node(name);
        log::debug(&format!("Writing {path} {value} to xenstore."));
        self.store.write(&path, value)
    }

    /// Publishes the device (upstream `write_dev`): `node` for devices we created,
    /// `physical-device-path`, `diskseq` before `physical-device` (which blkback acts
    /// on), and `hotplug-status=connected` last.
    pub fn write_dev(
        &self,
        node: Option<&str>,
        path: &str,
        dev: DevNum,
        seq: Option<u64>,
    ) -> Result<()> {
        if let Some(n) = node {
            self.write("node", n)?;
        }
        self.write("physical-device-path", path)?;
        if let Some(s) = seq {
            self.write("diskseq", &format!("{s:x}"))?;
        }
        self.write("physical-device", &crate::os::format_physical_device(dev))?;
        self.report_success()
    }

    pub fn report_success(&self) -> Result<()> {
        self.write("hotplug-status", "connected")
    }

    /// Logs the failure and writes `hotplug-error` then `hotplug-status`. Failing to write
    /// them is logged too; the exit status still says failure.
    pub fn report_failure(&self, err: &anyhow::Error) {
        let (status, text) = describe(err);
        log::err(&text);
        let text = truncate(&text, MAX_ERROR_LEN);
        if let Err(e) = self
            .write("hotplug-error", &text)
            .and_then(|()| self.write("hotplug-status", status))
        {
            log::err(&format!("could not report the failure in xenstore: {e:#}"));
        }
    }
}

/// The `hotplug-status` value and the message for a failure.
pub fn describe(err: &anyhow::Error) -> (&'static str, String) {
    match err.downcast_ref::<Busy>() {
        Some(b) => ("busy", b.0.clone()),
        None => ("error", format!("{err:#}")),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_and_error_are_told_apart() {
        let (s, m) = describe(&busy("Device /dev/loop0 is mounted"));
        assert_eq!((s, m.as_str()), ("busy", "Device /dev/loop0 is mounted"));
        let e = anyhow!("root cause").context("cannot open /x");
        let (s, m) = describe(&e);
        assert_eq!((s, m.as_str()), ("error", "cannot open /x: root cause"));
    }

    #[test]
    fn long_errors_are_cut_on_a_char_boundary() {
        let long = "é".repeat(2000);
        let t = truncate(&long, MAX_ERROR_LEN);
        assert!(t.len() <= MAX_ERROR_LEN + 3);
        assert!(t.ends_with("..."));
        assert_eq!(truncate("short", 10), "short");
    }
}
