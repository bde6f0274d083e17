//! Cluster disk leases (issue 15): one writer across the hosts of a pool, on sanlock.
//!
//! With `LEASES=sanlock` (see `config`), `add` takes a sanlock *persistent* resource lease
//! on the disk after the local sharing check passes and before the device is published:
//! exclusive for `w`, shared for `r`, none for `w!` (the administrator's word, as for the
//! local check). The process exits, and sanlock keeps the lease for the host as an
//! *orphan* (sanlock.h, `SANLK_RES_PERSISTENT`); `remove` adopts the orphan
//! (`SANLK_ACQUIRE_ORPHAN_ONLY`) and releases it, from the [`LeaseRecord`] kept in the
//! applet's remove record (`record::Lease`, the `lease-*` fields of a `loop` or `phy`
//! record), so it works when the backend nodes are gone. The `block` applet reaches this
//! module through the platform (`Platform::take_lease`, `release_lease`): sanlock, and so
//! this module, exists on Linux only.
//!
//! One lease file per disk in `LEASE_DIR`, named by the SHA-256 of the disk's identity
//! (`identity`). It holds two 1 MiB sanlock resources: the disk lease at offset 0 and a
//! *handover guard* at 1 MiB. A file appears under its name only fully initialised
//! (written under a temporary name, then `link(2)`ed, which never replaces an existing
//! file), so two hosts creating it at once cannot clobber each other or a held lease.
//! Next to it, `<hash>.owner-<host id>` names the VM(s) a host holds it for; only that
//! host writes it (sanlock knows host ids, not VMs).
//!
//! Live migration: the destination's `add` finds the disk held by the source host *for
//! the same VM UUID*. That is a handover: the destination takes the guard (exclusive,
//! persistent), the add succeeds, and a detached acquirer (`lease handover`, a fresh
//! exec of this binary: it inherits no lock fd and no sanlock connection) polls every
//! 200 ms until the source's `remove` releases the disk lease, takes it, then drops the
//! guard. Every other `add` that gets the disk lease checks the guard right after and
//! backs out while it is held, so a third VM is refused during the whole window.
//!
//! This host's holders of each lease are counted in [`local_root`] (under a per-lease lock),
//! so two local backends of one disk (two readers, or one VM twice, which the local check
//! allows) share one sanlock lease, released by the last `remove`.

pub mod cmd;
pub mod config;
pub mod handover;
pub mod identity;
pub mod sanlock;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::lock::Lock;
use crate::log;
use crate::mode::Mode;
use crate::report::busy;

/// What `remove` needs to release a lease: the `lease-*` fields of a remove record.
pub use crate::record::Lease as LeaseRecord;
/// Exclusive (`w`) or shared (`r`).
pub use crate::record::LeaseKind as Kind;

pub use config::{Config, Leases};
pub use identity::Identity;
use sanlock::{Client, Resource, Sanlock};

/// This host's view of the leases it holds, one directory per lockspace and host id
/// (`<lockspace>.<id>`), cleared at boot like every `/var/run` record (sanlock forgets
/// orphans when its daemon restarts, too): `xen-block-hotplug-lease` in the lock
/// directory, `/var/run/xen-hotplug/xen-block-hotplug-lease` on a dom0 (tests move it with
/// the lock directory, `paths::lock_dir`).
pub fn local_root() -> PathBuf {
    crate::paths::lock_dir().join("xen-block-hotplug-lease")
}

/// The `key=value` lines of this module's own small files (the owner files next to a
/// lease, this host's state of a lease), sorted by key, like the remove records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Kv(BTreeMap<String, String>);

impl Kv {
    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn set(&mut self, k: &str, v: impl Into<String>) -> &mut Self {
        self.0.insert(k.to_string(), v.into());
        self
    }

    fn require(&self, k: &str) -> Result<&str> {
        self.get(k).ok_or_else(|| anyhow!("lease state has no {k}"))
    }

