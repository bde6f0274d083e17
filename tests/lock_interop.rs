//! Our `block` lock and Debian's real `/etc/xen/scripts/locking.sh` exclude each other,
//! in both directions, on the real `/var/run/xen-hotplug/block`.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use xen_block_hotplug::lock::{LOCK_DIR, Lock};

#[test]
fn both_directions() {
    assert!(
        Path::new("/etc/xen/scripts/locking.sh").exists(),
        "make test installs xen-utils-common"
    );

    // 1. The shell holds it: our claim waits until the shell releases.
    let sh = ShellLockHolder::start();
    let releaser = sh.release_after(Duration::from_millis(700));
    let lock = Lock::claim_in(Path::new(LOCK_DIR), "block").unwrap();
    let got = Instant::now();
    assert!(
        got >= releaser.join().unwrap(),
        "we got the lock while the shell still held it"
    );
    assert!(sh.finish());

    // 2. We hold it: the shell's claim_lock waits until we release.
    let sh = ShellLockHolder::start_queued();
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
    let sh = ShellLockHolder::start();
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
