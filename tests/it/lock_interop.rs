//! Our `block` lock and Debian's real, unmodified `/etc/xen/scripts/locking.sh` exclude
//! each other, in both directions. Both sides use the real protocol on the same file: the
//! test's `<run>/xen-hotplug/block`, which the shell sees as `/var/run/xen-hotplug/block`
//! in its private mount namespace (`common::in_private_run`) and we are pointed at with
//! `XEN_BLOCK_HOTPLUG_LOCK_DIR` (or `Lock::claim_in`), not the host's.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use xen_block_hotplug::lock::Lock;

#[test]
fn both_directions() {
    assert!(
        Path::new("/etc/xen/scripts/locking.sh").exists(),
        "make test installs xen-utils-common"
    );

    let run = TempDir::new("lockrun");
    let locks = run.join("xen-hotplug");

    // 1. The shell holds it: our claim waits until the shell releases.
    let sh = ShellLockHolder::start(run.path());
    assert!(
        locks.join("block").exists(),
        "the shell's lock is in the test's directory"
    );
    let releaser = sh.release_after(Duration::from_millis(700));
    let lock = Lock::claim_in(&locks, "block").unwrap();
    let got = Instant::now();
    assert!(
        got >= releaser.join().unwrap(),
        "we got the lock while the shell still held it"
    );
    assert!(sh.finish());

    // 2. We hold it: the shell's claim_lock waits until we release.
    let sh = ShellLockHolder::start_queued(run.path());
    std::thread::sleep(Duration::from_millis(700));
    assert!(!sh.has_held(), "the shell got the lock while we held it");
    drop(lock);
    assert!(sh.wait_marker("released", Duration::from_secs(10)));
    assert!(sh.finish());
}

#[test]
fn the_binary_waits_for_a_shell_holder() {
    let xs = Xenstored::start();
    let t = TempDir::new("lockbin");
    let lo = Loop::attach(&image(&t, "a.img", 8), false);
    let v = xs.vbd(domid(), 51712, &lo.path, "r");
    let sh = ShellLockHolder::start(&xs.run);
    let releaser = sh.release_after(Duration::from_millis(700));
    let r = xs.run("block", &v, "add");
    let done = Instant::now();
    assert_eq!(r.status, 0, "{r:?}");
    assert!(
        done >= releaser.join().unwrap(),
        "add finished while the shell held the lock"
    );
    assert!(sh.finish());
    assert_eq!(
        xs.read(&v.node("hotplug-status")).as_deref(),
        Some("connected")
    );
}
