//! Test-only: a platform in memory, under the rules of Linux, NetBSD or FreeBSD (their
//! `physical-device` spellings are the real ones), so that the one `block` applet and the
//! real sharing check run on any OS, fast, without root.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::marker::PhantomData;
use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};

use crate::devnum::DevNum;
use crate::mountinfo::Mount;
use crate::record::{self, Record};

use super::netbsd::vnd;
use super::{
    Attached, Attachment, Device, FileTarget, Identity, LegacyNodes, Opened, Platform, Target,
    expand,
};

/// What differs between the OSes, as far as the applet can tell.
pub trait Rules {
    const NAME: &'static str;
    const PUBLISHED: &'static str;
    const ATTACHED_NODE: &'static str;
    const ATTACHED_VERB: &'static str;
    const RECORD_KIND: &'static str;
    const REMOVES_BACKEND: bool;
    /// Files become devices (loop, vnd); otherwise they are used as is (FreeBSD).
    const ATTACHES: bool;
    fn format(dev: DevNum) -> Option<String>;
    fn parse(value: &str) -> Option<DevNum>;
}

pub struct LinuxRules;
pub struct NetBsdRules;
pub struct FreeBsdRules;

impl Rules for LinuxRules {
    const NAME: &'static str = "linux";
    const PUBLISHED: &'static str = "physical-device";
    const ATTACHED_NODE: &'static str = "node";
    const ATTACHED_VERB: &'static str = "is loopback-mounted through";
    const RECORD_KIND: &'static str = "loop";
    const REMOVES_BACKEND: bool = false;
    const ATTACHES: bool = true;
    // What platform::linux does (that module is built on Linux only).
    fn format(dev: DevNum) -> Option<String> {
        Some(dev.to_linux_hex())
    }
    fn parse(value: &str) -> Option<DevNum> {
        DevNum::parse_blkback(value)
    }
}

impl Rules for NetBsdRules {
    const NAME: &'static str = "netbsd";
    const PUBLISHED: &'static str = "physical-device";
    const ATTACHED_NODE: &'static str = "vnd";
    const ATTACHED_VERB: &'static str = "is configured on";
    const RECORD_KIND: &'static str = "vnd";
    const REMOVES_BACKEND: bool = true;
    const ATTACHES: bool = true;
    fn format(dev: DevNum) -> Option<String> {
        Some(vnd::format_physical_device(dev))
    }
    fn parse(value: &str) -> Option<DevNum> {
        vnd::parse_physical_device(value)
    }
}

impl Rules for FreeBsdRules {
    const NAME: &'static str = "freebsd";
    const PUBLISHED: &'static str = "physical-device-path";
    const ATTACHED_NODE: &'static str = "node";
    const ATTACHED_VERB: &'static str = "is used through";
    const RECORD_KIND: &'static str = "none";
    const REMOVES_BACKEND: bool = false;
    const ATTACHES: bool = false;
    fn format(_: DevNum) -> Option<String> {
        None
    }
    fn parse(_: &str) -> Option<DevNum> {
        None
    }
}

/// What a path names in the fake file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Named {
    Dev(DevNum),
    File { dev: u64, ino: u64, perm: u32 },
    Dir,
}

/// The major of the devices the fake makes from files (`/dev/made<minor>`).
pub const MADE_MAJOR: u64 = 7;

pub struct Fake<R> {
    pub paths: RefCell<BTreeMap<String, Named>>,
    pub mounts: RefCell<Vec<Mount>>,
    /// Devices related to a device (partitions, holders), beyond itself.
    pub related: RefCell<BTreeMap<DevNum, Vec<DevNum>>>,
    /// Devices made from files: device → the file's (`st_dev`, `st_ino`).
    pub made: RefCell<BTreeMap<DevNum, (u64, u64)>>,
    pub records: RefCell<BTreeMap<String, Record>>,
    pub calls: RefCell<Vec<String>>,
    /// The errno of opening a file for the attach.
    pub open_errno: Cell<Option<i32>>,
    lock_dir: PathBuf,
    _rules: PhantomData<R>,
}

impl<R: Rules> Fake<R> {
    pub fn new(tag: &str) -> Fake<R> {
        let lock_dir =
            std::env::temp_dir().join(format!("xbh-fake-{}-{tag}-{}", R::NAME, std::process::id()));
        Fake {
            paths: RefCell::default(),
            mounts: RefCell::default(),
            related: RefCell::default(),
            made: RefCell::default(),
            records: RefCell::default(),
            calls: RefCell::default(),
            open_errno: Cell::new(None),
            lock_dir,
            _rules: PhantomData,
        }
    }

