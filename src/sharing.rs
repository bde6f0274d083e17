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
    mount_conflicts(cands, mounts, mode).next()
}

/// Every mount that conflicts, by the rule of `mount_conflict`.
pub fn mount_conflicts<'m>(
    cands: &[DevNum],
    mounts: &'m [Mount],
    mode: Mode,
) -> impl Iterator<Item = &'m Mount> {
    mounts
        .iter()
        .filter(move |m| cands.contains(&m.dev) && (mode.writable() || !m.read_only))
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

/// Another backend's device as the sharing check sees it, from its nodes: a `stat` of its
/// `physical-device-path` when that is a block device now, else its legacy
/// `physical-device` as blkback reads it (module docs: the first fix).
pub fn device_of(
    physical_device_path: Option<&str>,
    physical_device: Option<&str>,
) -> Option<DevNum> {
    physical_device_path
        .and_then(os::stat_block_device)
        .or_else(|| physical_device.and_then(os::parse_physical_device))
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

    /// Every conflicting holder of any of `cands`, mounts first, then guests in walk
    /// order: the same rules as `check`, without stopping at the first. Any listing or
    /// read the walk needs that fails is an error (an incomplete answer could hide one).
    pub fn holders(&self, cands: &[DevNum]) -> Result<Vec<Holder>> {
        if cands.is_empty() {
            return Ok(Vec::new());
        }
        let mounts = os::local_mounts()?;
        let mut out: Vec<Holder> = mount_conflicts(cands, &mounts, self.mode)
            .map(|m| Holder::Local {
                dev: m.dev,
                mount_point: m.mount_point.clone(),
            })
            .collect();
        out.extend(self.guests(cands, true)?);
        Ok(out)
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

    /// Upstream's walk over every other backend, in listing order, stopping at the first
    /// conflict. The nodes it needs are fetched first, in three rounds of requests that the
    /// store may pipeline (the domain directories; every `physical-device-path`; the
    /// legacy `physical-device` where the path names no block device), so the cost is the
    /// daemon's per request, not a round trip each. The walk then meets each result where
    /// the one-at-a-time walk would have read it: an error after a conflict is never seen,
    /// an error before it is returned.
    fn check_guests(&self, cands: &[DevNum]) -> Result<Option<Holder>> {
        Ok(self.guests(cands, false)?.into_iter().next())
    }

    /// The walk of `check_guests`; with `all`, it goes on past the first conflict and
    /// returns every one.
    #[allow(
        clippy::indexing_slicing,
        reason = "listings, doms and dom_dirs are parallel vectors; i enumerates listings, never longer than doms"
    )]
    fn guests(&self, cands: &[DevNum], all: bool) -> Result<Vec<Holder>> {
        let mut found = Vec::new();
        let root = &self.me.type_dir;
        let Some(doms) = self.store.list(root)? else {
            return Ok(found);
        };
        let dom_dirs: Vec<String> = doms.iter().map(|d| format!("{root}/{d}")).collect();
        let mut listings = self.store.list_many(&dom_dirs);
        // Nothing after a failed listing is looked at.
        if let Some(bad) = listings.iter().position(|l| l.is_err()) {
            listings.truncate(bad + 1);
        }
        let me_dom = self.me.frontend.to_string();
        let me_dev = self.me.devid.to_string();
        // Every other backend, in walk order: (index into doms, its path).
        let mut others: Vec<(usize, String)> = Vec::new();
        for (i, l) in listings.iter().enumerate() {
            if let Ok(Some(devs)) = l {
                for dev in devs {
                    if doms[i] == me_dom && *dev == me_dev {
                        continue;
                    }
                    others.push((i, format!("{}/{dev}", dom_dirs[i])));
                }
            }
        }
        let mut devices = self
            .devices_of(others.iter().map(|(_, be)| be.as_str()))
            .into_iter();
        let mut others = others.into_iter().peekable();

        let mut ours: Option<OurVm> = None;
        for (i, listing) in listings.into_iter().enumerate() {
            // A domain directory removed while we list is simply gone.
            if listing?.is_none() {
                continue;
            }
            while let Some((_, be)) = others.next_if(|(d, _)| *d == i) {
                let Some(d) = devices.next().transpose()?.flatten() else {
                    continue;
                };
                if !cands.contains(&d) {
                    continue;
                }
                let dom = &doms[i];
                if self.conflicts_with(dom, &be, &mut ours)? {
                    found.push(Holder::Guest {
                        dev: d,
                        domid: dom.clone(),
                        backend: be,
                    });
                    if !all {
                        return Ok(found);
                    }
                }
            }
        }
        Ok(found)
    }

    /// Whether backend `be` of domain `dom`, which uses one of our devices, conflicts with
    /// this request, by upstream's rules (its `mode` for a read-only request, `same_vm`).
    /// `ours` caches our own VM identity across calls, read only when first needed.
    pub fn conflicts_with(&self, dom: &str, be: &str, ours: &mut Option<OurVm>) -> Result<bool> {
        let other_mode = match self.mode {
            Mode::Read => {
                Mode::canonicalise_other(self.store.read(&format!("{be}/mode"))?.as_deref())
            }
            _ => Mode::Write,
        };
        if other_mode != Mode::Write && self.mode == Mode::Read {
            return Ok(false);
        }
        let ours = match ours {
            Some(o) => o,
            None => ours.insert(OurVm {
                uuid: self.frontend_uuid.clone(),
                target_vm: self.target_vm(&self.frontend_id.to_string())?,
            }),
        };
        let other_vm = self.store.read(&format!("/local/domain/{dom}/vm"))?;
        let other_target_vm = self.target_vm(dom)?;
        let same = same_vm(ours, other_vm.as_deref(), other_target_vm.as_deref());
        Ok(guest_conflicts(self.mode, other_mode, same))
    }

    /// The `vm` of the domain a (stub)domain serves, if it has a `target`.
    fn target_vm(&self, domid: &str) -> Result<Option<String>> {
        match self.store.read(&format!("/local/domain/{domid}/target"))? {
            Some(t) if !t.is_empty() => self.store.read(&format!("/local/domain/{t}/vm")),
            _ => Ok(None),
        }
    }

    /// Each other backend's device, in order: its `physical-device-path` when that is a
    /// block device now, else its legacy `physical-device` node (read only then).
    #[allow(
        clippy::indexing_slicing,
        reason = "out and bes have one entry per backend; legacy holds indices into them"
    )]
    fn devices_of<'b>(&self, bes: impl Iterator<Item = &'b str>) -> Vec<Result<Option<DevNum>>> {
        let bes: Vec<&str> = bes.collect();
        let paths: Vec<String> = bes
            .iter()
            .map(|be| format!("{be}/physical-device-path"))
            .collect();
        let mut out: Vec<Result<Option<DevNum>>> = self
            .store
            .read_many(&paths)
            .into_iter()
            .map(|r| r.map(|p| device_of(p.as_deref(), None)))
            .collect();
        let legacy: Vec<usize> = (0..bes.len())
            .filter(|&i| matches!(out[i], Ok(None)))
            .collect();
        let nodes: Vec<String> = legacy
            .iter()
            .map(|&i| format!("{}/physical-device", bes[i]))
            .collect();
        for (i, r) in legacy.into_iter().zip(self.store.read_many(&nodes)) {
            out[i] = r.map(|v| device_of(None, v.as_deref()));
        }
        out
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
        assert_eq!(mount_conflicts(&[a, b], &mounts, Mode::Write).count(), 2);
        let ro: Vec<&Mount> = mount_conflicts(&[a, b], &mounts, Mode::Read).collect();
        assert_eq!(ro, [&mounts[1]]);
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

    /// A store in a map that fails on chosen paths and records what was read.
    #[derive(Default)]
    struct Fake {
        nodes: std::collections::BTreeMap<String, String>,
        failing: Vec<String>,
        reads: std::cell::RefCell<Vec<String>>,
    }

    impl Fake {
        fn set(&mut self, k: &str, v: &str) {
            self.nodes.insert(k.into(), v.into());
        }
        fn fails(&self, path: &str) -> Result<()> {
            if self.failing.iter().any(|f| f == path) {
                anyhow::bail!("injected failure at {path}");
            }
            Ok(())
        }
    }

    impl Store for Fake {
        fn read(&self, path: &str) -> Result<Option<String>> {
            self.reads.borrow_mut().push(path.into());
            self.fails(path)?;
            Ok(self.nodes.get(path).cloned())
        }
        fn write(&self, _: &str, _: &str) -> Result<()> {
            unreachable!()
        }
        fn list(&self, path: &str) -> Result<Option<Vec<String>>> {
            self.fails(path)?;
            let prefix = format!("{path}/");
            let mut kids: Vec<String> = self
                .nodes
                .keys()
                .filter_map(|k| k.strip_prefix(&prefix))
                .map(|r| r.split('/').next().unwrap_or(r).to_string())
                .collect();
            kids.dedup();
            Ok((!kids.is_empty()).then_some(kids))
        }
        fn rm(&self, _: &str) -> Result<()> {
            unreachable!()
        }
    }

    const DEV: DevNum = DevNum::new(7, 5);

    /// Guests 1-3 and us (9): 1 uses 7:1, 2 uses our 7:5 read-write, 3 uses 7:3.
    fn guests() -> Fake {
        let mut f = Fake::default();
        for (d, pd) in [(1, "7:1"), (2, "7:5"), (3, "7:3"), (9, "7:5")] {
            f.set(&format!("backend/vbd/{d}/768/physical-device"), pd);
            f.set(&format!("backend/vbd/{d}/768/mode"), "w");
            f.set(&format!("/local/domain/{d}/vm"), &format!("/vm/{d}"));
        }
        // A path that is no block device falls back to the legacy node.
        f.set("backend/vbd/1/768/physical-device-path", "/nonexistent/xbh");
        f
    }

    fn scan(f: &Fake, mode: Mode) -> Result<Option<Holder>> {
        let me = BackendPath::parse("backend/vbd/9/768", "backend", "vbd").unwrap();
        Scan {
            store: f,
            me: &me,
            frontend_id: 9,
            frontend_uuid: "/vm/9".into(),
            mode,
        }
        .check_guests(&[DEV])
    }

    #[test]
    fn batched_walk_finds_the_first_holder_and_skips_us() {
        let f = guests();
        let h = scan(&f, Mode::Write).unwrap().unwrap();
        assert_eq!(
            h,
            Holder::Guest {
                dev: DEV,
                domid: "2".into(),
                backend: "backend/vbd/2/768".into()
            }
        );
        {
            let reads = f.reads.borrow();
            assert!(
                !reads.iter().any(|r| r.starts_with("backend/vbd/9/")),
                "{reads:?}"
            );
            // Each other backend's nodes are read once.
            let n = reads
                .iter()
                .filter(|r| *r == "backend/vbd/1/768/physical-device")
                .count();
            assert_eq!(n, 1, "{reads:?}");
        }
        // Read-only next to a writer conflicts; next to a reader it does not.
        assert!(scan(&f, Mode::Read).unwrap().is_some());
        let mut f = guests();
        f.set("backend/vbd/2/768/mode", "r");
        assert_eq!(scan(&f, Mode::Read).unwrap(), None);
        // The same VM is no conflict.
        f.set("/local/domain/2/vm", "/vm/9");
        assert_eq!(scan(&f, Mode::Write).unwrap(), None);
    }

    #[test]
    fn the_collecting_walk_returns_every_holder() {
        let mut f = guests();
        // A second holder of our device, after the first in walk order.
        f.set("backend/vbd/3/768/physical-device", "7:5");
        let me = BackendPath::parse("backend/vbd/9/768", "backend", "vbd").unwrap();
        let s = Scan {
            store: &f,
            me: &me,
            frontend_id: 9,
            frontend_uuid: "/vm/9".into(),
            mode: Mode::Write,
        };
        let all = s.guests(&[DEV], true).unwrap();
        let doms: Vec<String> = all
            .iter()
            .map(|h| match h {
                Holder::Guest { domid, .. } => domid.clone(),
                Holder::Local { .. } => unreachable!(),
            })
            .collect();
        assert_eq!(doms, ["2", "3"]);
        // The first-conflict walk still stops at the first.
        assert_eq!(s.check_guests(&[DEV]).unwrap(), all.first().cloned());
        // Every read the walk needs must succeed, even after the first holder.
        f.failing
            .push("backend/vbd/3/768/physical-device-path".into());
        let s = Scan {
            store: &f,
            me: &me,
            frontend_id: 9,
            frontend_uuid: "/vm/9".into(),
            mode: Mode::Write,
        };
        assert!(s.guests(&[DEV], true).is_err());
        assert!(s.check_guests(&[DEV]).unwrap().is_some());
    }

    #[test]
    fn device_of_prefers_a_block_device_path() {
        assert_eq!(
            device_of(Some("/nonexistent/xbh"), Some("7:3")),
            Some(DevNum::new(7, 3))
        );
        assert_eq!(device_of(None, Some(" 7:3")), Some(DevNum::new(7, 3)));
        assert_eq!(device_of(None, None), None);
        assert_eq!(
            device_of(Some("/dev/null"), None),
            None,
            "not a block device"
        );
    }

    #[test]
    fn batched_walk_meets_errors_where_the_serial_walk_would() {
        // A failure after the holder is never reached.
        for late in ["backend/vbd/3", "backend/vbd/3/768/physical-device-path"] {
            let mut f = guests();
            f.failing.push(late.into());
            assert!(scan(&f, Mode::Write).unwrap().is_some(), "{late}");
        }
        // A failure before it is the answer.
        for early in [
            "backend/vbd/1",
            "backend/vbd/1/768/physical-device-path",
            "backend/vbd/1/768/physical-device",
        ] {
            let mut f = guests();
            f.failing.push(early.into());
            let e = scan(&f, Mode::Write).unwrap_err();
            assert!(e.to_string().contains(early), "{early}: {e}");
        }
        // No domains at all, or none but us.
        assert_eq!(scan(&Fake::default(), Mode::Write).unwrap(), None);
        let mut f = Fake::default();
        f.set("backend/vbd/9/768/physical-device", "7:5");
        assert_eq!(scan(&f, Mode::Write).unwrap(), None);
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
            Err(anyhow::anyhow!(
                "cannot list xenstore directory {path}: E2BIG"
            ))
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
