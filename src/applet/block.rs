//! The `block` script (interface doc §4.1-§4.5), written once for every dom0 OS and
//! generic over the platform (`platform::Platform`), which says only what differs.
//!
//! add:
//! 1. nothing if the backend is published already (libxl may call add twice);
//! 2. classify `params` once (`Platform::classify`); what is neither a device nor a file
//!    goes to the `block-<type>` script, or is refused;
//! 3. a device (phy; on FreeBSD also a file used as is): under the `block` lock, the
//!    sharing check on it and its related devices, then publish;
//! 4. a file: under the `block` lock, a left-over record of this backend is undone, the
//!    backend must still be in InitWait, the file is opened in the requested mode, the
//!    devices already made from it go through the sharing check, and a new device is made
//!    (loop, vnd) with its remove record written before it is bound; then publish, undoing
//!    the attach if that fails.
//!
//! remove: the record's device is detached if it is still ours; without a record, a device
//! named by the backend's nodes (upstream's attach) is, if `params` still backs it; a
//! `params` of another type goes to its `block-<type>` script.

use anyhow::{Context, Result, bail};

use crate::backend::Backend;
use crate::invocation::Action;
use crate::lock::Lock;
use crate::log;
use crate::mode::Mode;
use crate::platform::{Device, FileTarget, Identity, LegacyNodes, Platform, Target};
use crate::report::busy;
use crate::request::{
    AddNodes, Frontend, read_only_file, read_only_file_because, refused_write, require_init_wait,
};
use crate::script::Script;
use crate::sharing::{self, SharingCheck};
use crate::state::Record;
use crate::watchdog;

/// The `block` lock's name, shared with upstream's `locking.sh` (interface doc §6).
pub const BLOCK_LOCK: &str = "block";

/// Runs `block add` or `block remove` for `be` on platform `p`.
pub fn run<P: Platform>(p: &P, action: Action, be: &Backend, script: &Script) -> Result<()> {
    match action {
        Action::Add => add(p, be, script),
        Action::Remove => remove(p, be, script),
    }
}

/// What `params` names, once it is known to be ours.
enum Ours {
    Device(Device),
    File(FileTarget),
}

fn add<P: Platform>(p: &P, be: &Backend, script: &Script) -> Result<()> {
    let Some(nodes) = AddNodes::read(be, P::PUBLISHED)? else {
        return Ok(());
    };
    let target = match p.classify(&nodes.params)? {
        Target::Device(d) => Ours::Device(d),
        Target::File(f) => Ours::File(f),
        Target::Other { what } => {
            return Err(script.hand_over(&nodes.params, &what, nodes.ty.as_deref()));
        }
    };
    let check = Frontend::read(be, &nodes.mode)?.sharing_check(be, p);
    match target {
        Ours::Device(dev) => add_device(p, be, &check, dev),
        Ours::File(file) => add_file(p, be, &check, file),
    }
}

fn claim_lock<P: Platform>(p: &P) -> Result<Lock> {
    watchdog::claim_lock(&p.lock_dir(), BLOCK_LOCK)
}

fn log_held(lock: &Lock) {
    // bench/run reads this line.
    log::debug(&format!(
        "block lock held for {} us",
        lock.held_for().as_micros()
    ));
}

fn add_device<P: Platform>(
    p: &P,
    be: &Backend,
    check: &SharingCheck<P>,
    dev: Device,
) -> Result<()> {
    let seq = p.diskseq(&dev);
    let noun = if dev.file_mode.is_some() {
        "File"
    } else {
        "Device"
    };
    // A file used as is (FreeBSD): refused read-write when it cannot be written.
    if let Some(perm) = dev.file_mode
        && check.mode.writable()
    {
        if perm & 0o222 == 0 {
            return Err(read_only_file(&dev.path));
        }
        if let Err(e) = p.open_for_writing(&dev)
            && refused_write(&e)
        {
            return Err(read_only_file_because(&dev.path, e));
        }
    }
    let lock = claim_lock(p)?;
    if check.mode != Mode::Force
        && let Some(h) = check.check(&p.related(&dev)?)?
    {
        let what = if h.ident() == dev.ident {
            format!("{noun} {}", dev.path)
        } else {
            p.related_what(&dev, h.dev())
        };
        return Err(busy(sharing::busy_message(&what, check.mode, &h)));
    }
    let pd = p.format_physical_device(dev.ident);
    be.write_dev(None, &dev.path, pd.as_deref(), seq)?;
    log_held(&lock);
    Ok(())
}