    fn parse(text: &str) -> Result<Kv> {
        let mut r = Kv::default();
        for line in text.split('\n').filter(|l| !l.is_empty()) {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| anyhow!("malformed lease state line {line:?}"))?;
            r.set(k, v);
        }
        Ok(r)
    }

    fn render(&self) -> Result<String> {
        let mut s = String::new();
        for (k, v) in &self.0 {
            if k.contains(['=', '\n']) || v.contains('\n') {
                bail!("lease state field {k:?} cannot be stored");
            }
            s.push_str(&format!("{k}={v}\n"));
        }
        Ok(s)
    }
}

static LIB: OnceLock<Sanlock> = OnceLock::new();

/// libsanlock, loaded once on first use (never with `LEASES=none`).
pub fn lib() -> Result<&'static Sanlock> {
    if let Some(l) = LIB.get() {
        return Ok(l);
    }
    let l = Sanlock::load()?;
    Ok(LIB.get_or_init(|| l))
}

impl Kind {
    /// The lease a mode takes: `w` exclusive, `r` shared, `w!` none.
    pub fn for_mode(mode: Mode) -> Option<Kind> {
        match mode {
            Mode::Write => Some(Kind::Exclusive),
            Mode::Read => Some(Kind::Shared),
            Mode::Force => None,
        }
    }

    fn res_flags(self) -> u32 {
        sanlock::ALIGN1M_SECTOR512
            | sanlock::RES_PERSISTENT
            | match self {
                Kind::Exclusive => 0,
                Kind::Shared => sanlock::RES_SHARED,
            }
    }
}

/// The lease file a remove record's lease names.
fn lease_file(rec: &LeaseRecord) -> LeaseFile {
    LeaseFile {
        lockspace: rec.lockspace.clone(),
        host_id: rec.host_id,
        dir: rec.dir.clone(),
        hash: rec.hash.clone(),
    }
}

/// One disk's lease file in one lockspace, seen from one host.
#[derive(Clone, Debug)]
pub struct LeaseFile {
    pub lockspace: String,
    pub host_id: u64,
    pub dir: PathBuf,
    pub hash: String,
}

