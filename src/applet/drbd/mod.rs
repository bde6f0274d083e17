//! `block-drbd` (interface doc §5.2; upstream's ships with drbd-utils).
//!
//! add, under the `block-drbd` lock: `drbdadm role` (DRBD 8 `Primary/Secondary` or DRBD 9
//! `Primary`), `drbdadm sh-dev`, `drbdadm primary` when not Primary yet, then under `block`
//! the sharing check with DRBD semantics (any other guest using the device conflicts,
//! read-only or not, as in the drbd-utils script; the same VM and its stubdom may share)
//! and `write_dev`. A refused or failed add demotes the resource again if it promoted it.
//!
//! remove: `drbdadm secondary` only when no other local vbd (of any guest, stubdoms
//! included) and no local mount still uses the device; drbd-utils' script demotes
//! unconditionally, pulling the disk from under a guest that still uses it.

pub mod parse;

use std::path::Path;

use anyhow::{Result, anyhow};

use self::parse::{Resource, Role};
use crate::applet::helper::{self, Steps};
use crate::backend::Backend;
use crate::deadline::{Deadline, STEP_FLOOR};
use crate::exec::Cmd;
use crate::lock;
use crate::log;
use crate::record::{self, Record};
use crate::sharing::SharingCheck;
use crate::watchdog;

fn drbdadm(cmd: &str, r: &Resource) -> Cmd {
    Cmd::new("drbdadm").args([cmd, &r.to_string()])
}

fn role(r: &Resource, d: &Deadline) -> Result<Role> {
    let out = drbdadm("role", r).run_ok(d)?;
    parse::parse_role(&out.stdout).map_err(|e| anyhow!("DRBD resource {r}: {e}"))
}

/// The role, or `None` when the resource is down (DRBD 8 `Unconfigured`; DRBD 9
/// `drbdsetup` "No such resource", exit status 10): nothing left to demote.
fn role_if_up(r: &Resource, d: &Deadline) -> Result<Option<Role>> {
    let cmd = drbdadm("role", r);
    let out = cmd.run(d)?;
    if !out.success() {
        if out.code == Some(10) || out.stderr.contains("No such resource") {
            return Ok(None);
        }
        return Err(cmd.failed(&out));
    }
    match parse::parse_role(&out.stdout).map_err(|e| anyhow!("DRBD resource {r}: {e}"))? {
        Role::Unconfigured => Ok(None),
        role => Ok(Some(role)),
    }
}

fn sh_dev(r: &Resource, d: &Deadline) -> Result<String> {
    let out = drbdadm("sh-dev", r).run_ok(d)?;
    parse::parse_sh_dev(&out.stdout).map_err(|e| anyhow!("DRBD resource {r}: {e}"))
}

