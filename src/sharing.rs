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
//! and, issue 11:
//! * "same VM" needs positive evidence (points 1): both `vm` nodes readable and equal,
//!   or a readable `target` link; a domain whose `vm` is missing or unreadable (EACCES in
//!   a driver domain) is another VM, and a holder whose `/local/domain/<id>` is gone is
//!   dead, no holder;
//! * every backend kind on this host is scanned (point 2), not only `XENBUS_TYPE`'s:
//!   QEMU's `qdisk` and tapback's `vbd3` open their `params` path themselves, so those
//!   holders are found by what that path names (files by `(st_dev, st_ino)`).
//!
//! The decision functions are pure; `SharingCheck` gathers their inputs from xenstore and
//! the platform, reading only what the decision needs. It is the only walk over the other
//! backends: `block` (every OS) and the storage helpers use it, and FreeBSD's path-based
//! identities come through `Platform::stat_identity` like Linux's device numbers.

use std::fmt;

use anyhow::Result;

use crate::devnum::DevNum;
use crate::invocation::BackendPath;
use crate::mode::Mode;
use crate::mountinfo::Mount;
use crate::platform::{Identity, Platform};
use crate::xs::{Store, StoreError};

/// Who holds a device in a way that conflicts with the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    Local {
        dev: DevNum,
        mount_point: String,
    },
    Guest {
        ident: Identity,
        domid: String,
        backend: String,
        /// The domains (ours, the holder's) whose VM could not be known (`vm` missing or
        /// unreadable): the conflict may be a false one, which `w!` overrides.
        unknown_vm: Vec<String>,
    },
}

impl Holder {
    /// The disk as the holder uses it: which of the candidates matched.
    pub fn ident(&self) -> Identity {
        match self {
            Holder::Local { dev, .. } => Identity::Dev(*dev),
            Holder::Guest { ident, .. } => *ident,
        }
    }

    /// The device number standing for it (for a file, its file system's).
    pub fn dev(&self) -> DevNum {
        self.ident().dev()
    }
}

/// The first mount that conflicts: for a read-only request only writable mounts do, for
/// a read-write request every mount does.
/// Only devices are mounted: a file used as is (FreeBSD) never conflicts with a mount.
pub fn mount_conflict<'m>(
    cands: &[Identity],
    mounts: &'m [Mount],
    mode: Mode,
) -> Option<&'m Mount> {
    mount_conflicts(cands, mounts, mode).next()
}

/// Every mount that conflicts, in mount table order, by the rule of `mount_conflict`
/// (`SharingCheck::holders` lists them all).
pub fn mount_conflicts<'m>(
    cands: &[Identity],
    mounts: &'m [Mount],
    mode: Mode,
) -> impl Iterator<Item = &'m Mount> {
    mounts
        .iter()
        .filter(move |m| cands.contains(&Identity::Dev(m.dev)) && (mode.writable() || !m.read_only))
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
/// of its stubdom `target`); `None` where it cannot be read.
#[derive(Clone, Debug)]
pub struct OurVm {
    pub uuid: Option<String>,
    pub target_vm: Option<String>,
}

/// Upstream master's `same_vm` cases, each needing positive evidence (issue 11 point 1):
/// the other domain is "the same VM" when its `vm` equals ours or our target's, or its
/// target's `vm` equals ours or our target's, every value compared being known. An
/// unknown value (`None`: missing, or unreadable as a guest's `vm` is in a driver domain)
/// matches nothing: upstream takes two unknowns for the same VM, which hands one disk
/// read-write to any number of guests (QubesOS/qubes-issues 4692, 6396).
pub fn same_vm(ours: &OurVm, other_vm: Option<&str>, other_target_vm: Option<&str>) -> bool {
    let known_eq =
        |a: Option<&str>, b: Option<&str>| matches!((a, b), (Some(x), Some(y)) if x == y);
    let uuid = ours.uuid.as_deref();
    let target = ours.target_vm.as_deref();
    known_eq(uuid, other_vm)
        || known_eq(target, other_vm)
        || known_eq(other_target_vm, uuid)
        || known_eq(target, other_target_vm)
}

/// Who serves another backend kind, for messages: QEMU (`qdisk`), tapback (`vbd3`),
/// blktap (`tap`, `tap2`); `None` for blkback's `vbd`.
pub fn server_of(kind: &str) -> Option<&'static str> {
    match kind {
        "qdisk" => Some("QEMU"),
        "vbd3" => Some("tapback"),
        "tap" | "tap2" => Some("blktap"),
        _ => None,
    }
}

/// The kind of a backend path `.../<kind>/<fe>/<devid>`.
fn kind_of(backend: &str) -> &str {
    backend.rsplit('/').nth(2).unwrap_or("")
}

