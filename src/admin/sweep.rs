//! `xen-block-hotplug sweep [--apply]`: what is safe to mend, and with `--apply` mending
//! it under the `block` lock.
//!
//! Mended: orphan loops (detached only after the identity checks `remove` makes: device
//! number, backing inode, diskseq) and stale loop records (deleted). Never touched: a
//! device a live backend uses, a loop no record of ours names, a loop mounted or with
//! something stacked on it in this domain, a `shared-writable` disk; those are reported.

use std::time::Duration;

use anyhow::Result;

use super::inventory::Inventory;
use super::probe::{self, LoopIdentity, Mount, Record, RecordedLoop};
use super::problems::{self, GoneLoop, Problem};
use super::table;
use crate::devnum::DevNum;
use crate::xs::Store;

/// How long `--apply` waits for the `block` lock before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);

/// One thing to mend.
pub struct Mend {
    pub problem: Problem,
    pub key: String,
    pub backend: String,
    /// The record as inspected; `--apply` mends only if it is still exactly this.
    pub record: Record,
    pub recorded: RecordedLoop,
    /// Detach the loop first (an orphan), or only delete the record (stale).
    pub detach: bool,
}

/// Something reported and left alone, with why.
pub struct Left {
    pub problem: Problem,
    pub why: Option<String>,
}

pub struct Plan {
    pub mend: Vec<Mend>,
    pub left: Vec<Left>,
}

pub fn plan(store: &dyn Store) -> Result<Plan> {
    let inv = Inventory::read(store)?;
    let shared = problems::shared_writable(store, &inv)?;
    // Devices and image files of shared-writable disks: never touched.
    let mut shared_devs: Vec<DevNum> = Vec::new();
    let mut shared_files: Vec<(DevNum, u64)> = Vec::new();
    for p in &shared {
        if let Problem::SharedWritable { backends, .. } = p {
            for b in backends {
                if let Some(r) = inv.rows.iter().find(|r| r.path == b.backend) {
                    shared_devs.extend(r.dev);
                    shared_files.extend(
                        r.physical_device_path
                            .as_deref()
                            .and_then(probe::loop_backing),
                    );
                }
            }
        }
    }
    let mut left: Vec<Left> = shared
        .into_iter()
        .map(|problem| Left { problem, why: None })
        .collect();
    left.extend(
        problems::reused_devices(&inv)
            .into_iter()
            .map(|problem| Left { problem, why: None }),
    );
    left.extend(
        problems::lock_problem(probe::lock_holder()?).map(|problem| Left { problem, why: None }),
    );
    let mut mend = Vec::new();
    let mut mounts = None;
    for g in problems::gone_loops(store, &inv)? {
        let problem = g.problem();
        let detach = g.identity == LoopIdentity::Ours;
        if detach {
            let why = match untouchable(&inv, &g, &shared_devs, &shared_files, &mut mounts)? {
                Some(why) => why,
                None => {
                    mend.push(mended(g, problem, true));
                    continue;
                }
            };
            left.push(Left {
                problem,
                why: Some(why),
            });
        } else {
            mend.push(mended(g, problem, false));
        }
    }
    Ok(Plan { mend, left })
}

fn mended(g: GoneLoop<'_>, problem: Problem, detach: bool) -> Mend {
    Mend {
        problem,
        key: g.file.key.clone(),
        backend: g.file.backend.clone(),
        record: g.file.record.clone(),
        recorded: g.recorded,
        detach,
    }
}

/// Why an orphan loop must not be detached, if it must not.
fn untouchable(
    inv: &Inventory,
    g: &GoneLoop<'_>,
    shared_devs: &[DevNum],
    shared_files: &[(DevNum, u64)],
    mounts: &mut Option<Vec<Mount>>,
) -> Result<Option<String>> {
    let dev = g.recorded.attached.rdev;
    let related = probe::related_devices(dev);
    if let Some(r) = inv.rows.iter().find(|r| {
        r.dev.is_some_and(|d| related.contains(&d))
            || r.params
                .as_deref()
                .and_then(probe::params_device)
                .is_some_and(|d| related.contains(&d))
    }) {
        return Ok(Some(format!("the live backend {} uses it", r.path)));
    }
    if shared_devs.iter().any(|d| related.contains(d)) || shared_files.contains(&g.recorded.backing)
    {
        return Ok(Some("its disk is shared-writable: mend that first".into()));
    }
    let mounts = match mounts {
        Some(m) => m,
        None => mounts.insert(probe::local_mounts()?),
    };
    if let Some(m) = mounts.iter().find(|m| related.contains(&m.dev)) {
        return Ok(Some(format!(
            "it is mounted at {} in this domain",
            m.mount_point
        )));
    }
    if related.iter().any(|d| probe::has_kernel_holders(*d)) {
        return Ok(Some("a device is stacked on it in this domain".into()));
    }
    Ok(None)
}