impl LeaseFile {
    pub fn new(cfg: &Config, id: &Identity) -> LeaseFile {
        LeaseFile {
            lockspace: cfg.lockspace.clone(),
            host_id: cfg.host_id,
            dir: cfg.dir.clone(),
            hash: id.hash(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.hash)
    }

    /// The disk lease (offset 0). sanlock names hold 48 bytes: the first 48 hex digits.
    pub fn disk(&self, kind: Kind) -> Result<Resource> {
        Resource::new(
            &self.lockspace,
            self.hash.get(..48).unwrap_or(&self.hash),
            &self.path(),
            0,
            kind.res_flags(),
        )
    }

    /// The handover guard (offset 1 MiB), always exclusive; persistent when `keep`.
    pub fn guard(&self, keep: bool) -> Result<Resource> {
        let name = format!("{}-h", self.hash.get(..46).unwrap_or(&self.hash));
        let flags = sanlock::ALIGN1M_SECTOR512 | if keep { sanlock::RES_PERSISTENT } else { 0 };
        Resource::new(
            &self.lockspace,
            &name,
            &self.path(),
            sanlock::LEASE_SIZE,
            flags,
        )
    }

    fn owner_file(&self, host: u64) -> PathBuf {
        self.dir.join(format!("{}.owner-{host}", self.hash))
    }

    /// The VM UUIDs `host` says it holds this lease for (empty when unknown).
    pub fn owner_vms(&self, host: u64) -> Vec<String> {
        fs::read_to_string(self.owner_file(host))
            .ok()
            .and_then(|t| Kv::parse(&t).ok())
            .and_then(|r| {
                r.get("vm")
                    .map(|v| v.split(',').map(str::to_string).collect())
            })
            .unwrap_or_default()
    }

    /// Publishes which VMs this host holds the lease for (atomically), or withdraws that.
    pub(crate) fn set_owner_vms(&self, vms: &[String]) -> Result<()> {
        let path = self.owner_file(self.host_id);
        if vms.is_empty() {
            return match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("cannot remove {}", path.display()))
                }
                _ => Ok(()),
            };
        }
        let mut r = Kv::default();
        r.set("host-id", self.host_id.to_string())
            .set("vm", vms.join(","));
        write_atomic(&path, r.render()?.as_bytes())
    }

    /// Creates and initialises the lease file unless it exists. Race-free: the two
    /// resources are written into a private temporary file, which is then hard-linked to
    /// the final name; `link` fails on an existing name instead of replacing it, so a
    /// concurrent creator's file (held or not) is never touched.
    pub fn ensure(&self, lib: &Sanlock) -> Result<()> {
        let path = self.path();
        if path.exists() {
            return Ok(());
        }
        let tmp = self.dir.join(format!(
            ".{}.new-{}-{}",
            self.hash,
            self.host_id,
            std::process::id()
        ));
        let made = (|| -> Result<()> {
            let f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| {
                    format!("cannot create {} (is LEASE_DIR reachable?)", tmp.display())
                })?;
            f.set_len(2 * sanlock::LEASE_SIZE)?;
            drop(f);
            share_with_daemon(&tmp)?;
            let tmp_file = LeaseFile {
                dir: PathBuf::new(),
                ..self.clone()
            };
            let mut disk = tmp_file.disk(Kind::Exclusive)?;
            let mut guard = tmp_file.guard(false)?;
            for r in [&mut disk, &mut guard] {
                r.disk = sanlock::Disk::new(&tmp, r.disk.offset)?;
                r.flags = sanlock::ALIGN1M_SECTOR512;
                lib.write_resource(r)?;
            }
            match fs::hard_link(&tmp, &path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
            }
        })();
        let _ = fs::remove_file(&tmp);
        made.with_context(|| format!("cannot create the lease file {}", path.display()))
    }

    fn local_dir(&self) -> PathBuf {
        local_root().join(format!("{}.{}", self.lockspace, self.host_id))
    }

    pub(crate) fn local_lock(&self) -> Result<Lock> {
        Ok(Lock::claim_in(
            &self.local_dir(),
            &format!("{}.lock", self.hash),
        )?)
    }

    pub(crate) fn local_load(&self) -> Result<Option<Local>> {
        let p = self.local_dir().join(&self.hash);
        match fs::read_to_string(&p) {
            Ok(t) => Ok(Some(Local::from_record(&Kv::parse(&t)?)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }

    pub(crate) fn local_save(&self, l: Option<&Local>) -> Result<()> {
        let p = self.local_dir().join(&self.hash);
        match l {
            Some(l) => {
                fs::create_dir_all(self.local_dir())?;
                write_atomic(&p, l.to_record().render()?.as_bytes())
            }
            None => match fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            },
        }
    }
}

/// Lets a sanlock daemon that runs as the `sanlock` user (`-U sanlock -G sanlock`) use a
/// lease file we created: group `sanlock` when that group exists, mode 0660. A daemon
/// running as root needs nothing.
pub fn share_with_daemon(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(Some(g)) = nix::unistd::Group::from_name("sanlock") {
        nix::unistd::chown(path, None, Some(g.gid))
            .with_context(|| format!("cannot give {} to group sanlock", path.display()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o660))?;
    }
    Ok(())
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let r = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r.with_context(|| format!("cannot write {}", path.display()))
}

/// Whether this host holds the disk lease, or waits for it in a handover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Held,
    Handover,
}

/// This host's state for one lease: how it is held and by which local backends.
#[derive(Clone, Debug)]
pub struct Local {
    pub kind: Kind,
    pub phase: Phase,
    pub identity: String,
    /// The handover acquirer's PID while in `Handover`.
    pub acquirer: Option<u32>,
    /// backend key → VM UUID.
    pub holders: Vec<(String, String)>,
}

