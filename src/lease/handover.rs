//! The migration handover acquirer (`xen-block-hotplug lease handover`, see the module
//! documentation of `lease`): started by the destination's `add` when the same VM holds
//! the disk on another host; takes the disk lease as soon as the source releases it.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Config, Kind, LeaseFile, Phase, adopt_orphan, is_busy, lib, sanlock};
use crate::log;

/// The acquirer's poll interval: the handover completes within about this long after the
/// source's `remove`.
const POLL: Duration = Duration::from_millis(200);

/// Starts the detached handover acquirer: this binary again (`/proc/self/exe`), in its own
/// process group, stdio on /dev/null, no other fd (std opens everything close-on-exec, and
/// the acquirer closes anything else it finds before it starts).
pub(crate) fn spawn_acquirer(lf: &LeaseFile, kind: Kind, timeout: u32) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let child = Command::new("/proc/self/exe")
        .arg0("xen-block-hotplug")
        .args([
            "lease",
            "handover",
            "--hash",
            &lf.hash,
            "--kind",
            kind.as_str(),
        ])
        .args(["--timeout", &timeout.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("cannot start the lease handover acquirer")?;
    Ok(child.id())
}

/// The handover acquirer's loop (`lease handover`): until `timeout`, takes the disk lease
/// as soon as the source releases it, then drops the guard. Stops early when the local
/// backend went away (its `remove` cleared the state).
pub fn run(cfg: &Config, hash: &str, kind: Kind, timeout: Duration) -> Result<()> {
    close_inherited_fds();
    let lf = LeaseFile {
        lockspace: cfg.lockspace.clone(),
        host_id: cfg.host_id,
        dir: cfg.dir.clone(),
        hash: hash.to_string(),
    };
    let lib = lib()?;
    let client = lib.register()?;
    let disk = lf.disk(kind)?;
    let t0 = Instant::now();
    let mut failures = 0;
    loop {
        {
            let _l = lf.local_lock()?;
            let Some(mut local) = lf.local_load()? else {
                return Ok(());
            };
            if local.phase != Phase::Handover {
                return Ok(());
            }
            match client.acquire(&disk, sanlock::ACQUIRE_OWNER_NOWAIT) {
                Ok(()) => {
                    lf.set_owner_vms(&local.vms())?;
                    let guard = lf.guard(true)?;
                    adopt_orphan(&client, &guard)?;
                    client.release(&guard)?;
                    local.phase = Phase::Held;
                    local.acquirer = None;
                    lf.local_save(Some(&local))?;
                    log::debug(&format!(
                        "lease of {}: handover complete after {} ms",
                        local.identity,
                        t0.elapsed().as_millis()
                    ));
                    return Ok(());
                }
                Err(e) if is_busy(e.rv) => failures = 0,
                // The daemon went away or the storage fails: the guard stays held (other
                // hosts stay refused) and this host's remove cleans up; no endless retries.
                Err(e) if failures >= 25 => {
                    bail!("lease handover of {}: giving up: {e}", local.identity)
                }
                Err(e) => {
                    failures += 1;
                    log::err(&format!("lease handover of {}: {e}", local.identity));
                }
            }
            if t0.elapsed() > timeout {
                // The guard stays held: other hosts stay refused until our remove.
                bail!(
                    "lease handover of {}: the source host did not release the disk within {} s; \
                     the disk stays guarded until this host's remove",
                    local.identity,
                    timeout.as_secs()
                );
            }
        }
        std::thread::sleep(POLL);
    }
}

/// Closes every fd above 2: nothing the parent had open (a lock, a sanlock connection)
/// may live on in the acquirer.
fn close_inherited_fds() {
    let fds: Vec<i32> = fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in fds.into_iter().filter(|fd| *fd > 2) {
        // The read_dir fd itself is already closed here; closing a stale number is harmless.
        let _ = nix::unistd::close(fd);
    }
}
