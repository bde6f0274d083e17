//! Deadlines: a stuck lock holder or a hung xenstored ends in a clear failure well before
//! libxl's 40 s kill, never a hang.

use std::time::{Duration, Instant};

use crate::common::*;
use nix::sys::signal::{Signal, kill};

#[test]
fn a_stuck_lock_holder_times_out_with_hotplug_error() {
    let xs = Xenstored::start();
    let t = TempDir::new("stuck");
    let lo = Loop::attach(&image(&t, "a.img", 8), false);
    let fe = domid();
    let v = xs.vbd(fe, 51712, &lo.path, "r");
    let sh = ShellLockHolder::start(&xs.run);
    let t0 = Instant::now();
    let r = xs.run_with(
        "block",
        &["add"],
        &[("XENBUS_PATH", &v.path), ("XEN_BLOCK_HOTPLUG_TIMEOUT", "1")],
    );
    let took = t0.elapsed();
    assert!(sh.finish());
    assert_eq!(r.status, 1, "{r:?}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    let err = xs.read(&v.node("hotplug-error")).unwrap();
    assert!(
        err.contains("timed out after 1 s while waiting for the block lock"),
        "{err}"
    );
    assert_eq!(xs.read(&v.node("hotplug-status")).as_deref(), Some("error"));
    assert_eq!(xs.read(&v.node("physical-device")), None);
}

#[test]
fn a_hung_xenstored_is_a_clear_failure_not_a_hang() {
    let xs = Xenstored::start();
    let fe = domid();
    let v = xs.vbd(fe, 51712, "/dev/null", "r");
    kill(xs.pid(), Signal::SIGSTOP).unwrap();
    let t0 = Instant::now();
    let r = xs.run_with(
        "block",
        &["add"],
        &[("XENBUS_PATH", &v.path), ("XEN_BLOCK_HOTPLUG_TIMEOUT", "1")],
    );
    let took = t0.elapsed();
    kill(xs.pid(), Signal::SIGCONT).unwrap();
    assert_eq!(r.status, 1, "{r:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        r.log
            .contains("timed out after 1 s while talking to xenstore"),
        "{}",
        r.log
    );
    assert_eq!(
        xs.read(&v.node("hotplug-status")),
        None,
        "no half-written success"
    );
}
