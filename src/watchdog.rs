//! A deadline for the whole run, well under libxl's 40 s SIGKILL.
//!
//! Blocking calls (a hung xenstored, a `block` lock held by a stuck shell script) cannot be
//! interrupted portably, so a watchdog thread ends the process instead: it logs what the
//! run was doing, tries (for at most two seconds, on a fresh connection) to leave
//! `hotplug-error` and `hotplug-status=error`, and exits 1. Killed mid-attach, the remove
//! record still finds the loop device, and the kernel drops the `block` flock with our fd.

use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::anyhow;

use crate::backend::Backend;
use crate::invocation::BackendPath;
use crate::log;
use crate::xs::XenStore;

/// Default deadline in seconds; `XEN_BLOCK_HOTPLUG_TIMEOUT` overrides it (1 to 3600).
pub const DEFAULT_SECS: u64 = 30;

static PHASE: Mutex<&'static str> = Mutex::new("starting");

/// Records what the run is doing, for the timeout message.
pub fn phase(what: &'static str) {
    if let Ok(mut p) = PHASE.lock() {
        *p = what;
    }
}

pub fn deadline() -> Duration {
    let secs = std::env::var("XEN_BLOCK_HOTPLUG_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| (1..=3600).contains(s))
        .unwrap_or(DEFAULT_SECS);
    Duration::from_secs(secs)
}

/// Starts the watchdog for a run on `backend` (if known).
pub fn start(backend: Option<BackendPath>) {
    let limit = deadline();
    let spawned = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            std::thread::sleep(limit);
            let what = PHASE.lock().map(|p| *p).unwrap_or("running");
            let msg = format!(
                "timed out after {} s while {what}; giving up before libxl's 40 s kill",
                limit.as_secs()
            );
            log::err(&msg);
            if let Some(path) = backend {
                let (tx, rx) = mpsc::channel();
                let _ = std::thread::Builder::new().spawn(move || {
                    if let Ok(store) = XenStore::open() {
                        Backend::new(&store, path).report_failure(&anyhow!(msg));
                    }
                    let _ = tx.send(());
                });
                let _ = rx.recv_timeout(Duration::from_secs(2));
            }
            std::process::exit(1);
        });
    if let Err(e) = spawned {
        log::err(&format!("cannot start the watchdog thread: {e}"));
    }
}
