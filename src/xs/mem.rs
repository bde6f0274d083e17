//! Test-only: a xenstore in a map, with failure injection and a log of what was read, for
//! the unit tests of the applets and the sharing check on any OS.

use std::cell::RefCell;
use std::collections::BTreeMap;

use std::io;

use crate::xs::{DaemonErrno, Op, Result, Store, StoreError};

#[derive(Default)]
pub struct MemStore {
    nodes: RefCell<BTreeMap<String, String>>,
    /// Paths whose requests fail: with the daemon's errno name, or `None` for a broken
    /// connection.
    failing: RefCell<Vec<(String, Option<String>)>>,
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

    /// Makes every request on `path` fail from now on, as a broken connection would.
    pub fn fail_at(&self, path: &str) {
        self.failing.borrow_mut().push((path.to_string(), None));
    }

    /// Makes the daemon answer every request on `path` with the error `errno` (`E2BIG`,
    /// `EACCES`): what the real wire code hands to `StoreError::new`.
    pub fn answer_at(&self, path: &str, errno: &str) {
        self.failing
            .borrow_mut()
            .push((path.to_string(), Some(errno.to_string())));
    }

    /// The paths read or listed so far.
    pub fn reads(&self) -> Vec<String> {
        self.reads.borrow().clone()
    }

    fn check(&self, op: Op, path: &str) -> Result<()> {
        match self.failing.borrow().iter().find(|(p, _)| p == path) {
            None => Ok(()),
            Some((_, None)) => Err(StoreError::new(
                op,
                path,
                io::Error::new(io::ErrorKind::BrokenPipe, "injected failure"),
            )),
            Some((_, Some(errno))) => Err(StoreError::new(
                op,
                path,
                io::Error::other(DaemonErrno(errno.clone())),
            )),
        }
    }
}

impl Store for MemStore {
    fn read(&self, path: &str) -> Result<Option<String>> {
        self.reads.borrow_mut().push(path.to_string());
        self.check(Op::Read, path)?;
        Ok(self.get(path))
    }

    fn write(&self, path: &str, value: &str) -> Result<()> {
        self.check(Op::Write, path)?;
        self.set(path, value);
        Ok(())
    }

    fn list(&self, path: &str) -> Result<Option<Vec<String>>> {
        self.reads.borrow_mut().push(path.to_string());
        self.check(Op::List, path)?;
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
        self.check(Op::Remove, path)?;
        let prefix = format!("{path}/");
        self.nodes
            .borrow_mut()
            .retain(|k, _| k != path && !k.starts_with(&prefix));
        Ok(())
    }
}