/// What `--apply` did with one item.
pub struct Done {
    pub what: String,
    pub mended: bool,
}

/// Mends the plan under the `block` lock, re-checking each item first: the record must be
/// unchanged and its backend still gone, and the loop is detached only through the
/// identity checks of `remove`.
pub fn apply(store: &dyn Store, plan: &Plan) -> Result<Vec<Done>> {
    let mut done = Vec::new();
    if plan.mend.is_empty() {
        return Ok(done);
    }
    let _lock = probe::claim_block_lock(LOCK_WAIT)?;
    for m in &plan.mend {
        // One item failing does not hide what the others did.
        done.push(mend_one(store, m).unwrap_or_else(|e| Done {
            what: format!("could not mend {}: {e:#}", m.key),
            mended: false,
        }));
    }
    Ok(done)
}

/// One item, the lock held.
fn mend_one(store: &dyn Store, m: &Mend) -> Result<Done> {
    if probe::reload(&m.key)?.as_ref() != Some(&m.record) {
        return Ok(Done {
            what: format!(
                "left the record {}: it changed or went away meanwhile",
                m.key
            ),
            mended: false,
        });
    }
    if probe::list(store, &m.backend)?.is_some() {
        return Ok(Done {
            what: format!("left the record {}: {} exists again", m.key, m.backend),
            mended: false,
        });
    }
    let a = &m.recorded.attached;
    let what = if m.detach {
        match probe::detach_if_ours(&m.recorded)? {
            LoopIdentity::Ours => format!("detached {} ({})", a.path, a.rdev),
            LoopIdentity::Free => format!("{} was already detached", a.path),
            LoopIdentity::Reused(why) => format!("did not detach: {why}"),
        }
    } else {
        format!("{} is not ours any more", a.path)
    };
    probe::release_lease(&m.record)?; // cluster lease (issue 15), as remove does
    probe::delete_record(&m.key)?;
    Ok(Done {
        what: format!("{what}; deleted the record {}", m.key),
        mended: true,
    })
}

impl Plan {
    /// Dry run: 0 when nothing is to be mended or reported, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.mend.is_empty() || !self.left.is_empty())
    }

    pub fn human(&self, done: Option<&[Done]>) -> String {
        let mut out = String::new();
        match done {
            None if self.mend.is_empty() => out.push_str("Nothing to mend.\n"),
            None => {
                out.push_str("Would mend (run again with --apply):\n");
                for m in &self.mend {
                    let a = &m.recorded.attached;
                    let what = match &m.problem {
                        Problem::OrphanLoop { backing_file, .. } => format!(
                            "detach {} ({}) over {}, attached for {} (gone), and delete its \
                             record {}",
                            a.path,
                            a.rdev,
                            backing_file.as_deref().unwrap_or("an image file"),
                            m.backend,
                            m.key
                        ),
                        Problem::StaleRecord { why, .. } => format!(
                            "delete the record {}: {} is gone, and {why}",
                            m.key, m.backend
                        ),
                        other => other.message(),
                    };
                    out.push_str(&table::wrap(
                        &what,
                        &format!("* {}: ", m.problem.kind()),
                        "    ",
                    ));
                }
            }
            Some([]) => out.push_str("Nothing to mend.\n"),
            Some(done) => {
                out.push_str("Mended:\n");
                for d in done {
                    out.push_str(&table::wrap(&d.what, "* ", "    "));
                }
            }
        }
        if !self.left.is_empty() {
            out.push_str("Left alone (reported only):\n");
            for l in &self.left {
                let text = match (&l.problem, &l.why) {
                    (
                        Problem::OrphanLoop {
                            loop_device,
                            device,
                            backing_file,
                            backend,
                            ..
                        },
                        Some(w),
                    ) => format!(
                        "{loop_device} ({device}) over {}, attached for {backend} (gone), is \
                         not touched: {w}.",
                        backing_file.as_deref().unwrap_or("an image file")
                    ),
                    (p, Some(w)) => format!("{} Not touched: {w}.", p.message()),
                    (p, None) => p.message(),
                };
                out.push_str(&table::wrap(
                    &text,
                    &format!("* {}: ", l.problem.kind()),
                    "    ",
                ));
            }
        }
        out
    }
}