impl Local {
    pub(crate) fn vms(&self) -> Vec<String> {
        let mut v: Vec<String> = self.holders.iter().map(|(_, vm)| vm.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    fn to_record(&self) -> Kv {
        let mut r = Kv::default();
        r.set("kind", self.kind.as_str())
            .set(
                "phase",
                if self.phase == Phase::Held {
                    "held"
                } else {
                    "handover"
                },
            )
            .set("identity", self.identity.as_str());
        if let Some(p) = self.acquirer {
            r.set("acquirer", p.to_string());
        }
        for (k, vm) in &self.holders {
            r.set(&format!("holder.{k}"), vm.as_str());
        }
        r
    }

    fn from_record(r: &Kv) -> Result<Local> {
        Ok(Local {
            kind: Kind::parse(r.require("kind")?).ok_or_else(|| anyhow!("bad kind"))?,
            phase: if r.require("phase")? == "held" {
                Phase::Held
            } else {
                Phase::Handover
            },
            identity: r.get("identity").unwrap_or("").to_string(),
            acquirer: r.get("acquirer").and_then(|p| p.parse().ok()),
            holders: r
                .0
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix("holder.")
                        .map(|k| (k.to_string(), v.clone()))
                })
                .collect(),
        })
    }
}

/// Whether a sanlock acquire failed because another host holds the lease.
pub(crate) fn is_busy(rv: i32) -> bool {
    matches!(
        rv,
        sanlock::ACQUIRE_IDLIVE
            | sanlock::ACQUIRE_OWNED
            | sanlock::ACQUIRE_OTHER
            | sanlock::ACQUIRE_SHRETRY
            | sanlock::ACQUIRE_OWNED_RETRY
    ) || rv == -nix::libc::EAGAIN
}

/// Checks that the daemon is up and this host has joined the lockspace, with a message
/// saying what to do otherwise; returns a registered connection.
fn connect<'a>(lib: &'a Sanlock, lockspace: &str, host_id: u64, dir: &Path) -> Result<Client<'a>> {
    let client = lib.register()?;
    let path = dir.join(format!("{lockspace}.lockspace"));
    let mut ls = sanlock::Lockspace::new(lockspace, host_id, &path)?;
    match lib.inq_lockspace(&mut ls) {
        0 => Ok(client),
        rv if rv == -nix::libc::EINPROGRESS => bail!(
            "this host is still joining lockspace {lockspace} (host id {host_id}): try again in a few seconds"
        ),
        rv if rv == -nix::libc::ENOENT => bail!(
            "this host has not joined lockspace {lockspace} as host id {host_id}: \
             run `xen-block-hotplug lease join`"
        ),
        rv => bail!(
            "cannot ask sanlock about lockspace {lockspace}: {}",
            lib.describe(rv)
        ),
    }
}

/// A lease taken by `add`, released again when dropped unless [`Held::keep`] is called
/// (so every failed add after the lease gives it back).
pub struct Held {
    pub record: LeaseRecord,
    client: Option<Client<'static>>,
    /// What this process acquired on `client` (released on drop).
    acquired: Vec<Resource>,
    kept: bool,
    /// Whether the lease is only promised (a migration handover in progress).
    pub handover: bool,
}

impl Held {
    /// The add succeeded: the lease stays with the host after this process exits.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if let Err(e) = self.undo() {
            log::err(&format!(
                "could not give back the lease of the failed add: {e:#}"
            ));
        }
    }
}