    pub fn name(&self, path: &str, what: Named) {
        self.paths.borrow_mut().insert(path.to_string(), what);
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    fn call(&self, c: String) {
        self.calls.borrow_mut().push(c);
    }

    fn made_node(dev: DevNum) -> String {
        format!("/dev/made{}", dev.minor)
    }
}

impl<R> Drop for Fake<R> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.lock_dir);
    }
}

/// The record of a made device, of the rules' kind: a loop on Linux (its backing
/// `st_dev` as the minor of a `DevNum`), a vnd unit (the minor) on NetBSD.
fn record_of<R: Rules>(backend: &str, file: &FileTarget, rdev: DevNum, node: &str) -> Record {
    if R::RECORD_KIND == "vnd" {
        Record::Vnd(record::Vnd {
            backend: Some(backend.to_string()),
            params: Some(file.path.clone()),
            backing: (file.dev, file.ino),
            unit: u32::try_from(rdev.minor).unwrap_or_default(),
            node: Some(node.to_string()),
        })
    } else {
        Record::Loop(record::Loop {
            backend: Some(backend.to_string()),
            params: Some(file.path.clone()),
            backing: (DevNum::new(0, file.dev), file.ino),
            device: record::Device {
                path: node.to_string(),
                rdev,
                diskseq: None,
            },
            lease: None,
        })
    }
}

impl<R: Rules> Platform for Fake<R> {
    const PUBLISHED: &'static str = R::PUBLISHED;
    const ATTACHED_NODE: &'static str = R::ATTACHED_NODE;
    const ATTACHED_VERB: &'static str = R::ATTACHED_VERB;
    const RECORD_KIND: &'static str = R::RECORD_KIND;
    const REMOVES_BACKEND: bool = R::REMOVES_BACKEND;

    fn classify(&self, params: &str) -> Result<Target> {
        let path = expand(params);
        Ok(match self.paths.borrow().get(&path).copied() {
            None => Target::Other {
                what: format!("a path that does not exist ({path})"),
            },
            Some(Named::Dir) => Target::Other {
                what: format!("a directory ({path})"),
            },
            Some(Named::Dev(d)) => Target::Device(Device {
                path,
                ident: Identity::Dev(d),
                file_mode: None,
                handle: None,
            }),
            Some(Named::File { dev, ino, perm }) if R::ATTACHES => Target::File(FileTarget {
                path,
                dev,
                ino,
                perm,
                handle: None,
            }),
            Some(Named::File { dev, ino, perm }) => Target::Device(Device {
                path,
                ident: Identity::File {
                    fs: DevNum::new(0, dev),
                    ino,
                },
                file_mode: Some(perm),
                handle: None,
            }),
        })
    }

    fn open_for_writing(&self, dev: &Device) -> io::Result<()> {
        self.call(format!("open {} rw", dev.path));
        match self.open_errno.get() {
            Some(e) => Err(io::Error::from_raw_os_error(e)),
            None => Ok(()),
        }
    }

    fn related(&self, dev: &Device) -> Result<Vec<Identity>> {
        let mut out = vec![dev.ident];
        if let Some(more) = self.related.borrow().get(&dev.ident.dev()) {
            out.extend(more.iter().copied().map(Identity::Dev));
        }
        Ok(out)
    }

    fn related_what(&self, dev: &Device, via: DevNum) -> String {
        format!("Device {} (through the related device {via})", dev.path)
    }

    fn open_file(&self, file: &FileTarget, read_only: bool) -> io::Result<Opened> {
        self.call(format!("open {} ro={read_only}", file.path));
        match self.open_errno.get() {
            Some(e) => Err(io::Error::from_raw_os_error(e)),
            None => Ok(Opened {
                file: None,
                dev: file.dev,
                ino: file.ino,
            }),
        }
    }

    fn attached_by(&self, file: &FileTarget) -> Result<Vec<Attachment>> {
        Ok(self
            .made
            .borrow()
            .iter()
            .filter(|(_, b)| **b == (file.dev, file.ino))
            .map(|(d, _)| Attachment {
                label: format!("{} ({d})", Self::made_node(*d)),
                dev: *d,
            })
            .collect())
    }

    fn related_to_attachment(&self, dev: DevNum) -> Vec<DevNum> {
        vec![dev]
    }