/// The `busy` message, upstream's wording plus who holds the device: the domain, the
/// backend, who serves it when not blkback; and when a VM identity was unknown, that this
/// is why, and that `w!` overrides.
pub fn busy_message(what: &str, mode: Mode, holder: &Holder) -> String {
    let (m1, m2) = if mode.writable() {
        ("", "")
    } else {
        ("read-write ", "read-only ")
    };
    match holder {
        Holder::Guest {
            domid,
            backend,
            unknown_vm,
            ..
        } => {
            let served = server_of(kind_of(backend))
                .map(|s| format!(", served by {s}"))
                .unwrap_or_default();
            let mut msg = format!(
                "{what} is mounted {m1}in a guest domain (domain {domid}, {backend}{served}),\n\
                 and so cannot be mounted {m2}now."
            );
            if !unknown_vm.is_empty() {
                msg.push_str(&format!(
                    "\nThe VM of domain {} is unknown (its vm node is missing or not \
                     readable here, as in a driver domain), so it counts as another VM; \
                     mode w! overrides this check.",
                    unknown_vm.join(" and domain ")
                ));
            }
            msg
        }
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
            Holder::Guest { ident, domid, .. } => {
                write!(f, "guest {} in domain {domid}", ident.dev())
            }
        }
    }
}

/// The sharing check of one request, under the `block` lock: this backend (skipped in
/// the walk), its frontend's VM (for `same_vm`), the requested mode, and the platform that
/// says what other backends' nodes name and what is mounted.
pub struct SharingCheck<'a, P: Platform> {
    pub platform: &'a P,
    pub store: &'a dyn Store,
    pub me: &'a BackendPath,
    pub frontend_id: u32,
    /// The frontend's `vm` path (upstream `FRONTEND_UUID`); `None` when missing or not
    /// readable (a driver domain), which matches no other domain's.
    pub frontend_vm: Option<String>,
    /// The mode the frontend asked for.
    pub mode: Mode,
    /// Whether read-only users may share (upstream's `block`). DRBD's helper forbids it
    /// (interface doc §4.8): a read-only request is then judged as a read-write one.
    pub read_only_sharing: bool,
}

impl<P: Platform> SharingCheck<'_, P> {
    /// The mode the rules apply to: `mode`, or `Write` for a read-only request where
    /// read-only sharing is not allowed. Busy messages use it too.
    pub fn judged_mode(&self) -> Mode {
        if self.mode == Mode::Read && !self.read_only_sharing {
            Mode::Write
        } else {
            self.mode
        }
    }

    /// The first conflicting holder of any of `cands`, or `None` when sharing is fine.
    /// Errors: the mounts or a node the walk reached could not be read, or a listing
    /// could not be had whole (`xs` refuses an incomplete one).
    pub fn check(&self, cands: &[Identity]) -> Result<Option<Holder>> {
        if cands.is_empty() {
            return Ok(None);
        }
        if let Some(h) = self.check_mounts(cands)? {
            return Ok(Some(h));
        }
        self.check_guests(cands)
    }

    /// Every conflicting holder of any of `cands`, the mounts first (mount table order),
    /// then the guests in walk order: the rules and the walk of `check`, going on past the
    /// first conflict (the operator commands: `explain`, `status`). Errors: any mount
    /// table, listing or node the walk needs that cannot be read, even after a conflict
    /// (an incomplete answer could hide a holder).
    pub fn holders(&self, cands: &[Identity]) -> Result<Vec<Holder>> {
        if cands.is_empty() {
            return Ok(Vec::new());
        }
        let mounts = self.platform.local_mounts()?;
        let mut out: Vec<Holder> = mount_conflicts(cands, &mounts, self.judged_mode())
            .map(|m| Holder::Local {
                dev: m.dev,
                mount_point: m.mount_point.clone(),
            })
            .collect();
        out.extend(self.guests(cands, true)?);
        Ok(out)
    }

    /// `check` of device numbers (the storage helpers' devices).
    pub fn check_devices(&self, devs: &[DevNum]) -> Result<Option<Holder>> {
        let cands: Vec<Identity> = devs.iter().copied().map(Identity::Dev).collect();
        self.check(&cands)
    }

    fn check_mounts(&self, cands: &[Identity]) -> Result<Option<Holder>> {
        let mounts = self.platform.local_mounts()?;
        Ok(
            mount_conflict(cands, &mounts, self.judged_mode()).map(|m| Holder::Local {
                dev: m.dev,
                mount_point: m.mount_point.clone(),
            }),
        )
    }

    fn check_guests(&self, cands: &[Identity]) -> Result<Option<Holder>> {
        Ok(self.guests(cands, false)?.into_iter().next())
    }

    /// The conflicting guests the walk meets, in walk order: only the first unless `all`
    /// (then the walk goes on, and reads every node it needs).
    fn guests(&self, cands: &[Identity], all: bool) -> Result<Vec<Holder>> {
        let mut ours: Option<OurVm> = None;
        let mut found = Vec::new();
        walk(
            self.platform,
            self.store,
            self.me,
            cands,
            |dom, be, ident| {
                let Some(unknown_vm) = self.conflicts_with(dom, &be, &mut ours)? else {
                    return Ok(None);
                };
                found.push(Holder::Guest {
                    ident,
                    domid: dom.to_string(),
                    backend: be,
                    unknown_vm,
                });
                Ok((!all).then_some(()))
            },
        )?;
        Ok(found)
    }

    /// Whether backend `be` of domain `dom`, which uses one of our devices, conflicts with
    /// this request: its `mode` for a read-only request, then "same VM" on positive
    /// evidence only (`same_vm`). A domain whose `/local/domain/<dom>` is gone is dead:
    /// its leftover backend holds nothing. `Some(domains whose VM was unknown)` for a
    /// conflict. `ours` caches our own VM identity across calls, read only when first
    /// needed.
    fn conflicts_with(
        &self,
        dom: &str,
        be: &str,
        ours: &mut Option<OurVm>,
    ) -> Result<Option<Vec<String>>> {
        let mode = self.judged_mode();
        let other_mode = match mode {
            Mode::Read => {
                Mode::canonicalise_other(self.store.read(&format!("{be}/mode"))?.as_deref())
            }
            _ => Mode::Write,
        };
        if other_mode != Mode::Write && mode == Mode::Read {
            return Ok(None);
        }
        // Another disk of our own guest: the same domain is the same VM.
        if dom == self.frontend_id.to_string() {
            return Ok(None);
        }
        if !domain_exists(self.store, dom)? {
            crate::log::debug(&format!(
                "{be}: domain {dom} no longer exists: its leftover backend holds nothing"
            ));
            return Ok(None);
        }
        let ours = match ours {
            Some(o) => o,
            None => ours.insert(OurVm {
                uuid: self.frontend_vm.clone(),
                target_vm: target_vm(self.store, &self.frontend_id.to_string())?,
            }),
        };
        let other_vm = readable(self.store, &format!("/local/domain/{dom}/vm"))?;
        let other_target_vm = target_vm(self.store, dom)?;
        let same = same_vm(ours, other_vm.as_deref(), other_target_vm.as_deref());
        if !guest_conflicts(mode, other_mode, same) {
            return Ok(None);
        }
        let mut unknown = Vec::new();
        if ours.uuid.is_none() {
            unknown.push(self.frontend_id.to_string());
        }
        if other_vm.is_none() {
            unknown.push(dom.to_string());
        }
        Ok(Some(unknown))
    }
}

