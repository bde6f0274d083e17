//! Test-only: a xenstore in a map, with failure injection and a log of what was read, for
//! the unit tests of the applets and the sharing check on any OS.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::time::Instant;

use crate::xs::txn::wait_over;
use crate::xs::{DaemonErrno, Gone, Op, Report, Result, Store, StoreError, WaitError};

#[derive(Default)]
pub struct MemStore {
    nodes: RefCell<BTreeMap<String, String>>,
    /// Paths whose requests fail: with the daemon's errno name, or `None` for a broken
    /// connection.
    failing: RefCell<Vec<(String, Option<String>)>>,
    /// Every path read or listed, in order.
    reads: RefCell<Vec<String>>,
    /// Changes another writer makes while `wait_for_state` waits, one per watch event:
    /// `(path, Some(value))` writes, `(path, None)` removes the subtree.
    later: RefCell<VecDeque<(String, Option<String>)>>,
    /// How many `write_into_existing` transactions were committed.
    pub transactions: RefCell<u32>,
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

    /// A change that lands while a `wait_for_state` waits (one per watch event, in order).
    pub fn later(&self, path: &str, value: Option<&str>) {
        self.later
            .borrow_mut()
            .push_back((path.to_string(), value.map(str::to_string)));
    }

    /// Whether `dir` exists: a node at it or under it.
    pub fn exists(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.nodes
            .borrow()
            .keys()
            .any(|k| k == dir || k.starts_with(&prefix))
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

    /// As the real one: every check first, then every write, so a failure writes nothing.
    fn write_into_existing(&self, dir: &str, nodes: &[(&str, &str)]) -> anyhow::Result<Report> {
        self.reads.borrow_mut().push(dir.to_string());
        self.check(Op::Read, dir)?;
        if !self.exists(dir) {
            return Ok(Report::Vanished);
        }
        let paths: Vec<String> = nodes.iter().map(|(n, _)| format!("{dir}/{n}")).collect();
        for p in &paths {
            self.check(Op::Write, p)?;
        }
        for (p, (_, v)) in paths.iter().zip(nodes) {
            self.set(p, v);
        }
        *self.transactions.borrow_mut() += 1;
        Ok(Report::Written)
    }

    /// Each wait for an event applies the next `later` change; none left is the deadline.
    fn wait_for_state(
        &self,
        dir: &str,
        wanted: u32,
        _deadline: Instant,
    ) -> std::result::Result<u32, WaitError> {
        let state = format!("{dir}/state");
        loop {
            let last = match self
                .read(&state)
                .map_err(|e| WaitError::Xenstore(e.into()))?
            {
                Some(v) => Some(v.parse::<u32>().map_err(|_| {
                    WaitError::Xenstore(anyhow::anyhow!("{state} is not a state: {v:?}"))
                })?),
                None if !self.exists(dir) => {
                    return Err(WaitError::Gone(Gone {
                        dir: dir.to_string(),
                        state: None,
                    }));
                }
                None => None,
            };
            if let Some(over) = wait_over(dir, last, wanted) {
                return over;
            }
            let Some((path, value)) = self.later.borrow_mut().pop_front() else {
                return Err(WaitError::Deadline {
                    dir: dir.to_string(),
                    wanted,
                    last,
                });
            };
            match value {
                Some(v) => self.set(&path, &v),
                None => {
                    let prefix = format!("{path}/");
                    self.nodes
                        .borrow_mut()
                        .retain(|k, _| *k != path && !k.starts_with(&prefix));
                }
            }
        }
    }
}