    fn attach(
        &self,
        file: &FileTarget,
        _opened: Opened,
        read_only: bool,
        backend: &str,
        save: &dyn Fn(&Record) -> Result<()>,
    ) -> Result<Attached> {
        if !R::ATTACHES {
            bail!("nothing to attach");
        }
        let minor = (0..)
            .find(|m| {
                !self
                    .made
                    .borrow()
                    .contains_key(&DevNum::new(MADE_MAJOR, *m))
            })
            .unwrap_or_default();
        let rdev = DevNum::new(MADE_MAJOR, minor);
        let node = Self::made_node(rdev);
        let rec = record_of::<R>(backend, file, rdev, &node);
        save(&rec)?;
        self.call(format!("attach {node} {} ro={read_only}", file.path));
        self.made.borrow_mut().insert(rdev, (file.dev, file.ino));
        Ok(Attached {
            path: node,
            rdev,
            diskseq: None,
            handle: None,
            record: rec,
        })
    }

    fn undo_attach(&self, attached: &Attached) -> Result<()> {
        self.call(format!("undo {}", attached.path));
        self.made.borrow_mut().remove(&attached.rdev);
        Ok(())
    }

    fn detach_recorded(&self, rec: &Record) -> Result<()> {
        let (rdev, backing) = match rec {
            Record::Loop(l) => (l.device.rdev, (l.backing.0.minor, l.backing.1)),
            Record::Vnd(v) => (DevNum::new(MADE_MAJOR, u64::from(v.unit)), v.backing),
            other => return Err(anyhow!("not ours: {}", other.kind())),
        };
        if self.made.borrow().get(&rdev) == Some(&backing) {
            self.call(format!("detach {}", Self::made_node(rdev)));
            self.made.borrow_mut().remove(&rdev);
        }
        Ok(())
    }

    fn detach_legacy(&self, nodes: &LegacyNodes, file: Option<&FileTarget>) -> Result<()> {
        let Some(minor) = nodes
            .node
            .strip_prefix("/dev/made")
            .and_then(|m| m.parse().ok())
        else {
            return Ok(());
        };
        let rdev = DevNum::new(MADE_MAJOR, minor);
        let now = self.made.borrow().get(&rdev).copied();
        match (now, file) {
            (Some(b), Some(f)) if b != (f.dev, f.ino) => {}
            (Some(_), _) => {
                self.call(format!("detach {}", nodes.node));
                self.made.borrow_mut().remove(&rdev);
            }
            (None, _) => {}
        }
        Ok(())
    }

    fn format_physical_device(&self, dev: Identity) -> Option<String> {
        R::format(dev.dev())
    }

    fn parse_physical_device(&self, value: &str) -> Option<DevNum> {
        R::parse(value)
    }

    fn stat_identity(&self, path: &str) -> Option<Identity> {
        if let Some(m) = path.strip_prefix("/dev/made").and_then(|m| m.parse().ok()) {
            let d = DevNum::new(MADE_MAJOR, m);
            return self
                .made
                .borrow()
                .contains_key(&d)
                .then_some(Identity::Dev(d));
        }
        match self.paths.borrow().get(path).copied()? {
            Named::Dev(d) => Some(Identity::Dev(d)),
            Named::File { dev, ino, .. } if !R::ATTACHES => Some(Identity::File {
                fs: DevNum::new(0, dev),
                ino,
            }),
            _ => None,
        }
    }

    fn stat_params_path(&self, path: &str) -> Option<Identity> {
        match self.paths.borrow().get(path).copied()? {
            Named::Dev(d) => Some(Identity::Dev(d)),
            Named::File { dev, ino, .. } => Some(Identity::File {
                fs: DevNum::new(0, dev),
                ino,
            }),
            _ => None,
        }
    }

    fn file_identity(&self, file: &FileTarget) -> Option<Identity> {
        Some(Identity::File {
            fs: DevNum::new(0, file.dev),
            ino: file.ino,
        })
    }

    fn local_mounts(&self) -> Result<Vec<Mount>> {
        Ok(self.mounts.borrow().clone())
    }

    fn lock_dir(&self) -> PathBuf {
        self.lock_dir.clone()
    }

    fn save_record(&self, key: &str, rec: &Record) -> Result<()> {
        self.records
            .borrow_mut()
            .insert(key.to_string(), rec.clone());
        Ok(())
    }

    fn load_record(&self, key: &str) -> Result<Option<Record>> {
        Ok(self.records.borrow().get(key).cloned())
    }

    fn delete_record(&self, key: &str) -> Result<()> {
        self.records.borrow_mut().remove(key);
        Ok(())
    }
}
