//! One backend directory in xenstore: reading its nodes and writing its results. The
//! result itself (`hotplug-status`, `hotplug-error`) goes through the run's `Reporter`
//! (`report`), which writes it once.

use std::sync::Arc;

use anyhow::{Result, anyhow};

use crate::invocation::BackendPath;
use crate::report::Reporter;
use crate::xs::Store;

pub struct Backend<'a> {
    pub store: &'a dyn Store,
    pub path: BackendPath,
    /// Shared with the watchdog: the first report wins.
    pub reporter: Arc<Reporter>,
}

impl<'a> Backend<'a> {
    /// A backend with a reporter of its own (no watchdog).
    pub fn new(store: &'a dyn Store, path: BackendPath) -> Self {
        Backend::with_reporter(store, path, Arc::new(Reporter::new()))
    }

    pub fn with_reporter(store: &'a dyn Store, path: BackendPath, reporter: Arc<Reporter>) -> Self {
        Backend {
            store,
            path,
            reporter,
        }
    }

    pub fn read(&self, name: &str) -> Result<Option<String>> {
        Ok(self.store.read(&self.path.node(name))?)
    }

    /// Whether the backend directory still exists (libxl removes it at teardown).
    pub fn exists(&self) -> Result<bool> {
        Ok(self.store.list(&self.path.path)?.is_some())
    }

    /// A node that must exist and be non-empty (upstream `xenstore_read` semantics).
    pub fn require(&self, name: &str) -> Result<String> {
        match self.read(name)? {
            Some(v) if !v.is_empty() => Ok(v),
            Some(_) => Err(anyhow!("backend node {} is empty", self.path.node(name))),
            None => Err(anyhow!("backend node {} is missing", self.path.node(name))),
        }
    }

    /// Publishes the device (upstream `write_dev`): `node` (the node naming a device we
    /// made: `("node", "/dev/loop3")`, `("vnd", "/dev/vnd1d")`), `physical-device-path`,
    /// `diskseq`, `physical-device` (which blkback acts on; spelled by the platform,
    /// absent where the backend reads none), and `hotplug-status=connected` last, all in
    /// one xenstore transaction into the backend only if it still exists
    /// (`Reporter::publish`; issue 11 points 3 and 4).
    pub fn write_dev(
        &self,
        node: Option<(&str, &str)>,
        path: &str,
        physical_device: Option<&str>,
        seq: Option<u64>,
    ) -> Result<()> {
        let seq = seq.map(|s| format!("{s:x}"));
        let mut nodes: Vec<(&str, &str)> = Vec::with_capacity(4);
        if let Some(n) = node {
            nodes.push(n);
        }
        nodes.push(("physical-device-path", path));
        if let Some(s) = &seq {
            nodes.push(("diskseq", s));
        }
        if let Some(pd) = physical_device {
            nodes.push(("physical-device", pd));
        }
        self.reporter.publish(self.store, &self.path, &nodes)
    }

    /// `hotplug-status=connected`, through the reporter.
    pub fn report_success(&self) -> Result<()> {
        self.reporter.success(self.store, &self.path)
    }

    /// `hotplug-error` then `hotplug-status`, through the reporter.
    pub fn report_failure(&self, err: &anyhow::Error) {
        self.reporter.failure(self.store, &self.path, err);
    }
}
