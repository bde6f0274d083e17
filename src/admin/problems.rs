//! What is wrong on this host, found from the inventory: the five problem kinds of
//! `status` (README, "Operator commands").

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use super::inventory::{Inventory, Row};
use super::probe::{self, Holder, LockHolder, LoopIdentity, RecordFile, RecordedLoop};
use crate::devnum::DevNum;
use crate::mode::Mode;
use crate::xs::Store;

/// libxl kills a hotplug script after 40 s (`LIBXL_HOTPLUG_TIMEOUT`); a `block` lock held
/// longer than that is stuck.
pub const LOCK_LIMIT: Duration = Duration::from_secs(40);

/// A backend named in a problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Involved {
    pub backend: String,
    pub domain: Option<u32>,
    pub mode: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A disk the sharing rules forbid to share, used by two or more VMs, one writing.
    SharedWritable {
        /// The disk: the image file (for loops) or the device path.
        disk: String,
        device: Option<DevNum>,
        backends: Vec<Involved>,
    },
    /// A loop this binary attached (its record says so, and it is still that loop) whose
    /// backend is gone.
    OrphanLoop {
        loop_device: String,
        device: DevNum,
        backing_file: Option<String>,
        backend: String,
        record: String,
        key: String,
    },
    /// A record with neither backend nor device.
    StaleRecord {
        record: String,
        key: String,
        backend: String,
        why: String,
    },
    /// The backend's `diskseq` is not its device's: the device was re-attached since.
    DeviceReused {
        backend: String,
        device: DevNum,
        device_path: Option<String>,
        diskseq: u64,
        device_diskseq: u64,
    },
    /// The `block` lock held longer than libxl waits.
    LockHeld { lock: String, holder: LockHolder },
}

impl Problem {
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::SharedWritable { .. } => "shared-writable",
            Problem::OrphanLoop { .. } => "orphan-loop",
            Problem::StaleRecord { .. } => "stale-record",
            Problem::DeviceReused { .. } => "device-reused",
            Problem::LockHeld { .. } => "lock-held",
        }
    }

    /// The problem in plain words.
    pub fn message(&self) -> String {
        match self {
            Problem::SharedWritable {
                disk,
                device,
                backends,
            } => {
                let who: Vec<String> = backends
                    .iter()
                    .map(|b| {
                        format!(
                            "domain {} ({}, mode {})",
                            b.domain
                                .map(|d| d.to_string())
                                .unwrap_or_else(|| "?".into()),
                            b.backend,
                            b.mode.as_deref().unwrap_or("unset")
                        )
                    })
                    .collect();
                let dev = device.map(|d| format!(" ({d})")).unwrap_or_default();
                format!(
                    "{disk}{dev} is used by {}: one VM can write to it while another uses \
                     it, which the sharing rules forbid (its data can be corrupted)",
                    join_and(&who)
                )
            }
            Problem::OrphanLoop {
                loop_device,
                device,
                backing_file,
                backend,
                ..
            } => format!(
                "{loop_device} ({device}) over {} was attached for {backend}, which is gone: \
                 nothing will detach it (`sweep --apply` does)",
                backing_file.as_deref().unwrap_or("an image file")
            ),
            Problem::StaleRecord {
                record,
                backend,
                why,
                ..
            } => format!(
                "the remove record {record} is for {backend}, which is gone, and {why} \
                 (`sweep --apply` deletes it)"
            ),
            Problem::DeviceReused {
                backend,
                device,
                device_path,
                diskseq,
                device_diskseq,
            } => format!(
                "{backend} was given {} ({device}) with disk sequence {diskseq:x}, but the \
                 device now has {device_diskseq:x}: it was detached and attached again, so \
                 the guest may see another disk",
                device_path.as_deref().unwrap_or("its device")
            ),
            Problem::LockHeld { lock, holder } => {
                let open: Vec<String> = holder
                    .open_by
                    .iter()
                    .map(|(p, c)| format!("{p} ({c})"))
                    .collect();
                format!(
                    "the block lock {lock} has been held for about {} s, longer than libxl's \
                     {} s: every disk attach and detach on this host waits; holder pid {}{}{}",
                    holder.held_for.as_secs(),
                    LOCK_LIMIT.as_secs(),
                    holder.pid,
                    if holder.alive { "" } else { " (exited)" },
                    if open.is_empty() {
                        String::new()
                    } else {
                        format!(", open by {}", open.join(", "))
                    }
                )
            }
        }
    }

    pub fn to_json(&self) -> Value {
        let mut v = match self {
            Problem::SharedWritable {
                disk,
                device,
                backends,
            } => json!({
                "disk": disk,
                "device": device.map(|d| d.to_string()),
                "backends": backends.iter().map(|b| json!({
                    "backend": b.backend,
                    "domain": b.domain,
                    "mode": b.mode,
                })).collect::<Vec<_>>(),
            }),
            Problem::OrphanLoop {
                loop_device,
                device,
                backing_file,
                backend,
                record,
                ..
            } => json!({
                "loop": loop_device,
                "device": device.to_string(),
                "backing_file": backing_file,
                "backend": backend,
                "record": record,
            }),
            Problem::StaleRecord {
                record,
                backend,
                why,
                ..
            } => json!({ "record": record, "backend": backend, "why": why }),
            Problem::DeviceReused {
                backend,
                device,
                device_path,
                diskseq,
                device_diskseq,
            } => json!({
                "backend": backend,
                "device": device.to_string(),
                "device_path": device_path,
                "diskseq": format!("{diskseq:x}"),
                "device_diskseq": format!("{device_diskseq:x}"),
            }),
            Problem::LockHeld { lock, holder } => json!({
                "lock": lock,
                "pid": holder.pid,
                "pid_alive": holder.alive,
                "open_by": holder.open_by.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
                "seconds": holder.held_for.as_secs(),
            }),
        };
        if let Value::Object(m) = &mut v {
            m.insert("kind".into(), self.kind().into());
            m.insert("message".into(), self.message().into());
        }
        v
    }
}

fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// A record of a loop whose backend is gone, with what its loop is now.
pub struct GoneLoop<'a> {
    pub file: &'a RecordFile,
    pub recorded: RecordedLoop,
    pub identity: LoopIdentity,
}

/// The loop records whose backend is not in the inventory. Records of other kinds
/// (`block-iscsi`, `block-nbd`, `block-drbd`) are left to their own remove: their device
/// nodes outlive the connection, so "no device" cannot be told from here.
pub fn gone_loops<'a>(store: &dyn Store, inv: &'a Inventory) -> Result<Vec<GoneLoop<'a>>> {
    let mut out = Vec::new();
    for f in &inv.records {
        if f.kind != "loop" || inv.rows.iter().any(|r| r.record.as_deref() == Some(&f.key)) {
            continue;
        }
        // An add that began after the backends were listed has a backend by now.
        if probe::list(store, &f.backend)?.is_some() {
            continue;
        }
        let recorded = probe::recorded_loop(f)?;
        let identity = probe::loop_identity(&recorded)?;
        out.push(GoneLoop {
            file: f,
            recorded,
            identity,
        });
    }
    Ok(out)
}

impl GoneLoop<'_> {
    pub fn problem(&self) -> Problem {
        let a = &self.recorded.attached;
        match &self.identity {
            LoopIdentity::Ours => Problem::OrphanLoop {
                loop_device: a.path.clone(),
                device: a.rdev,
                backing_file: probe::device_info(a.rdev)
                    .loop_backing
                    .or_else(|| self.recorded.params.clone()),
                backend: self.file.backend.clone(),
                record: self.file.file.clone(),
                key: self.file.key.clone(),
            },
            LoopIdentity::Free => Problem::StaleRecord {
                record: self.file.file.clone(),
                key: self.file.key.clone(),
                backend: self.file.backend.clone(),
                why: format!("its loop {} is no longer attached", a.path),
            },
            LoopIdentity::Reused(why) => Problem::StaleRecord {
                record: self.file.file.clone(),
                key: self.file.key.clone(),
                backend: self.file.backend.clone(),
                why: format!("its loop was reused since: {why}"),
            },
        }
    }
}

/// Backends whose `diskseq` differs from their device's.
pub fn reused_devices(inv: &Inventory) -> Vec<Problem> {
    inv.rows
        .iter()
        .filter_map(|r| {
            let (want, have, device) = (r.diskseq_value()?, r.info.diskseq?, r.dev?);
            (want != have).then(|| Problem::DeviceReused {
                backend: r.path.clone(),
                device,
                device_path: r.physical_device_path.clone(),
                diskseq: want,
                device_diskseq: have,
            })
        })
        .collect()
}

/// What identifies a disk across backends: a device number (with the related devices of
/// each backend's device), or the image file under a loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Token {
    Dev(DevNum),
    File(DevNum, u64),
}

