//! `block-nbd` (interface doc §5.3: upstream's has not worked under libxl since 2005).
//!
//! add, under the `block-nbd` lock (NBD adds and removes serialised among themselves; the
//! global `block` lock only around the sharing check and node writes):
//! 1. pick the first free `/dev/nbdN`: one whose sysfs `pid` is absent (not connected);
//! 2. `nbd-client [-N <export>] [-R] <host> <port> /dev/nbdN` (`-u` for a unix socket;
//!    `-R` for mode `r`); if another program took the device meanwhile, the next one;
//! 3. wait for the device to have a size (the connection is up);
//! 4. record the device with the `pid` of its connection and its disk sequence number;
//! 5. under `block`: sharing check, `write_dev` (with `node`).
//!
//! remove: `nbd-client -d` on the recorded device only if it is still the connection this
//! add made (same `pid` in sysfs, same device number and disk sequence number); a device
//! since disconnected and reused by someone else is left alone.

pub mod parse;

use std::path::PathBuf;

use anyhow::{Result, anyhow};

use crate::applet::helper::{self, Steps};
use crate::backend::Backend;
use crate::deadline::{self, Deadline, STEP_FLOOR};
use crate::exec::{self, Cmd};
use crate::lock;
use crate::log;
use crate::mode::Mode;
use crate::record::{self, Record};
use crate::watchdog;

/// Devices tried when others take the free ones first.
const ATTEMPTS: usize = 3;

fn sys_dir(name: &str) -> PathBuf {
    exec::sys_path("/sys/block").join(name)
}

fn dev_path(index: u32) -> PathBuf {
    exec::sys_path("/dev").join(format!("nbd{index}"))
}

/// The pid of device `nbd<index>`'s connection, `None` when it is not connected.
fn pid_of(index: u32) -> Option<u32> {
    std::fs::read_to_string(sys_dir(&format!("nbd{index}")).join("pid"))
        .ok()
        .and_then(|t| parse::parse_pid(&t))
}

fn size_of(index: u32) -> Option<u64> {
    std::fs::read_to_string(sys_dir(&format!("nbd{index}")).join("size"))
        .ok()
        .and_then(|t| parse::parse_size(&t))
}

/// Every NBD device, and which of them are free, lowest first.
fn devices() -> Result<(usize, Vec<u32>)> {
    let dir = exec::sys_path("/sys/block");
    let entries =
        std::fs::read_dir(&dir).map_err(|e| anyhow!("cannot list {}: {e}", dir.display()))?;
    let mut all: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(parse::device_index))
        .collect();
    all.sort_unstable();
    let free = all
        .iter()
        .copied()
        .filter(|i| pid_of(*i).is_none())
        .collect();
    Ok((all.len(), free))
}

pub fn add(be: &Backend) -> Result<()> {
    let Some(req) = helper::begin_add(be)? else {
        return Ok(());
    };
    let p = parse::parse_params(&req.params)?;
    exec::find("nbd-client")?;
    // The lock first: waiting behind another attach must not use up this one's waits
    // (the budget still keeps everything inside the watchdog's deadline).
    let _lock = watchdog::lock(lock::NBD)?;
    let deadline = req.budget.wait()?;
    let (count, free) = devices()?;
    if count == 0 {
        return Err(anyhow!(
            "there are no NBD devices ({} has no nbd*): load the nbd module (modprobe nbd)",
            exec::sys_path("/sys/block").display()
        ));
    }
    if free.is_empty() {
        return Err(anyhow!(
            "all {count} NBD devices are connected: none is free for {p} \
             (more with modprobe nbd nbds_max=<n>)"
        ));
    }
    let mut rec = record::Nbd {
        backend: Some(be.path.path.clone()),
        server: Some(p.to_string()),
        nbd: String::new(),
        pid: None,
        device: None,
    };
    let save = |rec: &record::Nbd| record::save(&req.key, &Record::Nbd(rec.clone()));
    let mut connected = None;
    for &index in free.iter().take(ATTEMPTS) {
        let dev = dev_path(index);
        let dev_s = dev.to_string_lossy().into_owned();
        rec.nbd = dev_s.clone();
        // Saved before connecting, so a run killed after it still finds the device.
        save(&rec)?;
        watchdog::phase("connecting to the NBD server");
        let cmd =
            Cmd::new("nbd-client").args(parse::connect_args(&p, &dev_s, req.mode == Mode::Read));
        let out = match cmd.run(&deadline) {
            Ok(o) => o,
            Err(e) => {
                // Timed out or not run: disconnect whatever half-made connection is left.
                let _ = disconnect(index, &req.budget.undo());
                let _ = record::delete(&req.key);
                return Err(e.context(format!("cannot connect {dev_s} to {p}")));
            }
        };
        if out.success() {
            connected = Some(index);
            break;
        }
        if pid_of(index).is_some() {
            log::debug(&format!(
                "/dev/nbd{index} was taken by another program meanwhile; trying the next device"
            ));
            continue;
        }
        let _ = record::delete(&req.key);
        return Err(cmd.failed(&out).context(format!("cannot connect to {p}")));
    }
    let Some(index) = connected else {
        let _ = record::delete(&req.key);
        return Err(anyhow!(
            "other programs took every free NBD device this run tried"
        ));
    };
    let result = (|| -> Result<()> {
        let dev = dev_path(index);
        watchdog::phase("waiting for the NBD device");
        deadline::wait_for(
            &format!(
                "waiting for {} to get a size (connected to {p})",
                dev.display()
            ),
            &deadline,
            || Ok(size_of(index).filter(|s| *s > 0)),
        )?;
        let pid =
            pid_of(index).ok_or_else(|| anyhow!("{} is not connected any more", dev.display()))?;
        let device = helper::block_device(&dev)?;
        rec.pid = Some(pid);
        rec.device = Some(device.clone());
        save(&rec)?;
        let _block = watchdog::lock(lock::BLOCK)?;
        helper::check_sharing(
            &req.scan,
            &format!("NBD device {} ({p})", device.path),
            &[device.rdev],
        )?;
        helper::publish(be, Some(&device.path), &device)
    })();
    let Err(err) = result else {
        return Ok(());
    };
    let mut undo = Vec::new();
    if let Err(e) = disconnect(index, &req.budget.undo()) {
        undo.push(format!("{e:#}"));
    } else {
        let _ = record::delete(&req.key);
    }
    Err(helper::with_undo_errors(err, undo))
}

