//! The sharing check: may this device be handed to this guest in this mode?
//!
//! Semantics are upstream master's `check_sharing` + `same_vm` (interface doc §4.1, §4.3),
//! with two fixes:
//! * every other backend's device is taken from a `stat` of its `physical-device-path`
//!   when that is a block device, falling back to the legacy `physical-device` node, so a
//!   backend whose `physical-device` is written after the script (the 2016 libxl design)
//!   or never (tapback, qubes-style writers) is still seen;
//! * local mounts come from `/proc/self/mountinfo` device numbers, not by stat-ing
//!   `/proc/mounts` sources.
//!
//! The decision functions are pure; `Scan` gathers their inputs from xenstore and the
//! kernel, reading only what the decision needs.

use std::fmt;

use anyhow::Result;

use crate::devnum::DevNum;
use crate::invocation::BackendPath;
use crate::mode::Mode;
use crate::mountinfo::Mount;
use crate::os;
use crate::xs::Store;

/// Who holds a device in a way that conflicts with the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    Local {
        dev: DevNum,
        mount_point: String,
    },
    Guest {
        dev: DevNum,
        domid: String,
        backend: String,
    },
}

impl Holder {
    pub fn dev(&self) -> DevNum {
        match self {
            Holder::Local { dev, .. } | Holder::Guest { dev, .. } => *dev,
        }
    }
}

/// The first mount that conflicts: for a read-only request only writable mounts do, for
/// a read-write request every mount does.
pub fn mount_conflict<'m>(cands: &[DevNum], mounts: &'m [Mount], mode: Mode) -> Option<&'m Mount> {
    mounts
        .iter()
        .find(|m| cands.contains(&m.dev) && (mode.writable() || !m.read_only))
}

/// Whether another backend using one of our devices conflicts. Read-write requests
/// conflict with any other VM; read-only requests only with another VM that writes.
pub fn guest_conflicts(request: Mode, other: Mode, same_vm: bool) -> bool {
    if same_vm {
        return false;
    }
    match request {
        Mode::Write | Mode::Force => true,
        // Upstream compares the canonical mode with 'w' only: a `w!` user was told by its
        // administrator that sharing is fine.
        Mode::Read => other == Mode::Write,
    }
}

/// The VM identity of the frontend being attached (upstream `FRONTEND_UUID` and the `vm`
/// of its stubdom `target`).
#[derive(Clone, Debug)]
pub struct OurVm {
    pub uuid: String,
    pub target_vm: Option<String>,
}

/// Upstream `same_vm`: the other domain is "the same VM" when its `vm` equals ours or our
/// target's, or its target's `vm` equals ours or our target's. A vanished other domain
/// (no `vm`) counts as the same VM, by upstream design (its backend is being torn down).
pub fn same_vm(ours: &OurVm, other_vm: Option<&str>, other_target_vm: Option<&str>) -> bool {
    let othervm = other_vm.unwrap_or(&ours.uuid);
    let targetvm = ours.target_vm.as_deref();
    ours.uuid == othervm
        || targetvm == Some(othervm)
        || other_target_vm == Some(ours.uuid.as_str())
        || (targetvm.is_some() && targetvm == other_target_vm)
}

/// The `busy` message, upstream's wording plus who holds the device.
pub fn busy_message(what: &str, mode: Mode, holder: &Holder) -> String {
    let (m1, m2) = if mode.writable() {
        ("", "")
    } else {
        ("read-write ", "read-only ")
    };
    match holder {
        Holder::Guest { domid, backend, .. } => format!(
            "{what} is mounted {m1}in a guest domain (domain {domid}, {backend}),\n\
             and so cannot be mounted {m2}now."
        ),
        Holder::Local { mount_point, .. } => format!(
            "{what} is mounted {m1}in the privileged domain (at {mount_point}),\n\
             and so cannot be mounted {m2}by a guest."
        ),
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Local { dev, mount_point } => write!(f, "local {dev} at {mount_point}"),
            Holder::Guest { dev, domid, .. } => write!(f, "guest {dev} in domain {domid}"),
        }
    }
}

/// Reads what the decision needs, under the `block` lock.
pub struct Scan<'a> {
    pub store: &'a dyn Store,
    pub me: &'a BackendPath,
    pub frontend_id: u32,
    pub frontend_uuid: String,
    pub mode: Mode,
}

