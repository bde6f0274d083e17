//! Test-only: a xenstore in a map, with failure injection and a log of what was read, for
//! the unit tests of the applets and the sharing check on any OS.

use std::cell::RefCell;
use std::collections::BTreeMap;

use anyhow::{Result, bail};

use crate::xs::Store;

#[derive(Default)]
pub struct MemStore {
    nodes: RefCell<BTreeMap<String, String>>,
    /// Paths whose read, list or write fails.
    failing: RefCell<Vec<String>>,
    /// Every path read or listed, in order.
    reads: RefCell<Vec<String>>,
}

impl MemStore {
    pub fn set(&self, k: &str, v: &str) {
        self.nodes.borrow_mut().insert(k.to_string(), v.to_string());
    }

    pub fn get(&self, k: &str) -> Option<String> {
        self.nodes.borrow().get(k).cloned()
    }

    pub fn unset(&self, k: &str) {
        self.nodes.borrow_mut().remove(k);
    }

    /// Makes every request on `path` fail from now on.
    pub fn fail_at(&self, path: &str) {
        self.failing.borrow_mut().push(path.to_string());
    }

    /// The paths read or listed so far.
    pub fn reads(&self) -> Vec<String> {
        self.reads.borrow().clone()
    }

    fn check(&self, path: &str) -> Result<()> {
        if self.failing.borrow().iter().any(|f| f == path) {
            bail!("injected failure at {path}");
        }
        Ok(())
    }
}

impl Store for MemStore {
    fn read(&self, path: &str) -> Result<Option<String>> {
        self.reads.borrow_mut().push(path.to_string());
        self.check(path)?;
        Ok(self.get(path))
    }

    fn write(&self, path: &str, value: &str) -> Result<()> {
        self.check(path)?;
        self.set(path, value);
        Ok(())
    }

    fn list(&self, path: &str) -> Result<Option<Vec<String>>> {
        self.reads.borrow_mut().push(path.to_string());
        self.check(path)?;
        let prefix = format!("{path}/");
        let mut kids: Vec<String> = self
            .nodes
            .borrow()
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .map(|r| r.split('/').next().unwrap_or(r).to_string())
            .collect();
        kids.sort();
        kids.dedup();
        Ok((!kids.is_empty()).then_some(kids))
    }

    fn rm(&self, path: &str) -> Result<()> {
        self.check(path)?;
        let prefix = format!("{path}/");
        self.nodes
            .borrow_mut()
            .retain(|k, _| k != path && !k.starts_with(&prefix));
        Ok(())
    }
}