pub fn add(be: &Backend) -> Result<()> {
    let Some(req) = helper::begin_add(be)? else {
        return Ok(());
    };
    let r = parse::parse_params(&req.params)?;
    match req.ty.as_deref() {
        None | Some("drbd") | Some("phy") => {}
        Some(t) => {
            return Err(anyhow!(
                "backend type {t:?} is not drbd or phy: block-drbd does not handle it"
            ));
        }
    }
    // The lock first: waiting behind another attach must not use up this one's waits
    // (the budget still keeps everything inside the watchdog's deadline).
    let _lock = watchdog::lock(lock::DRBD)?;
    let deadline = req.budget.wait()?;
    watchdog::phase("asking drbdadm");
    let before = role(&r, &deadline)?;
    if before == Role::Unconfigured {
        return Err(anyhow!(
            "DRBD resource {r} is not configured (drbdadm says Unconfigured): \
             bring it up first (drbdadm up {r})"
        ));
    }
    let dev_path = sh_dev(&r, &deadline)?;
    let mut rec = record::Drbd {
        backend: Some(be.path.path.clone()),
        resource: r.to_string(),
        dev_path: Some(dev_path.clone()),
        promoted: false,
        device: None,
    };
    let save = |rec: &record::Drbd| record::save(&req.key, &Record::Drbd(rec.clone()));
    save(&rec)?;
    let mut promoted = false;
    let result = (|| -> Result<()> {
        if before != Role::Primary {
            watchdog::phase("promoting the DRBD resource");
            drbdadm("primary", &r).run_ok(&deadline)?;
            promoted = true;
            rec.promoted = true;
            save(&rec)?;
        }
        let dev = helper::block_device(Path::new(&dev_path))?;
        rec.device = Some(dev.clone());
        save(&rec)?;
        // DRBD semantics: no read-only sharing between guests.
        let scan = SharingCheck {
            read_only_sharing: false,
            frontend_vm: req.scan.frontend_vm.clone(),
            ..req.scan
        };
        let _block = watchdog::lock(lock::BLOCK)?;
        helper::check_sharing(
            &scan,
            &format!("DRBD resource {r} ({})", dev.path),
            &[dev.rdev],
        )?;
        helper::publish(be, None, &dev)
    })();
    let Err(err) = result else {
        return Ok(());
    };
    let mut undo = Vec::new();
    if promoted && let Err(e) = drbdadm("secondary", &r).run_ok(&req.budget.undo()) {
        undo.push(format!("{e:#}"));
    }
    if undo.is_empty() {
        let _ = record::delete(&req.key);
    }
    Err(helper::with_undo_errors(err, undo))
}

pub fn remove(be: &Backend) -> Result<()> {
    let helper::RemoveStart {
        key,
        deadline,
        lock: _lock,
        rec,
    } = helper::begin_remove(be, lock::DRBD, |r| match r {
        Record::Drbd(r) => Some(r),
        _ => None,
    })?;
    let rec = match rec {
        Some(rec) => rec,
        None => {
            // Attached by drbd-utils' script, or before an upgrade: what params says.
            let Some(params) = be.read("params")? else {
                log::debug(&format!(
                    "{}: no record and no params: nothing to undo",
                    be.path.path
                ));
                return Ok(());
            };
            let r = parse::parse_params(&params)?;
            record::Drbd {
                backend: Some(be.path.path.clone()),
                resource: r.to_string(),
                dev_path: None,
                promoted: false,
                device: None,
            }
        }
    };
    let r = parse::parse_params(&rec.resource)?;
    let mut steps = Steps::default();
    let d = deadline.at_least(STEP_FLOOR);
    let r2 = (|| -> Result<()> {
        let dev_path = match &rec.dev_path {
            Some(p) => p.clone(),
            None => sh_dev(&r, &d)?,
        };
        let rdev = match &rec.device {
            Some(dev) => dev.rdev,
            None => match helper::block_device(Path::new(&dev_path)) {
                Ok(dev) => dev.rdev,
                Err(e) => {
                    log::debug(&format!("{dev_path}: {e:#}: nothing to demote"));
                    return Ok(());
                }
            },
        };
        let _block = watchdog::lock(lock::BLOCK)?;
        let users = helper::other_users(be, rdev)?;
        if !users.is_empty() {
            log::debug(&format!(
                "DRBD resource {r} ({dev_path}) is still used by {}: not demoting it",
                users.join(", ")
            ));
            return Ok(());
        }
        watchdog::phase("demoting the DRBD resource");
        match role_if_up(&r, &d)? {
            Some(Role::Primary) => drbdadm("secondary", &r).run_ok(&d).map(|_| ()),
            Some(other) => {
                log::debug(&format!("DRBD resource {r} is already {other}"));
                Ok(())
            }
            None => {
                log::debug(&format!("DRBD resource {r} is down: nothing to demote"));
                Ok(())
            }
        }
    })();
    steps.run(&format!("demoting DRBD resource {r}"), r2);
    steps.finish_remove(&key)
}