impl Scan<'_> {
    /// The first conflicting holder of any of `cands`, or `None` when sharing is fine.
    pub fn check(&self, cands: &[DevNum]) -> Result<Option<Holder>> {
        if cands.is_empty() {
            return Ok(None);
        }
        if let Some(h) = self.check_mounts(cands)? {
            return Ok(Some(h));
        }
        self.check_guests(cands)
    }

    fn check_mounts(&self, cands: &[DevNum]) -> Result<Option<Holder>> {
        let mounts = os::local_mounts()?;
        Ok(
            mount_conflict(cands, &mounts, self.mode).map(|m| Holder::Local {
                dev: m.dev,
                mount_point: m.mount_point.clone(),
            }),
        )
    }

    fn check_guests(&self, cands: &[DevNum]) -> Result<Option<Holder>> {
        let root = &self.me.type_dir;
        let Some(doms) = self.store.list(root)? else {
            return Ok(None);
        };
        let mut ours: Option<OurVm> = None;
        for dom in doms {
            let dom_dir = format!("{root}/{dom}");
            // A domain directory removed while we list is simply gone.
            let Some(devs) = self.store.list(&dom_dir)? else {
                continue;
            };
            for dev in devs {
                if dom == self.me.frontend.to_string() && dev == self.me.devid.to_string() {
                    continue;
                }
                let be = format!("{dom_dir}/{dev}");
                let Some(d) = self.device_of(&be)? else {
                    continue;
                };
                if !cands.contains(&d) {
                    continue;
                }
                let other_mode = match self.mode {
                    Mode::Read => {
                        Mode::canonicalise_other(self.store.read(&format!("{be}/mode"))?.as_deref())
                    }
                    _ => Mode::Write,
                };
                if other_mode != Mode::Write && self.mode == Mode::Read {
                    continue;
                }
                let ours = match ours {
                    Some(ref o) => o,
                    None => ours.insert(OurVm {
                        uuid: self.frontend_uuid.clone(),
                        target_vm: self.target_vm(&self.frontend_id.to_string())?,
                    }),
                };
                let other_vm = self.store.read(&format!("/local/domain/{dom}/vm"))?;
                let other_target_vm = self.target_vm(&dom)?;
                let same = same_vm(ours, other_vm.as_deref(), other_target_vm.as_deref());
                if guest_conflicts(self.mode, other_mode, same) {
                    return Ok(Some(Holder::Guest {
                        dev: d,
                        domid: dom,
                        backend: be,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// The `vm` of the domain a (stub)domain serves, if it has a `target`.
    fn target_vm(&self, domid: &str) -> Result<Option<String>> {
        match self.store.read(&format!("/local/domain/{domid}/target"))? {
            Some(t) if !t.is_empty() => self.store.read(&format!("/local/domain/{t}/vm")),
            _ => Ok(None),
        }
    }

    /// Another backend's device: its `physical-device-path` when that is a block device
    /// now, else its legacy `physical-device` node.
    fn device_of(&self, be: &str) -> Result<Option<DevNum>> {
        if let Some(p) = self.store.read(&format!("{be}/physical-device-path"))?
            && let Some(d) = os::stat_block_device(&p)
        {
            return Ok(Some(d));
        }
        Ok(self
            .store
            .read(&format!("{be}/physical-device"))?
            .and_then(|v| os::parse_physical_device(&v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(dev: DevNum, ro: bool) -> Mount {
        Mount {
            dev,
            mount_point: "/mnt".into(),
            source: "/dev/x".into(),
            read_only: ro,
        }
    }

    #[test]
    fn mounts() {
        let a = DevNum::new(7, 1);
        let b = DevNum::new(7, 2);
        let mounts = [m(a, true), m(b, false)];
        assert!(mount_conflict(&[a], &mounts, Mode::Write).is_some());
        assert!(mount_conflict(&[a], &mounts, Mode::Read).is_none());
        assert!(mount_conflict(&[b], &mounts, Mode::Read).is_some());
        assert!(mount_conflict(&[DevNum::new(8, 0)], &mounts, Mode::Write).is_none());
    }

    #[test]
    fn guest_rules() {
        assert!(guest_conflicts(Mode::Write, Mode::Read, false));
        assert!(guest_conflicts(Mode::Write, Mode::Write, false));
        assert!(!guest_conflicts(Mode::Write, Mode::Write, true));
        assert!(!guest_conflicts(Mode::Read, Mode::Read, false));
        assert!(guest_conflicts(Mode::Read, Mode::Write, false));
        assert!(!guest_conflicts(Mode::Read, Mode::Force, false));
        assert!(!guest_conflicts(Mode::Read, Mode::Write, true));
    }

    fn vm(uuid: &str, target: Option<&str>) -> OurVm {
        OurVm {
            uuid: uuid.into(),
            target_vm: target.map(Into::into),
        }
    }

    #[test]
    fn same_vm_as_upstream_master() {
        // Two unrelated guests without targets: different (the 4.7-4.18 bug said same).
        assert!(!same_vm(&vm("/vm/a", None), Some("/vm/b"), None));
        // Same VM.
        assert!(same_vm(&vm("/vm/a", None), Some("/vm/a"), None));
        // Other domain vanished: counts as same, by design.
        assert!(same_vm(&vm("/vm/a", None), None, None));
        // We are the stubdom of the other guest.
        assert!(same_vm(&vm("/vm/stub", Some("/vm/a")), Some("/vm/a"), None));
        // The other is the stubdom of our guest.
        assert!(same_vm(&vm("/vm/a", None), Some("/vm/stub"), Some("/vm/a")));
        // Two stubdoms of the same guest.
        assert!(same_vm(
            &vm("/vm/s1", Some("/vm/a")),
            Some("/vm/s2"),
            Some("/vm/a")
        ));
        // Stubdoms of different guests.
        assert!(!same_vm(
            &vm("/vm/s1", Some("/vm/a")),
            Some("/vm/s2"),
            Some("/vm/b")
        ));
    }

    #[test]
    fn messages_name_the_holder() {
        let g = Holder::Guest {
            dev: DevNum::new(7, 0),
            domid: "5".into(),
            backend: "backend/vbd/5/51712".into(),
        };
        let msg = busy_message("Device /dev/loop0", Mode::Write, &g);
        assert_eq!(
            msg,
            "Device /dev/loop0 is mounted in a guest domain (domain 5, backend/vbd/5/51712),\n\
             and so cannot be mounted now."
        );
        let l = Holder::Local {
            dev: DevNum::new(7, 0),
            mount_point: "/mnt/x".into(),
        };
        let msg = busy_message("Device /dev/loop0", Mode::Read, &l);
        assert_eq!(
            msg,
            "Device /dev/loop0 is mounted read-write in the privileged domain (at /mnt/x),\n\
             and so cannot be mounted read-only by a guest."
        );
    }
}

#[cfg(test)]
mod scan_tests {
    use super::*;
    use crate::invocation::BackendPath;
    use crate::xs::Store;

    /// A daemon whose backend listing cannot be returned whole (C xenstored, or the xenbus
    /// ring, answer E2BIG past 4096 bytes; Debian's oxenstored over its socket does not,
    /// so this one case is a stand-in).
    struct TooBig;

    impl Store for TooBig {
        fn read(&self, _: &str) -> Result<Option<String>> {
            Ok(None)
        }
        fn write(&self, _: &str, _: &str) -> Result<()> {
            Ok(())
        }
        fn list(&self, path: &str) -> Result<Option<Vec<String>>> {
            Err(anyhow::anyhow!("cannot list xenstore directory {path}: E2BIG"))
        }
        fn rm(&self, _: &str) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_incomplete_listing_refuses_instead_of_passing() {
        let me = BackendPath::parse("backend/vbd/1/51712", "backend", "vbd").unwrap();
        let scan = Scan {
            store: &TooBig,
            me: &me,
            frontend_id: 1,
            frontend_uuid: "/vm/a".into(),
            mode: Mode::Write,
        };
        // A device number no mount uses, so only the guest listing can decide.
        let err = scan.check(&[DevNum::new(0xfff, 0xfffff)]).unwrap_err();
        assert!(err.to_string().contains("E2BIG"), "{err}");
        // Nothing to check: no listing needed.
        assert_eq!(scan.check(&[]).unwrap(), None);
    }
}