impl Held {
    fn undo(&mut self) -> Result<()> {
        let lf = lease_file(&self.record);
        let _l = lf.local_lock()?;
        let mut local = lf.local_load()?;
        if let Some(l) = local.as_mut() {
            l.holders.retain(|(k, _)| *k != self.record.holder);
        }
        let empty = local.as_ref().is_none_or(|l| l.holders.is_empty());
        if empty {
            lf.set_owner_vms(&[])?;
        } else if let Some(l) = &local {
            lf.set_owner_vms(&l.vms())?;
        }
        if let Some(c) = &self.client {
            for r in self.acquired.drain(..) {
                c.release(&r)?;
            }
        }
        lf.local_save(if empty { None } else { local.as_ref() })
    }
}

/// The lease an `add` needs: `Ok(None)` with `LEASES=none` or mode `w!`; otherwise the
/// lease is held (or promised by a migration handover) on return. Refusals are `busy`
/// errors naming the holding host ids and VM UUIDs; an unreachable daemon, an unjoined
/// lockspace or unreachable lease storage are errors: never a silent fallback.
///
/// `vm` is the frontend's `vm` node (`/vm/<uuid>`, or a bare UUID); `holder` the
/// backend's remove-record key.
pub fn acquire(
    cfg: &Config,
    id: &Identity,
    mode: Mode,
    vm: &str,
    holder: &str,
) -> Result<Option<Held>> {
    if cfg.leases == Leases::None {
        return Ok(None);
    }
    let Some(kind) = Kind::for_mode(mode) else {
        return Ok(None);
    };
    let t0 = Instant::now();
    let vm = vm.strip_prefix("/vm/").unwrap_or(vm).to_string();
    let lib = lib()?;
    let client = connect(lib, &cfg.lockspace, cfg.host_id, &cfg.dir)?;
    let lf = LeaseFile::new(cfg, id);
    lf.ensure(lib)?;
    let record = LeaseRecord {
        lockspace: cfg.lockspace.clone(),
        host_id: cfg.host_id,
        dir: cfg.dir.clone(),
        hash: lf.hash.clone(),
        kind,
        vm: vm.clone(),
        holder: holder.to_string(),
    };
    let mut held = Held {
        record,
        client: Some(client),
        acquired: Vec::new(),
        kept: false,
        handover: false,
    };
    let _l = lf.local_lock()?;
    // Another local backend holds it already: share that lease (the local sharing check
    // decided this pair may coexist), unless it is shared and we need it exclusive.
    if let Some(mut local) = still_held(lib, cfg, &lf)? {
        if local.kind == Kind::Shared && kind == Kind::Exclusive {
            return Err(busy(format!(
                "Disk {} is leased shared (read-only) by this host for {}: it cannot be leased read-write as well",
                id.0,
                local
                    .holders
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        local.holders.retain(|(k, _)| k != holder);
        local.holders.push((holder.to_string(), vm.clone()));
        lf.set_owner_vms(&local.vms())?;
        lf.local_save(Some(&local))?;
        held.handover = local.phase == Phase::Handover;
        return Ok(Some(held));
    }
    let client = held
        .client
        .as_ref()
        .ok_or_else(|| anyhow!("no sanlock connection"))?;
    let disk = lf.disk(kind)?;
    // Recorded before sanlock is asked: a kill at any later point leaves a record of what
    // this host may hold (checked against sanlock, and pruned, by the next add of this
    // disk), never a lease nobody knows about.
    let mut local = Local {
        kind,
        phase: Phase::Held,
        identity: id.0.clone(),
        acquirer: None,
        holders: vec![(holder.to_string(), vm.clone())],
    };
    lf.local_save(Some(&local))?;
    // Our VM name goes next to the lease only while we hold it (a stale one, from a crash,
    // could pass for a migration source), and before the guard is checked (a handover
    // starts only after reading it).
    lf.set_owner_vms(&[])?;
    match client.acquire(&disk, sanlock::ACQUIRE_OWNER_NOWAIT) {
        Ok(()) => {
            held.acquired.push(disk);
            lf.set_owner_vms(std::slice::from_ref(&vm))?;
            // The guard: held while another host waits to take this disk over.
            if let Some(h) = probe_guard(lib, client, &lf)? {
                return Err(busy(format!(
                    "Disk {} is being handed over to {} (a live migration): refused",
                    id.0,
                    describe_holders(&lf, &h)
                )));
            }
        }
        Err(e) if is_busy(e.rv) => {
            let owners = lib.read_owners(&disk).unwrap_or_default();
            let others: Vec<u64> = owners
                .iter()
                .map(|h| h.host_id)
                .filter(|h| *h != cfg.host_id)
                .collect();
            let same_vm = vm != "unknown"
                && !vm.is_empty()
                && !others.is_empty()
                && others.iter().all(|h| lf.owner_vms(*h) == [vm.clone()]);
            if !same_vm {
                let what = if e.rv == sanlock::ACQUIRE_OWNED_RETRY {
                    " (that host stopped renewing its lease: the disk is free once sanlock \
                     declares it dead)"
                } else {
                    ""
                };
                return Err(busy(format!(
                    "Disk {} is in use on another host: leased by {}{what}",
                    id.0,
                    describe_holders(&lf, &others)
                )));
            }
            // The same VM on another host: a migration. Take the guard, promise the disk.
            local.phase = Phase::Handover;
            lf.local_save(Some(&local))?;
            let guard = lf.guard(true)?;
            let mut tries = 0;
            loop {
                match client.acquire(&guard, sanlock::ACQUIRE_OWNER_NOWAIT) {
                    Ok(()) => break,
                    // A prober holds it for a moment.
                    Err(g) if is_busy(g.rv) && tries < 20 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(g) => {
                        return Err(anyhow!(g).context("cannot take the migration handover guard"));
                    }
                }
            }
            held.acquired.push(guard);
            held.handover = true;
            lf.set_owner_vms(std::slice::from_ref(&vm))?;
            local.acquirer = Some(handover::spawn_acquirer(&lf, kind, cfg.handover_timeout)?);
            lf.local_save(Some(&local))?;
            log::debug(&format!(
                "lease of {}: handover from host(s) {others:?} for VM {vm}: acquirer {:?}",
                id.0, local.acquirer
            ));
        }
        Err(e) => return Err(anyhow!(e).context(format!("cannot lease disk {}", id.0))),
    }
    log::debug(&format!(
        "lease of {} ({}) taken in {} ms",
        id.0,
        kind.as_str(),
        t0.elapsed().as_millis()
    ));
    Ok(Some(held))
}

/// The lease for a backend being added, after the local sharing check passed (the Linux
/// platform's `take_lease`): reads the configuration and, unless leases are off, takes
/// the lease (see [`acquire`]). `key` is the backend's remove-record key, `vm` the
/// frontend's `vm` node.
pub fn for_add(key: &str, id: &Identity, mode: Mode, vm: &str) -> Result<Option<Held>> {
    let cfg = Config::load()?;
    acquire(&cfg, id, mode, vm, key)
}

/// This host's local state for the lease, if sanlock agrees that the host (in its current
/// generation) still holds it; a state sanlock does not back (its daemon was restarted and
/// forgot the orphans) is discarded, so a new add takes a real lease instead of counting
/// itself into a lease that no longer exists.
fn still_held(lib: &Sanlock, cfg: &Config, lf: &LeaseFile) -> Result<Option<Local>> {
    let Some(mut local) = lf.local_load()? else {
        return Ok(None);
    };
    let res = match local.phase {
        Phase::Held => lf.disk(local.kind)?,
        Phase::Handover => lf.guard(true)?,
    };
    let generation = lib
        .get_hosts(&cfg.lockspace, cfg.host_id)
        .ok()
        .and_then(|v| v.first().map(|h| h.generation));
    let ours = lib
        .read_owners(&res)?
        .iter()
        .any(|h| h.host_id == cfg.host_id && generation.is_none_or(|g| g == h.generation));
    if ours {
        // A holder whose backend has no remove record is an add that was killed (libxl's
        // timeout) before it saved one: nobody will ever remove it. Adds run under the
        // `block` lock, so no holder here is an add still in progress.
        let before = local.holders.len();
        local
            .holders
            .retain(|(k, _)| !matches!(crate::record::load(k), Ok(None)));
        if local.holders.len() == before {
            return Ok(Some(local));
        }
        log::err(&format!(
            "lease of {}: {} holder(s) without a remove record (killed adds) dropped",
            local.identity,
            before - local.holders.len()
        ));
        if !local.holders.is_empty() {
            lf.set_owner_vms(&local.vms())?;
            lf.local_save(Some(&local))?;
            return Ok(Some(local));
        }
        // Nobody left: give it back, and let this add take a lease of its own.
        release_host_lease(lib, lf, &local)?;
        return Ok(None);
    }
    log::err(&format!(
        "lease of {}: this host's record says {:?}, but sanlock no longer has it (daemon \
         restarted?): taken afresh",
        local.identity, local.phase
    ));
    lf.set_owner_vms(&[])?;
    lf.local_save(None)?;
    Ok(None)
}

/// Whether another host holds the guard (returns its holders). Called with the disk lease
/// held, when no new handover can start (one starts only against a held disk lease), so a
/// guard that the on-disk owners show free is free: one read. Owners listed there may be
/// dead hosts, which only sanlock can judge: then the guard is taken and given back.
fn probe_guard(lib: &Sanlock, client: &Client, lf: &LeaseFile) -> Result<Option<Vec<u64>>> {
    let g = lf.guard(false)?;
    if lib.read_owners(&g)?.is_empty() {
        return Ok(None);
    }
    match client.acquire(&g, sanlock::ACQUIRE_OWNER_NOWAIT) {
        Ok(()) => {
            client.release(&g)?;
            Ok(None)
        }
        Err(e) if is_busy(e.rv) => {
            let hosts = lib
                .read_owners(&g)
                .unwrap_or_default()
                .iter()
                .map(|h| h.host_id)
                .collect();
            Ok(Some(hosts))
        }
        Err(e) => Err(anyhow!(e).context("cannot check the migration handover guard")),
    }
}

/// The VMs host `h` says it holds the lease for, given up to a second to appear: a holder
/// publishes them just after sanlock grants its lease (`acquire`), so a refusal racing that
/// grant would otherwise name no VM. Units: polls every 50 ms, 1 s at most; only on the
/// refusal path.
fn owner_vms_settled(lf: &LeaseFile, h: u64) -> Vec<String> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let vms = lf.owner_vms(h);
        if !vms.is_empty() || std::time::Instant::now() >= until {
            return vms;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// "host 2 (VM 1234...)" for each holder.
pub fn describe_holders(lf: &LeaseFile, hosts: &[u64]) -> String {
    if hosts.is_empty() {
        return "another host".to_string();
    }
    hosts
        .iter()
        .map(|h| match owner_vms_settled(lf, *h).as_slice() {
            [] => format!("host id {h} (VM unknown)"),
            vms => format!("host id {h} (VM {})", vms.join(", VM ")),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `remove`: gives back what `rec` names for its backend. The last local holder releases
/// the host's lease (adopting the orphan first); a handover still waiting is cancelled
/// (its guard released). Nothing held any more is not an error.
pub fn release(rec: &LeaseRecord) -> Result<()> {
    let lf = lease_file(rec);
    let _l = lf.local_lock()?;
    let Some(mut local) = lf.local_load()? else {
        log::debug(&format!(
            "lease {}: this host holds nothing: nothing to release",
            rec.hash
        ));
        return Ok(());
    };
    local.holders.retain(|(k, _)| *k != rec.holder);
    if !local.holders.is_empty() {
        lf.set_owner_vms(&local.vms())?;
        return lf.local_save(Some(&local));
    }
    release_host_lease(lib()?, &lf, &local)
}

/// Gives back the host's sanlock lease behind `local` (the disk lease, or the guard of a
/// handover still waiting) and forgets `local`.
fn release_host_lease(lib: &Sanlock, lf: &LeaseFile, local: &Local) -> Result<()> {
    let client = lib.register()?;
    let res = match local.phase {
        Phase::Held => lf.disk(local.kind)?,
        Phase::Handover => lf.guard(true)?,
    };
    // Withdraw the VM name first: once released, another host may take the disk.
    lf.set_owner_vms(&[])?;
    match adopt_orphan(&client, &res) {
        Ok(()) => client.release(&res)?,
        Err(e) if e.rv == -nix::libc::ENOENT => log::err(&format!(
            "lease {}: not held by this host any more (sanlock restarted?)",
            local.identity
        )),
        Err(e) => {
            return Err(
                anyhow!(e).context(format!("cannot release the lease of {}", local.identity))
            );
        }
    }
    lf.local_save(None)
}

/// Adopts this host's orphan of `res`. sanlock turns a persistent lease into an orphan when
/// its process's connection closes, which it notices asynchronously: a `remove` (or the
/// handover acquirer) right after the `add` exited may ask a moment too early, while the
/// lease is still the add's (-EEXIST, -EAGAIN, -EBUSY) or not yet listed as an orphan
/// (-ENOENT); those are retried for 2 s.
pub(crate) fn adopt_orphan(
    client: &Client,
    res: &Resource,
) -> std::result::Result<(), sanlock::Error> {
    use nix::libc::{EAGAIN, EBUSY, EEXIST, ENOENT};
    let t0 = Instant::now();
    loop {
        match client.acquire(res, sanlock::ACQUIRE_ORPHAN_ONLY) {
            Err(e)
                if [-ENOENT, -EEXIST, -EAGAIN, -EBUSY].contains(&e.rv)
                    && t0.elapsed() < Duration::from_secs(2) =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

/// The leases this host holds, from its local state: (hash, state).
pub fn local_leases(cfg: &Config) -> Vec<(String, Local)> {
    let dir = local_root().join(format!("{}.{}", cfg.lockspace, cfg.host_id));
    let mut out = Vec::new();
    for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.len() != 64 || name.contains('.') {
            continue;
        }
        if let Ok(t) = fs::read_to_string(e.path())
            && let Ok(r) = Kv::parse(&t)
            && let Ok(l) = Local::from_record(&r)
        {
            out.push((name, l));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_state_round_trips() {
        let l = Local {
            kind: Kind::Shared,
            phase: Phase::Handover,
            identity: "/srv/a b=c.img".into(),
            acquirer: Some(42),
            holders: vec![
                ("backend-vbd-5-51712".into(), "0f0e".into()),
                ("backend-vbd-6-51712".into(), "unknown".into()),
            ],
        };
        let text = l.to_record().render().unwrap();
        let back = Local::from_record(&Kv::parse(&text).unwrap()).unwrap();
        assert_eq!(back.kind, l.kind);
        assert_eq!(back.phase, l.phase);
        assert_eq!(back.identity, l.identity);
        assert_eq!(back.acquirer, l.acquirer);
        assert_eq!(back.holders, l.holders);
        assert!(Kv::parse("garbage\n").is_err());
        assert!(Local::from_record(&Kv::parse("phase=held\n").unwrap()).is_err());
    }

    #[test]
    fn modes_map_to_kinds() {
        assert_eq!(Kind::for_mode(Mode::Write), Some(Kind::Exclusive));
        assert_eq!(Kind::for_mode(Mode::Read), Some(Kind::Shared));
        assert_eq!(Kind::for_mode(Mode::Force), None);
    }

    #[test]
    fn none_never_loads_sanlock() {
        let id = Identity::of_file("/x");
        assert!(
            acquire(&Config::none(), &id, Mode::Write, "u", "k")
                .unwrap()
                .is_none()
        );
        assert!(LIB.get().is_none());
    }
}
