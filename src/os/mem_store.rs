//! Test-only: a xenstore in a map, for the BSD scripts' tests on any OS.

use std::cell::RefCell;
use std::collections::BTreeMap;

use anyhow::Result;

use crate::xs::Store;

#[derive(Default)]
pub struct MemStore(pub RefCell<BTreeMap<String, String>>);

impl MemStore {
    pub fn set(&self, k: &str, v: &str) {
        self.0.borrow_mut().insert(k.to_string(), v.to_string());
    }

    pub fn get(&self, k: &str) -> Option<String> {
        self.0.borrow().get(k).cloned()
    }

    pub fn unset(&self, k: &str) {
        self.0.borrow_mut().remove(k);
    }
}

impl Store for MemStore {
    fn read(&self, path: &str) -> Result<Option<String>> {
        Ok(self.get(path))
    }

    fn write(&self, path: &str, value: &str) -> Result<()> {
        self.set(path, value);
        Ok(())
    }

    fn list(&self, path: &str) -> Result<Option<Vec<String>>> {
        let prefix = format!("{path}/");
        let mut kids: Vec<String> = self
            .0
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
        let prefix = format!("{path}/");
        self.0
            .borrow_mut()
            .retain(|k, _| k != path && !k.starts_with(&prefix));
        Ok(())
    }
}