/// Whether `/local/domain/<dom>` exists. Refused (EACCES: a driver domain may not read
/// another guest's directory) means it exists: a removed node answers ENOENT.
fn domain_exists(store: &dyn Store, dom: &str) -> Result<bool> {
    match store.list(&format!("/local/domain/{dom}")) {
        Ok(l) => Ok(l.is_some()),
        Err(StoreError::Denied { .. }) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// A node read where refusal is an answer: `None` when missing or not readable here
/// (`StoreError::Denied`: EACCES, as a guest's `vm` in a driver domain), an error for
/// anything else.
pub fn readable(store: &dyn Store, path: &str) -> Result<Option<String>> {
    match store.read(path) {
        Ok(v) => Ok(v),
        Err(StoreError::Denied { .. }) => {
            crate::log::debug(&format!("{path} is not readable here: taken as unknown"));
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Who else uses `dev` on this host, whatever the modes: the dom0 mounts of it ("mounted
/// at /mnt") and the other backends of `me`'s type whose device it is
/// ("/local/domain/0/backend/vbd/3/768 (domain 3)"). For a storage helper's remove, which
/// must not tear down a device someone still uses. Errors as `SharingCheck::check`.
pub fn other_users<P: Platform>(
    platform: &P,
    store: &dyn Store,
    me: &BackendPath,
    dev: DevNum,
) -> Result<Vec<String>> {
    let mut users: Vec<String> = platform
        .local_mounts()?
        .into_iter()
        .filter(|m| m.dev == dev)
        .map(|m| format!("mounted at {}", m.mount_point))
        .collect();
    walk(platform, store, me, &[Identity::Dev(dev)], |dom, be, _| {
        users.push(format!("{be} (domain {dom})"));
        Ok(None::<()>)
    })?;
    Ok(users)
}

/// The `vm` of the domain a (stub)domain serves, if it has a `target`; `None` also when
/// either node is not readable here.
fn target_vm(store: &dyn Store, domid: &str) -> Result<Option<String>> {
    match readable(store, &format!("/local/domain/{domid}/target"))? {
        Some(t) if !t.is_empty() => readable(store, &format!("/local/domain/{t}/vm")),
        _ => Ok(None),
    }
}

/// Backend kinds under `backend/` that never name a disk (libxl's device kinds,
/// xen-pciback, QEMU's pvusb, ...): not scanned for holders, not listed by `status`.
/// Everything else is a disk kind: `vbd`, `vbd3` (tapback), `qdisk`, and any added later.
pub const NOT_DISKS: &[&str] = &[
    "vif", "vif2", "console", "vkbd", "vkb", "vfb", "vusb", "qusb", "pci", "vtpm", "vsnd",
    "vdispl", "vinput", "9pfs", "pvcalls", "vscsi",
];

/// How a backend kind's disk is found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// blkback's (`vbd`, and `XENBUS_TYPE`'s own): `physical-device-path`, else the legacy
    /// `physical-device`.
    Blkback,
    /// A backend that opens `params` itself (QEMU's `qdisk`, tapback's `vbd3`, any other
    /// kind): what its path names.
    Params,
}

/// Every other backend on this host that uses one of `cands`, in walk order, calling
/// `visit(domid, backend, identity)` for each and stopping at the first `Some`: first
/// upstream's walk over `me`'s own type (`walk_kind`), then every other backend kind under
/// the same base (issue 11 point 2), in listing order, except those that never name a
/// disk. An empty kind costs one listing.
fn walk<P: Platform, T>(
    platform: &P,
    store: &dyn Store,
    me: &BackendPath,
    cands: &[Identity],
    mut visit: impl FnMut(&str, String, Identity) -> Result<Option<T>>,
) -> Result<Option<T>> {
    let skip = (me.frontend.to_string(), me.devid.to_string());
    if let Some(found) = walk_kind(
        platform,
        store,
        &me.type_dir,
        Reader::Blkback,
        Some(&skip),
        cands,
        &mut visit,
    )? {
        return Ok(Some(found));
    }
    let Some((base, own)) = me.type_dir.rsplit_once('/') else {
        return Ok(None);
    };
    let Some(kinds) = store.list(base)? else {
        return Ok(None);
    };
    for kind in kinds {
        if kind == own || NOT_DISKS.contains(&kind.as_str()) {
            continue;
        }
        let reader = if kind == "vbd" {
            Reader::Blkback
        } else {
            Reader::Params
        };
        let dir = format!("{base}/{kind}");
        if let Some(found) = walk_kind(platform, store, &dir, reader, None, cands, &mut visit)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Upstream's walk over every backend of one kind (`root`: `<base>/<kind>`), in listing
/// order, `skip` (frontend, devid) excepted, calling `visit` for each that uses one of
/// `cands` and stopping at the first `Some`. The nodes it needs are fetched first, in
/// rounds of requests that the store may pipeline (the domain directories; every
/// `physical-device-path` or `params`; the legacy `physical-device` where the path names
/// nothing usable), so the cost is the daemon's per request, not a round trip each. The
/// walk then meets each result where the one-at-a-time walk would have read it: an error
/// after the stop is never seen, an error before it is returned.
#[allow(
    clippy::indexing_slicing,
    reason = "listings, doms and dom_dirs are parallel vectors; i enumerates listings, never longer than doms"
)]
fn walk_kind<P: Platform, T>(
    platform: &P,
    store: &dyn Store,
    root: &str,
    reader: Reader,
    skip: Option<&(String, String)>,
    cands: &[Identity],
    visit: &mut impl FnMut(&str, String, Identity) -> Result<Option<T>>,
) -> Result<Option<T>> {
    let Some(doms) = store.list(root)? else {
        return Ok(None);
    };
    let dom_dirs: Vec<String> = doms.iter().map(|d| format!("{root}/{d}")).collect();
    let mut listings = store.list_many(&dom_dirs);
    // Nothing after a failed listing is looked at.
    if let Some(bad) = listings.iter().position(|l| l.is_err()) {
        listings.truncate(bad + 1);
    }
    // Every other backend, in walk order: (index into doms, its path).
    let mut others: Vec<(usize, String)> = Vec::new();
    for (i, l) in listings.iter().enumerate() {
        if let Ok(Some(devs)) = l {
            for dev in devs {
                if skip.is_some_and(|(d, v)| doms[i] == *d && dev == v) {
                    continue;
                }
                others.push((i, format!("{}/{dev}", dom_dirs[i])));
            }
        }
    }
    let bes = others.iter().map(|(_, be)| be.as_str());
    let mut devices = match reader {
        Reader::Blkback => devices_of(platform, store, bes),
        Reader::Params => params_of(platform, store, bes),
    }
    .into_iter();
    let mut others = others.into_iter().peekable();

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
            if let Some(found) = visit(&doms[i], be, d)? {
                return Ok(Some(found));
            }
        }
    }
    Ok(None)
}

/// Another backend's disk as the walk sees it, from its nodes: what its
/// `physical-device-path` names now when that is usable (`Platform::stat_identity`), else
/// its legacy `physical-device` as this OS's backend reads it (module docs: the first fix).
/// For readers that fetched the nodes themselves (`status`); the walk uses it too.
pub fn device_of<P: Platform>(
    platform: &P,
    physical_device_path: Option<&str>,
    physical_device: Option<&str>,
) -> Option<Identity> {
    physical_device_path
        .and_then(|p| platform.stat_identity(p))
        .or_else(|| {
            physical_device
                .and_then(|v| platform.parse_physical_device(v))
                .map(Identity::Dev)
        })
}

/// The path in another backend's `params` as QEMU and tapback read it:
/// `[<format>:]<path>` (libxl's qdisk `aio:`, `raw:`, `qcow2:`...; tapback's `aio:`,
/// `vhd:`; at most two prefixes, as blktap2's `tapdisk:aio:`). Absolute paths only.
pub fn params_path(params: &str) -> Option<&str> {
    let mut p = params.trim();
    for _ in 0..2 {
        if p.starts_with('/') {
            return Some(p);
        }
        let (prefix, rest) = p.split_once(':')?;
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return None;
        }
        p = rest;
    }
    p.starts_with('/').then_some(p)
}

/// Each backend's disk by its `params` (`Reader::Params`), in order: what the path names
/// now (`Platform::stat_params_path`), `None` for anything else.
fn params_of<'b, P: Platform>(
    platform: &P,
    store: &dyn Store,
    bes: impl Iterator<Item = &'b str>,
) -> Vec<Result<Option<Identity>>> {
    let paths: Vec<String> = bes.map(|be| format!("{be}/params")).collect();
    store
        .read_many(&paths)
        .into_iter()
        .map(|r| {
            r.map(|v| {
                v.as_deref()
                    .and_then(params_path)
                    .and_then(|p| platform.stat_params_path(p))
            })
            .map_err(Into::into)
        })
        .collect()
}

/// Each other backend's disk, in order: what its `physical-device-path` names now when it
/// names something usable, else its legacy `physical-device` node (read only then).
#[allow(
    clippy::indexing_slicing,
    reason = "out and bes have one entry per backend; legacy holds indices into them"
)]
fn devices_of<'b, P: Platform>(
    platform: &P,
    store: &dyn Store,
    bes: impl Iterator<Item = &'b str>,
) -> Vec<Result<Option<Identity>>> {
    let bes: Vec<&str> = bes.collect();
    let paths: Vec<String> = bes
        .iter()
        .map(|be| format!("{be}/physical-device-path"))
        .collect();
    let mut out: Vec<Result<Option<Identity>>> = store
        .read_many(&paths)
        .into_iter()
        .map(|r| {
            r.map(|p| device_of(platform, p.as_deref(), None))
                .map_err(Into::into)
        })
        .collect();
    let legacy: Vec<usize> = (0..bes.len())
        .filter(|&i| matches!(out[i], Ok(None)))
        .collect();
    let nodes: Vec<String> = legacy
        .iter()
        .map(|&i| format!("{}/physical-device", bes[i]))
        .collect();
    for (i, r) in legacy.into_iter().zip(store.read_many(&nodes)) {
        out[i] = r
            .map(|v| device_of(platform, None, v.as_deref()))
            .map_err(Into::into);
    }
    out
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::fake::{Fake, FreeBsdRules, LinuxRules, Named};
    use crate::xs::mem::MemStore;

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
        let (ia, ib) = (Identity::Dev(a), Identity::Dev(b));
        assert!(mount_conflict(&[ia], &mounts, Mode::Write).is_some());
        assert!(mount_conflict(&[ia], &mounts, Mode::Read).is_none());
        assert!(mount_conflict(&[ib], &mounts, Mode::Read).is_some());
        let other = Identity::Dev(DevNum::new(8, 0));
        assert!(mount_conflict(&[other], &mounts, Mode::Write).is_none());
        // A file used as is, on the mounted file system, is not the mount.
        let file = Identity::File { fs: b, ino: 12 };
        assert!(mount_conflict(&[file], &mounts, Mode::Write).is_none());
        // Every conflicting mount, by the same rule.
        assert_eq!(mount_conflicts(&[ia, ib], &mounts, Mode::Write).count(), 2);
        let rw: Vec<&Mount> = mount_conflicts(&[ia, ib], &mounts, Mode::Read).collect();
        assert_eq!(rw, [&mounts[1]]);
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
            uuid: Some(uuid.into()),
            target_vm: target.map(Into::into),
        }
    }

    #[test]
    fn same_vm_as_upstream_master() {
        // Two unrelated guests without targets: different (the 4.7-4.18 bug said same).
        assert!(!same_vm(&vm("/vm/a", None), Some("/vm/b"), None));
        // Same VM.
        assert!(same_vm(&vm("/vm/a", None), Some("/vm/a"), None));
        // The other's vm unknown (missing, or unreadable in a driver domain): another VM.
        assert!(!same_vm(&vm("/vm/a", None), None, None));
        // Both unknown: no evidence, another VM (upstream: the same).
        let unknown = OurVm {
            uuid: None,
            target_vm: None,
        };
        assert!(!same_vm(&unknown, None, None));
        assert!(!same_vm(&unknown, Some("/vm/a"), None));
        // A readable target link is evidence even when our own vm is unknown.
        let stub = OurVm {
            uuid: None,
            target_vm: Some("/vm/a".into()),
        };
        assert!(same_vm(&stub, Some("/vm/a"), None));
        assert!(same_vm(&stub, None, Some("/vm/a")));
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

    const DEV: DevNum = DevNum::new(7, 5);

    /// Guests 1-3 and us (9): 1 uses 7:1, 2 uses our 7:5 read-write, 3 uses 7:3.
    fn guests() -> MemStore {
        let f = MemStore::default();
        for (d, pd) in [(1, "7:1"), (2, "7:5"), (3, "7:3"), (9, "7:5")] {
            f.set(&format!("backend/vbd/{d}/768/physical-device"), pd);
            f.set(&format!("backend/vbd/{d}/768/mode"), "w");
            f.set(&format!("/local/domain/{d}/vm"), &format!("/vm/{d}"));
        }
        // A path that is no block device falls back to the legacy node.
        f.set("backend/vbd/1/768/physical-device-path", "/nonexistent/xbh");
        f
    }

    fn scan(f: &MemStore, mode: Mode) -> Result<Option<Holder>> {
        let me = BackendPath::parse("backend/vbd/9/768", "backend", "vbd").unwrap();
        SharingCheck {
            platform: &Fake::<LinuxRules>::new("scan"),
            store: f,
            me: &me,
            frontend_id: 9,
            frontend_vm: Some("/vm/9".into()),
            mode,
            read_only_sharing: true,
        }
        .check_guests(&[Identity::Dev(DEV)])
    }

    #[test]
    fn batched_walk_finds_the_first_holder_and_skips_us() {
        let f = guests();
        let h = scan(&f, Mode::Write).unwrap().unwrap();
        assert_eq!(
            h,
            Holder::Guest {
                ident: Identity::Dev(DEV),
                domid: "2".into(),
                backend: "backend/vbd/2/768".into(),
                unknown_vm: vec![],
            }
        );
        {
            let reads = f.reads();
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
        let f = guests();
        f.set("backend/vbd/2/768/mode", "r");
        assert_eq!(scan(&f, Mode::Read).unwrap(), None);
        // The same VM is no conflict.
        f.set("/local/domain/2/vm", "/vm/9");
        assert_eq!(scan(&f, Mode::Write).unwrap(), None);
    }

    #[test]
    fn without_read_only_sharing_a_reader_is_judged_as_a_writer() {
        let f = guests();
        f.set("backend/vbd/2/768/mode", "r");
        assert_eq!(
            scan(&f, Mode::Read).unwrap(),
            None,
            "upstream: readers share"
        );
        let me = BackendPath::parse("backend/vbd/9/768", "backend", "vbd").unwrap();
        let p = Fake::<LinuxRules>::new("drbd");
        let check = SharingCheck {
            platform: &p,
            store: &f,
            me: &me,
            frontend_id: 9,
            frontend_vm: Some("/vm/9".into()),
            mode: Mode::Read,
            read_only_sharing: false,
        };
        assert_eq!(check.judged_mode(), Mode::Write);
        assert!(check.check(&[Identity::Dev(DEV)]).unwrap().is_some());
        // Read-only dom0 mounts conflict too, as for a writer.
        let f = MemStore::default();
        p.mounts.borrow_mut().push(m(DEV, true));
        let check = SharingCheck { store: &f, ..check };
        assert!(check.check(&[Identity::Dev(DEV)]).unwrap().is_some());
    }

    #[test]
    fn holders_are_every_conflict_of_the_checks_walk() {
        let f = guests();
        // A second holder of our device, after the first in walk order.
        f.set("backend/vbd/3/832/physical-device", "7:5");
        let me = BackendPath::parse("backend/vbd/9/768", "backend", "vbd").unwrap();
        let p = Fake::<LinuxRules>::new("holders");
        p.mounts.borrow_mut().push(m(DEV, true));
        let check = SharingCheck {
            platform: &p,
            store: &f,
            me: &me,
            frontend_id: 9,
            frontend_vm: Some("/vm/9".into()),
            mode: Mode::Write,
            read_only_sharing: true,
        };
        let all = check.holders(&[Identity::Dev(DEV)]).unwrap();
        let names: Vec<String> = all.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "local 7:5 at /mnt",
                "guest 7:5 in domain 2",
                "guest 7:5 in domain 3"
            ]
        );
        // The check stops at the first of them.
        assert_eq!(
            check.check(&[Identity::Dev(DEV)]).unwrap(),
            all.first().cloned()
        );
        // A read-only request: the read-only mount is no conflict, the writers are.
        let ro = SharingCheck {
            mode: Mode::Read,
            frontend_vm: check.frontend_vm.clone(),
            ..check
        };
        assert_eq!(ro.holders(&[Identity::Dev(DEV)]).unwrap().len(), 2);
        // The same VM is no conflict, as for the check.
        f.set("/local/domain/3/vm", "/vm/9");
        assert_eq!(check.holders(&[Identity::Dev(DEV)]).unwrap().len(), 2);
        // Every node the walk needs must be read, even past the first holder; the check
        // never reaches it.
        f.fail_at("backend/vbd/3/832/physical-device-path");
        assert!(check.holders(&[Identity::Dev(DEV)]).is_err());
        assert!(check.check(&[Identity::Dev(DEV)]).unwrap().is_some());
        assert_eq!(check.holders(&[]).unwrap(), []);
    }

    #[test]
    fn device_of_prefers_what_the_path_names() {
        let p = Fake::<LinuxRules>::new("device-of");
        p.name("/dev/xbh-disk", Named::Dev(DevNum::new(8, 16)));
        assert_eq!(
            device_of(&p, Some("/dev/xbh-disk"), Some("7:3")),
            Some(Identity::Dev(DevNum::new(8, 16)))
        );
        assert_eq!(
            device_of(&p, Some("/nonexistent/xbh"), Some("7:3")),
            Some(Identity::Dev(DevNum::new(7, 3)))
        );
        assert_eq!(device_of(&p, None, None), None);
        assert_eq!(device_of(&p, None, Some("not a device")), None);
    }

    #[test]
    fn batched_walk_meets_errors_where_the_serial_walk_would() {
        // A failure after the holder is never reached.
        for late in ["backend/vbd/3", "backend/vbd/3/768/physical-device-path"] {
            let f = guests();
            f.fail_at(late);
            assert!(scan(&f, Mode::Write).unwrap().is_some(), "{late}");
        }
        // A failure before it is the answer.
        for early in [
            "backend/vbd/1",
            "backend/vbd/1/768/physical-device-path",
            "backend/vbd/1/768/physical-device",
        ] {
            let f = guests();
            f.fail_at(early);
            let e = scan(&f, Mode::Write).unwrap_err();
            assert!(e.to_string().contains(early), "{early}: {e}");
        }
        // No domains at all, or none but us.
        assert_eq!(scan(&MemStore::default(), Mode::Write).unwrap(), None);
        let f = MemStore::default();
        f.set("backend/vbd/9/768/physical-device", "7:5");
        assert_eq!(scan(&f, Mode::Write).unwrap(), None);
    }

    // FreeBSD: other backends are found by what their `physical-device-path` names now
    // (the walk that was FreeBSD's own `guest_holder`).

    const ROOT: &str = "/local/domain/0/backend/vbd";
    const DISK: Identity = Identity::Dev(DevNum::new(0, 0x5a));
    const IMG: Identity = Identity::File {
        fs: DevNum::new(0, 0x71),
        ino: 12,
    };

    fn freebsd() -> Fake<FreeBsdRules> {
        let p = Fake::<FreeBsdRules>::new("paths");
        p.name("/dev/ada1", Named::Dev(DevNum::new(0, 0x5a)));
        p.name("/dev/diskid/DISK-X", Named::Dev(DevNum::new(0, 0x5a)));
        let img = Named::File {
            dev: 0x71,
            ino: 12,
            perm: 0o644,
        };
        p.name("/vm/a.img", img);
        p.name("/vm/link.img", img);
        p.name(
            "/vm/other.img",
            Named::File {
                dev: 0x71,
                ino: 13,
                perm: 0o644,
            },
        );
        p.name(
            "/elsewhere/a.img",
            Named::File {
                dev: 0x72,
                ino: 12,
                perm: 0o644,
            },
        );
        p
    }

    fn fb_store() -> MemStore {
        let s = MemStore::default();
        s.set("/local/domain/5/vm", "/vm/five");
        s.set("/local/domain/6/vm", "/vm/six");
        s.set("/local/domain/7/vm", "/vm/seven");
        s.set("/local/domain/7/target", "5");
        // Ourselves: must be skipped even though the path matches.
        s.set(&format!("{ROOT}/5/768/physical-device-path"), "/vm/a.img");
        s.set(&format!("{ROOT}/5/768/mode"), "w");
        s
    }

    fn fb_check(s: &MemStore, mode: Mode, ours: Identity) -> Option<Holder> {
        let me = BackendPath::parse(&format!("{ROOT}/5/768"), "backend", "vbd").unwrap();
        SharingCheck {
            platform: &freebsd(),
            store: s,
            me: &me,
            frontend_id: 5,
            frontend_vm: Some("/vm/five".into()),
            mode,
            read_only_sharing: true,
        }
        .check(&[ours])
        .unwrap()
    }

    fn other(s: &MemStore, dom: u32, path: &str, mode: &str) {
        s.set(&format!("{ROOT}/{dom}/832/physical-device-path"), path);
        s.set(&format!("{ROOT}/{dom}/832/mode"), mode);
    }

    #[test]
    fn freebsd_same_file_by_another_name_conflicts_rw() {
        let s = fb_store();
        assert_eq!(fb_check(&s, Mode::Write, IMG), None, "alone");
        assert_eq!(fb_check(&s, Mode::Read, DISK), None, "alone");
        other(&s, 6, "/vm/link.img", "r");
        let h = fb_check(&s, Mode::Write, IMG).unwrap();
        assert!(
            matches!(&h, Holder::Guest { domid, backend, ident, .. }
                if domid == "6" && backend == &format!("{ROOT}/6/832") && *ident == IMG),
            "{h:?}"
        );
        // Read-only next to read-only is fine.
        assert_eq!(fb_check(&s, Mode::Read, IMG), None);
        // The force mode is the caller's business; the check itself still sees the user.
        assert!(fb_check(&s, Mode::Force, IMG).is_some());
    }

    #[test]
    fn freebsd_read_only_conflicts_only_with_writers() {
        let s = fb_store();
        other(&s, 6, "/dev/diskid/DISK-X", "w");
        assert!(fb_check(&s, Mode::Read, DISK).is_some());
        other(&s, 6, "/dev/diskid/DISK-X", "w!");
        assert_eq!(fb_check(&s, Mode::Read, DISK), None);
        other(&s, 6, "/dev/diskid/DISK-X", "");
        assert!(
            fb_check(&s, Mode::Read, DISK).is_some(),
            "unknown mode counts as writable"
        );
    }

    #[test]
    fn freebsd_different_files_and_dead_paths_do_not_conflict() {
        let s = fb_store();
        for (path, why) in [
            ("/vm/other.img", "another file"),
            ("/elsewhere/a.img", "same inode, other filesystem"),
            ("/gone.img", "a dead path"),
            ("", "an empty path"),
            ("/dev/ada1", "a file is not the device it lives on"),
        ] {
            other(&s, 6, path, "w");
            assert_eq!(fb_check(&s, Mode::Write, IMG), None, "{why}");
        }
    }

    #[test]
    fn freebsd_same_vm_and_stubdoms_may_share() {
        // Another disk of our own guest; our guest's stubdom; a dead domain (no
        // /local/domain/9 at all), whose leftover backend holds nothing.
        for dom in [5, 7, 9] {
            let s = fb_store();
            other(&s, dom, "/vm/a.img", "w");
            assert_eq!(fb_check(&s, Mode::Write, IMG), None, "domain {dom}");
        }
        // A domain that exists without a vm is unknown: another VM.
        let s = fb_store();
        s.set("/local/domain/9/name", "nine");
        other(&s, 9, "/vm/a.img", "w");
        let h = fb_check(&s, Mode::Write, IMG).unwrap();
        assert!(
            matches!(&h, Holder::Guest { domid, unknown_vm, .. } if domid == "9" && unknown_vm == &["9"]),
            "{h:?}"
        );
    }

    #[test]
    fn other_users_lists_mounts_and_every_other_backend() {
        let p = Fake::<LinuxRules>::new("users");
        p.mounts.borrow_mut().push(m(DEV, true));
        let f = guests();
        // A second user of 7:5, of the same VM as us: still a user.
        f.set("backend/vbd/3/832/physical-device", "7:5");
        let me = BackendPath::parse("backend/vbd/9/768", "backend", "vbd").unwrap();
        let users = other_users(&p, &f, &me, DEV).unwrap();
        assert_eq!(
            users,
            [
                "mounted at /mnt",
                "backend/vbd/2/768 (domain 2)",
                "backend/vbd/3/832 (domain 3)"
            ]
        );
        // Errors are not taken for "no users".
        f.fail_at("backend/vbd/3/832/physical-device-path");
        assert!(other_users(&p, &f, &me, DEV).is_err());
    }

    #[test]
    fn params_paths_as_qemu_and_tapback_read_them() {
        for (params, want) in [
            ("/vm/a.img", Some("/vm/a.img")),
            ("aio:/vm/a.img", Some("/vm/a.img")),
            ("vhd:/vm/a.vhd", Some("/vm/a.vhd")),
            ("qcow2:/vm/a.qcow2", Some("/vm/a.qcow2")),
            ("tapdisk:aio:/vm/a.img", Some("/vm/a.img")),
            ("raw:/dev/sdb", Some("/dev/sdb")),
            ("a.img", None),
            ("aio:a.img", None),
            ("aio:", None),
            (":/vm/a.img", None),
            ("x y:/vm/a.img", None),
            ("a:b:c:/vm/a.img", None),
            ("nbd:host:10809", None),
        ] {
            assert_eq!(params_path(params), want, "{params}");
        }
        assert_eq!(server_of("qdisk"), Some("QEMU"));
        assert_eq!(server_of("vbd3"), Some("tapback"));
        assert_eq!(server_of("vbd"), None);
        assert_eq!(kind_of("/local/domain/0/backend/qdisk/5/51712"), "qdisk");
    }

    #[test]
    fn messages_name_the_holder() {
        let g = Holder::Guest {
            ident: Identity::Dev(DevNum::new(7, 0)),
            domid: "5".into(),
            backend: "backend/vbd/5/51712".into(),
            unknown_vm: vec![],
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
mod listing_tests {
    use super::*;
    use crate::platform::fake::{Fake, LinuxRules};
    use crate::xs::StoreError;
    use crate::xs::mem::MemStore;

    #[test]
    fn an_incomplete_listing_refuses_instead_of_passing() {
        // The daemon answers the backend listing with E2BIG (C xenstored, or the xenbus
        // ring, past 4096 bytes; Debian's oxenstored over its socket does not, so it is
        // injected here as the daemon's raw answer). The classification is xs's; the
        // refusal is this module's.
        let s = MemStore::default();
        s.set("backend/vbd/2/768/physical-device", "fff:fffff");
        s.answer_at("backend/vbd", "E2BIG");
        let me = BackendPath::parse("backend/vbd/1/51712", "backend", "vbd").unwrap();
        let check = SharingCheck {
            platform: &Fake::<LinuxRules>::new("e2big"),
            store: &s,
            me: &me,
            frontend_id: 1,
            frontend_vm: Some("/vm/a".into()),
            mode: Mode::Write,
            read_only_sharing: true,
        };
        // A device number no mount uses, so only the guest listing can decide.
        let err = check
            .check(&[Identity::Dev(DevNum::new(0xfff, 0xfffff))])
            .unwrap_err();
        assert!(
            matches!(err.downcast_ref::<StoreError>(), Some(StoreError::TooBig { path }) if path == "backend/vbd"),
            "{err:#}"
        );
        // Another errno on the listing is an error too, of its own type.
        s.answer_at("backend/vbd/2", "EACCES");
        let s2 = MemStore::default();
        s2.set("backend/vbd/2/768/physical-device", "7:0");
        s2.answer_at("backend/vbd/2", "EACCES");
        let check2 = SharingCheck {
            store: &s2,
            ..check
        };
        let err = check2
            .check(&[Identity::Dev(DevNum::new(7, 0))])
            .unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<StoreError>(),
                Some(StoreError::Denied { .. })
            ),
            "{err:#}"
        );
        // Nothing to check: no listing needed.
        assert_eq!(check2.check(&[]).unwrap(), None);
    }
}