/// Disks used by two or more VMs where the sharing rules find a conflict. Backends are
/// first grouped by disk from the inventory (cheap, no xenstore); only groups that span
/// two domains with a writer are then judged, writer by writer, by the sharing module's
/// own walk (`probe::holders`) from that writer's side, as `block add` would judge it now.
pub fn shared_writable(store: &dyn Store, inv: &Inventory) -> Result<Vec<Problem>> {
    let rows = &inv.rows;
    let mut tokens: Vec<Vec<Token>> = Vec::with_capacity(rows.len());
    for r in rows {
        let mut t = Vec::new();
        if let Some(d) = r.dev {
            t.extend(probe::related_devices(d).into_iter().map(Token::Dev));
            if r.info.loop_backing.is_some()
                && let Some((fd, ino)) = r
                    .physical_device_path
                    .as_deref()
                    .and_then(probe::loop_backing)
            {
                t.push(Token::File(fd, ino));
            }
        }
        tokens.push(t);
    }
    // Union-find over rows sharing a token.
    let mut parent: Vec<usize> = (0..rows.len()).collect();
    fn find(p: &mut [usize], mut i: usize) -> usize {
        while let Some(&up) = p.get(i) {
            if up == i {
                break;
            }
            i = up;
        }
        i
    }
    let mut first: BTreeMap<Token, usize> = BTreeMap::new();
    for (i, ts) in tokens.iter().enumerate() {
        for t in ts {
            match first.get(t) {
                Some(&j) => {
                    let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                    if let Some(slot) = parent.get_mut(a) {
                        *slot = b;
                    }
                }
                None => {
                    first.insert(*t, i);
                }
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..rows.len() {
        if tokens.get(i).is_some_and(|t| !t.is_empty()) {
            let root = find(&mut parent, i);
            groups.entry(root).or_default().push(i);
        }
    }
    let mut out = Vec::new();
    for members in groups.values() {
        let group: Vec<&Row> = members.iter().filter_map(|&i| rows.get(i)).collect();
        let mut doms: Vec<&str> = group.iter().map(|r| r.dom.as_str()).collect();
        doms.sort_unstable();
        doms.dedup();
        let writer = group
            .iter()
            .any(|r| Mode::canonicalise_other(r.mode.as_deref()).writable());
        if doms.len() < 2 || !writer {
            continue;
        }
        let mut involved: Vec<String> = Vec::new();
        for (r, ts) in members
            .iter()
            .filter_map(|&i| Some((rows.get(i)?, tokens.get(i)?)))
        {
            // Judged from the writers' side only: every conflict has a `w` member (`r`
            // with `r` never conflicts, `r` with `w!` neither, and `w!` skips the check
            // in `block add`), and a `w` request conflicts with every other VM, reader or
            // writer, so its walk finds them all (`same_vm` is symmetric). A disk a
            // hundred guests read costs one walk per writer, not per reader.
            let mode = Mode::canonicalise_other(r.mode.as_deref());
            if mode != Mode::Write {
                continue;
            }
            let (Some(me), Some(domid)) = (probe::backend_path(&r.path, &r.kind), r.domain) else {
                continue;
            };
            let cands = match ts.iter().find_map(|t| match t {
                Token::File(d, i) => Some((*d, *i)),
                Token::Dev(_) => None,
            }) {
                Some((d, i)) => probe::file_candidates(&probe::loops_over(d, i)?),
                None => r.dev.map(probe::related_devices).unwrap_or_default(),
            };
            let uuid = probe::frontend_uuid(store, domid)?;
            let guests: Vec<String> =
                probe::holders(store, &me, domid, uuid.as_deref(), mode, &cands)?
                    .into_iter()
                    .filter_map(|h| match h {
                        Holder::Guest { backend, .. } => Some(backend),
                        Holder::Local { .. } => None,
                    })
                    .collect();
            if !guests.is_empty() {
                for b in std::iter::once(r.path.clone()).chain(guests) {
                    if !involved.contains(&b) {
                        involved.push(b);
                    }
                }
            }
        }
        if involved.is_empty() {
            continue;
        }
        involved.sort();
        let lead = group.first().copied();
        let disk = lead
            .and_then(|r| {
                r.info
                    .loop_backing
                    .clone()
                    .or_else(|| r.physical_device_path.clone())
            })
            .unwrap_or_else(|| "a disk".to_string());
        out.push(Problem::SharedWritable {
            disk,
            device: lead.and_then(|r| r.dev),
            backends: involved
                .into_iter()
                .map(|b| {
                    let row = rows.iter().find(|r| r.path == b);
                    Involved {
                        domain: row
                            .and_then(|r| r.domain)
                            .or_else(|| b.split('/').nth(2).and_then(|d| d.parse().ok())),
                        mode: row.and_then(|r| r.mode.clone()),
                        backend: b,
                    }
                })
                .collect(),
        });
    }
    Ok(out)
}

/// The lock problem, if the lock is held too long.
pub fn lock_problem(holder: Option<LockHolder>) -> Option<Problem> {
    let holder = holder?;
    (holder.held_for > LOCK_LIMIT).then(|| Problem::LockHeld {
        lock: probe::lock_file(),
        holder,
    })
}

/// Every problem, problems that threaten data first.
pub fn find(store: &dyn Store, inv: &Inventory) -> Result<Vec<Problem>> {
    let mut out = shared_writable(store, inv)?;
    out.extend(reused_devices(inv));
    out.extend(gone_loops(store, inv)?.iter().map(GoneLoop::problem));
    out.extend(lock_problem(probe::lock_holder()?));
    Ok(out)
}
