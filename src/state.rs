//! What `remove` needs, kept outside xenstore.
//!
//! The backend nodes can be gone when `remove` runs (forced teardowns, `xl` crashes), and
//! upstream then leaks the loop device. So `add` records what it attached in a small file
//! under `/var/run/xen-hotplug/xen-block-hotplug/` (`paths::record_dir`), named after the backend path, and `remove`
//! deletes it. The record is written before the loop is bound and completed after, so a
//! kill at any point leaves either no loop or a record that finds it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};

use crate::paths;

/// The fixed record directory (`paths::RECORD_DIR`); `paths::record_dir()` is where they
/// are, which tests move.
pub const STATE_DIR: &str = crate::paths::RECORD_DIR;

/// A record: ordered `key=value` lines. Values never contain newlines (checked on write).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record(pub BTreeMap<String, String>);

impl Record {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    pub fn set(&mut self, k: &str, v: impl Into<String>) -> &mut Self {
        self.0.insert(k.to_string(), v.into());
        self
    }

    pub fn require(&self, k: &str) -> Result<&str> {
        self.get(k).ok_or_else(|| anyhow!("record has no {k}"))
    }

    /// Refuses a record written by another personality for the same backend.
    pub fn require_kind(&self, kind: &str, backend: &str) -> Result<()> {
        match self.get("kind") {
            Some(k) if k == kind => Ok(()),
            k => Err(anyhow!(
                "the remove record of {backend} is of kind {:?}, not {kind}",
                k.unwrap_or("")
            )),
        }
    }

    pub fn parse(text: &str) -> Result<Record> {
        let mut r = Record::default();
        // Split on '\n' only: `lines()` would also eat a '\r' ending a value, and what
        // `render` wrote must read back the same (found by fuzz/state_record).
        for line in text.split('\n').filter(|l| !l.is_empty()) {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| anyhow!("malformed record line {line:?}"))?;
            r.set(k, v);
        }
        Ok(r)
    }

    pub fn render(&self) -> Result<String> {
        let mut s = String::new();
        for (k, v) in &self.0 {
            if k.contains(['=', '\n']) || v.contains('\n') {
                return Err(anyhow!("record field {k:?} cannot be stored"));
            }
            s.push_str(&format!("{k}={v}\n"));
        }
        Ok(s)
    }
}

fn path_for(key: &str) -> PathBuf {
    paths::record_dir().join(key)
}

/// Writes the record for `key` atomically (temporary file, then rename).
pub fn save(key: &str, rec: &Record) -> Result<()> {
    let dir = paths::record_dir();
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(key);
    let tmp = dir.join(format!(".{key}.{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(rec.render().map_err(io::Error::other)?.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        anyhow!(e).context(format!("cannot save remove record {}", path.display()))
    })
}

pub fn load(key: &str) -> Result<Option<Record>> {
    let path = path_for(key);
    match fs::read_to_string(&path) {
        Ok(t) => Record::parse(&t)
            .map(Some)
            .with_context(|| format!("corrupt remove record {}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

pub fn delete(key: &str) -> Result<()> {
    let path = path_for(key);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot delete {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut r = Record::default();
        r.set("node", "/dev/loop3")
            .set("rdev", "7:3")
            .set("params", "/a b=c");
        let text = r.render().unwrap();
        assert_eq!(text, "node=/dev/loop3\nparams=/a b=c\nrdev=7:3\n");
        assert_eq!(Record::parse(&text).unwrap(), r);
        assert!(Record::parse("garbage\n").is_err());
        let mut cr = Record::default();
        cr.set("params", "/srv/disk\r");
        assert_eq!(Record::parse(&cr.render().unwrap()).unwrap(), cr);
        let mut bad = Record::default();
        bad.set("params", "a\nb");
        assert!(bad.render().is_err());
    }
}