fn disconnect(index: u32, d: &Deadline) -> Result<()> {
    let dev = dev_path(index).to_string_lossy().into_owned();
    Cmd::new("nbd-client")
        .args(parse::disconnect_args(&dev))
        .run_ok(d)
        .map(|_| ())
}

pub fn remove(be: &Backend) -> Result<()> {
    let helper::RemoveStart {
        key,
        deadline,
        lock: _lock,
        rec,
    } = helper::begin_remove(be, lock::NBD, |r| match r {
        Record::Nbd(r) => Some(r),
        _ => None,
    })?;
    let Some(rec) = rec else {
        // Upstream's block-nbd never attached anything under libxl, so a device without
        // our record is not ours to disconnect.
        log::debug(&format!(
            "{}: no remove record: nothing to disconnect",
            be.path.path
        ));
        return Ok(());
    };
    let device = rec.nbd.clone();
    let index = std::path::Path::new(&device)
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse::device_index)
        .ok_or_else(|| anyhow!("remove record {key}: bad device {device:?}"))?;
    let mut steps = Steps::default();
    watchdog::phase("disconnecting the NBD device");
    let r = match ours_still(index, &rec) {
        Ok(true) => disconnect(index, &deadline.at_least(STEP_FLOOR)),
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    };
    steps.run(&format!("disconnecting {device}"), r);
    steps.finish_remove(&key)
}

/// Whether `nbd<index>` is still the connection the record describes.
fn ours_still(index: u32, rec: &record::Nbd) -> Result<bool> {
    let device = dev_path(index);
    let Some(pid) = pid_of(index) else {
        log::debug(&format!("{} is already disconnected", device.display()));
        return Ok(false);
    };
    let Some(rec_pid) = rec.pid else {
        // Killed between connecting and recording: the connection can only be ours if
        // nobody else could have connected it since, and the lock says nobody did; but
        // a device reconnected after a reboot-less crash cannot be told apart. Leave it.
        log::err(&format!(
            "{}: the record has no connection pid; not disconnecting a device that may \
             not be ours",
            device.display()
        ));
        return Ok(false);
    };
    if pid != rec_pid {
        log::err(&format!(
            "not disconnecting {}: its connection (pid {pid}) is not the one this attach \
             made (pid {rec_pid}): the device was reused",
            device.display()
        ));
        return Ok(false);
    }
    if let Some(rec_dev) = &rec.device
        && let Ok(now) = helper::block_device(&device)
        && (now.rdev != rec_dev.rdev
            || (rec_dev.diskseq.is_some()
                && now.diskseq.is_some()
                && now.diskseq != rec_dev.diskseq))
    {
        log::err(&format!(
            "not disconnecting {}: it is not the device this attach published \
             (device number or disk sequence changed)",
            device.display()
        ));
        return Ok(false);
    }
    Ok(true)
}
