//! A deadline for the whole run, well under libxl's 40 s SIGKILL.
//!
//! Blocking calls (a hung xenstored, a `block` lock held by a stuck shell script) cannot be
//! interrupted portably, so a watchdog thread ends the process instead: it logs what the
//! run was doing, tries (for at most two seconds, on a fresh connection) to leave
//! `hotplug-error` and `hotplug-status=error` through the run's `Reporter` (which writes
//! nothing if the main thread reported first), and exits 1. Killed mid-attach, the remove
//! record still finds the loop device, and the kernel drops the `block` flock with our fd.

use std::borrow::Cow;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

use crate::invocation::BackendPath;
use crate::lock::{self, Lock, LockError};
use crate::log;
use crate::report::Reporter;
use crate::xs::XenStore;

/// Default deadline in seconds; `XEN_BLOCK_HOTPLUG_TIMEOUT` overrides it (1 to 3600).
pub const DEFAULT_SECS: u64 = 30;

/// When the watchdog was started: the run's deadline counts from here.
static STARTED: OnceLock<Instant> = OnceLock::new();

/// What a wait inside the run leaves before the watchdog's deadline, so that the wait's
/// own error (which says what was waited for) is the one reported.
const WAIT_MARGIN: Duration = Duration::from_secs(1);

static PHASE: Mutex<Cow<'static, str>> = Mutex::new(Cow::Borrowed("starting"));

/// Records what the run is doing, for the timeout message.
pub fn phase(what: impl Into<Cow<'static, str>>) {
    if let Ok(mut p) = PHASE.lock() {
        *p = what.into();
    }
}

/// What the run is doing while it waits for, then holds, the lock `name`: a stuck
/// `block-iscsi` lock must not be reported as the `block` lock.
fn lock_phases(name: &str) -> (String, String) {
    (
        format!("waiting for the {name} lock"),
        format!("holding the {name} lock"),
    )
}

/// The lock `name` in `dir`, the phase saying which lock the run waits for and holds.
pub fn claim_lock(dir: &Path, name: &str) -> Result<Lock, LockError> {
    let (waiting, holding) = lock_phases(name);
    phase(waiting);
    let l = Lock::claim_in(dir, name);
    phase(holding);
    l
}

/// `claim_lock` in the lock directory of `locking.sh`.
pub fn lock(name: &str) -> Result<Lock, LockError> {
    claim_lock(&lock::lock_dir(), name)
}

pub fn deadline() -> Duration {
    let secs = std::env::var("XEN_BLOCK_HOTPLUG_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| (1..=3600).contains(s))
        .unwrap_or(DEFAULT_SECS);
    Duration::from_secs(secs)
}

/// Until when a wait inside this run may last (a xenstore watch for a backend's state):
/// the watchdog's deadline less a second. Without a watchdog (unit tests), counted from
/// now.
pub fn run_deadline() -> Instant {
    let started = *STARTED.get_or_init(Instant::now);
    let limit = deadline().saturating_sub(WAIT_MARGIN);
    started + limit
}

/// Starts the watchdog for a run on `backend`, reporting through `reporter`.
pub fn start(backend: BackendPath, reporter: Arc<Reporter>) {
    let _ = STARTED.set(Instant::now());
    let limit = deadline();
    let spawned = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            std::thread::sleep(limit);
            let what = PHASE
                .lock()
                .map(|p| p.to_string())
                .unwrap_or_else(|_| "running".to_string());
            let msg = format!(
                "timed out after {} s while {what}; giving up before libxl's 40 s kill",
                limit.as_secs()
            );
            let (tx, rx) = mpsc::channel();
            let _ = std::thread::Builder::new().spawn(move || {
                match XenStore::open() {
                    Ok(store) => reporter.failure(&store, &backend, &anyhow!(msg)),
                    Err(e) => log::err(&format!("{msg}; and {e:#}")),
                }
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(Duration::from_secs(2));
            std::process::exit(1);
        });
    if let Err(e) = spawned {
        log::err(&format!("cannot start the watchdog thread: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_name_the_lock_waited_for() {
        let want = |w: &str, h: &str| (w.to_string(), h.to_string());
        assert_eq!(
            lock_phases(lock::BLOCK),
            want("waiting for the block lock", "holding the block lock")
        );
        assert_eq!(
            lock_phases(lock::ISCSI),
            want(
                "waiting for the block-iscsi lock",
                "holding the block-iscsi lock"
            )
        );
        assert_eq!(
            lock_phases(lock::DRBD),
            want(
                "waiting for the block-drbd lock",
                "holding the block-drbd lock"
            )
        );
    }
}