fn add_file<P: Platform>(
    p: &P,
    be: &Backend,
    check: &SharingCheck<P>,
    file: FileTarget,
) -> Result<()> {
    let lock = claim_lock(p)?;
    let key = be.path.state_key();
    // A record for this backend path without a published device is an attach that never
    // finished (killed, or the backend was torn down and re-created): that device belongs
    // to no one now. Detach it (with its identity checks) instead of forgetting it.
    if let Some(old) = p.load_record(&key)? {
        log::err(&format!("{key}: cleaning up an unfinished earlier attach"));
        p.detach_recorded(&key, &old)?;
        p.delete_record(&key)?;
    }
    require_init_wait(be)?;
    let path = file.path.as_str();
    // Upstream's check, for `w` only: `w!` is the administrator's "I know".
    if check.mode == Mode::Write && file.perm & 0o222 == 0 {
        return Err(read_only_file(path));
    }
    let read_only = check.mode == Mode::Read;
    let opened = match p.open_file(&file, read_only) {
        Ok(o) => o,
        Err(e) if !read_only && refused_write(&e) => {
            return Err(read_only_file_because(path, e));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open {path}")),
    };
    if (opened.dev, opened.ino) != (file.dev, file.ino) {
        bail!("{path} was replaced while being attached");
    }
    if check.mode != Mode::Force {
        // Any use of a device already made from the file is a use of the file.
        let made = p.attached_by(&file)?;
        let mut cands: Vec<Identity> = Vec::new();
        for a in &made {
            for r in p.related_to_attachment(a.dev) {
                if !cands.contains(&Identity::Dev(r)) {
                    cands.push(Identity::Dev(r));
                }
            }
        }
        if let Some(h) = check.check(&cands)? {
            let via = made
                .iter()
                .find(|a| a.dev == h.dev())
                .or_else(|| {
                    made.iter()
                        .find(|a| p.related_to_attachment(a.dev).contains(&h.dev()))
                })
                .map(|a| a.label.clone())
                .unwrap_or_else(|| h.dev().to_string());
            let what = format!("File {path} {} {via},\nwhich", P::ATTACHED_VERB);
            return Err(busy(sharing::busy_message(&what, check.mode, &h)));
        }
    }

    let mut rec = Record::default();
    rec.set("kind", P::RECORD_KIND)
        .set("backend", be.path.path.as_str())
        .set("params", path);
    let save = |r: &Record| p.save_record(&key, r);
    let attached = p
        .attach(&file, opened, read_only, &mut rec, &save)
        .inspect_err(|_| {
            let _ = p.delete_record(&key);
        })?;
    let undo = |e: anyhow::Error| -> anyhow::Error {
        if let Err(d) = p.undo_attach(&attached) {
            log::err(&format!(
                "could not undo attach of {}: {d:#}",
                attached.path
            ));
            return e;
        }
        let _ = p.delete_record(&key);
        e
    };
    p.save_record(&key, &rec).map_err(undo)?;
    let pd = p.format_physical_device(Identity::Dev(attached.rdev));
    be.write_dev(
        Some((P::ATTACHED_NODE, &attached.path)),
        &attached.path,
        pd.as_deref(),
        attached.diskseq,
    )
    .map_err(undo)?;
    log_held(&lock);
    Ok(())
}

fn remove<P: Platform>(p: &P, be: &Backend, script: &Script) -> Result<()> {
    let key = be.path.state_key();
    if let Some(rec) = p.load_record(&key)? {
        if rec.get("kind") == Some(P::RECORD_KIND) {
            let _lock = claim_lock(p)?;
            p.detach_recorded(&key, &rec)?;
            p.delete_record(&key)?;
        } else {
            // Written by another personality (block-iscsi, ...) for this backend: its own
            // remove undoes it, not ours.
            log::err(&format!(
                "{key}: the record is a {} attachment, not a {}: left for its own script",
                rec.get("kind").unwrap_or("unknown"),
                P::RECORD_KIND
            ));
        }
        return finish_remove::<P>(be);
    }
    // No record: a phy backend, one attached by the shell script, or nothing we know.
    let target = match be.read("params")? {
        Some(params) => Some(p.classify(&params)?),
        None => None,
    };
    let file = match &target {
        // phy: nothing was attached.
        Some(Target::Device(_)) => return finish_remove::<P>(be),
        Some(Target::Other { .. }) => {
            if let Some(helper) = script.helper_for(be.read("type")?.as_deref()) {
                return Err(script.exec(&helper));
            }
            None
        }
        Some(Target::File(f)) => Some(f),
        None => None,
    };
    match be.read(P::ATTACHED_NODE)? {
        Some(node) => {
            let nodes = LegacyNodes {
                node,
                physical_device: be.read("physical-device")?,
                diskseq: be.read("diskseq")?,
            };
            let _lock = claim_lock(p)?;
            p.detach_legacy(&nodes, file)?;
        }
        None => log::debug(&format!(
            "{}: no record and no {} node: nothing to detach",
            be.path.path,
            P::ATTACHED_NODE
        )),
    }
    finish_remove::<P>(be)
}

/// Upstream's NetBSD script removes the backend directory itself; libxl does elsewhere.
fn finish_remove<P: Platform>(be: &Backend) -> Result<()> {
    if P::REMOVES_BACKEND {
        log::debug(&format!("Removing {} from xenstore.", be.path.path));
        be.store.rm(&be.path.path)?;
    }
    Ok(())
}
