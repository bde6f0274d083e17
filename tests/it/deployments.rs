//! Issue 11 on the real oxenstored, real loop devices and files: holders of other backend
//! kinds (QEMU's qdisk, tapback's vbd3), removed backends never resurrected, backends
//! still Initialising waited for. (Driver domains' EACCES cannot be had here: oxenstored
//! over its socket does not enforce permissions for root; the unit tests inject it.)

use std::time::Duration;

use crate::block::{assert_connected, assert_refused, me};
use crate::common::*;

/// Another guest's backend of `kind` serving `params` itself, as libxl writes it for QEMU
/// (qdisk) and tapback (vbd3), connected (state 4), with the guest's `vm`.
fn served_by(xs: &Xenstored, kind: &str, params: &str, mode: &str) -> (u32, String) {
    let fe = domid();
    xs.set_vm(fe, &format!("other-{fe}"));
    let be = format!("backend/{kind}/{fe}/51712");
    for (k, v) in [
        ("params", params),
        ("mode", mode),
        ("state", "4"),
        ("frontend-id", &fe.to_string()),
        ("online", "1"),
    ] {
        xs.write(&format!("{be}/{k}"), v);
    }
    (fe, be)
}

#[test]
fn an_image_qemu_or_tapback_serves_is_busy_for_another_guest() {
    let xs = Xenstored::start();
    let t = TempDir::new("kinds");
    let img = image(&t, "a.img", 8);
    let _c = Cleanup(img.clone());
    let path = img.to_str().unwrap();
    // The issue's small input: backend/qdisk/5/51712 with params=aio:<image>, mode=w.
    for (kind, prefix, server) in [("qdisk", "aio", "QEMU"), ("vbd3", "vhd", "tapback")] {
        let (fe, be) = served_by(&xs, kind, &format!("{prefix}:{path}"), "w");
        let v = me(&xs, path, "w");
        let err = assert_refused(&xs, &v, &xs.run("block", &v, "add"), "busy", "guest domain");
        assert!(
            err.contains(&format!("(domain {fe}, {be}, served by {server})")),
            "{err}"
        );
        assert!(loops_of(&img).is_empty(), "no loop left");
        // Read-only next to a read-only user is shared.
        xs.write(&format!("{be}/mode"), "r");
        let r = me(&xs, path, "r");
        let run = xs.run("block", &r, "add");
        assert_eq!(run.status, 0, "{run:?}");
        assert_eq!(xs.run("block", &r, "remove").status, 0);
        // libxl removes both backends at detach.
        xs.rm(&r.path);
        xs.rm(&format!("backend/{kind}"));
    }
    // The same file by another name (a symbolic link): the same inode.
    let link = t.join("link.img");
    std::os::unix::fs::symlink(&img, &link).unwrap();
    let (fe, _) = served_by(&xs, "qdisk", &format!("raw:{}", link.display()), "w");
    let v = me(&xs, path, "w");
    let err = assert_refused(&xs, &v, &xs.run("block", &v, "add"), "busy", "QEMU");
    assert!(err.contains(&format!("domain {fe}")), "{err}");
    xs.rm("backend/qdisk");
    // A device QEMU serves is found by number.
    let lo = Loop::attach(&image(&t, "b.img", 8), false);
    served_by(&xs, "qdisk", &format!("raw:{}", lo.path), "w");
    let v = me(&xs, &lo.path, "w");
    assert_refused(
        &xs,
        &v,
        &xs.run("block", &v, "add"),
        "busy",
        "served by QEMU",
    );
    xs.rm("backend/qdisk");
    // Nothing left of the other kinds: granted.
    let v = me(&xs, path, "w");
    let r = xs.run("block", &v, "add");
    assert_eq!(r.status, 0, "{r:?}");
    assert_eq!(xs.run("block", &v, "remove").status, 0);
}

#[test]
fn a_removed_backend_stays_removed_for_add_and_remove() {
    let xs = Xenstored::start();
    let t = TempDir::new("ghost");
    let img = image(&t, "a.img", 8);
    let _c = Cleanup(img.clone());
    for action in ["add", "remove"] {
        // XENBUS_PATH=backend/vbd/<fe>/51712, nothing under backend/vbd/<fe>.
        let fe = domid();
        let path = format!("backend/vbd/{fe}/51712");
        let r = xs.run_with("block", &[action], &[("XENBUS_PATH", &path)]);
        assert_eq!(r.status, 1, "{action}: {r:?}");
        assert!(r.log.contains("was removed"), "{action}: logged: {r:?}");
        assert!(
            xs.ls(&format!("backend/vbd/{fe}")).is_empty()
                && xs.read(&format!("backend/vbd/{fe}")).is_none(),
            "{action}: backend/vbd/{fe} recreated"
        );
    }
    assert!(loops_of(&img).is_empty());
}

#[test]
fn a_file_backend_initialising_then_initwait_after_300ms_is_connected() {
    let xs = Xenstored::start();
    let t = TempDir::new("init");
    let img = image(&t, "a.img", 8);
    let _c = Cleanup(img.clone());
    let v = me(&xs, img.to_str().unwrap(), "w");
    xs.write(&v.node("state"), "1");
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            xs.write(&v.node("state"), "2");
        });
        xs.run("block", &v, "add")
    });
    assert_eq!(r.status, 0, "{r:?}");
    let node = xs.read(&v.node("node")).expect("node written");
    assert_connected(&xs, &v, &node);
    assert_eq!(xs.run("block", &v, "remove").status, 0);
    assert!(loops_of(&img).is_empty());

    // Initialising, then torn down (Closing): refused, nothing attached, nothing published.
    let v = me(&xs, img.to_str().unwrap(), "w");
    xs.write(&v.node("state"), "1");
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            xs.write(&v.node("state"), "5");
        });
        xs.run("block", &v, "add")
    });
    assert_refused(
        &xs,
        &v,
        &r,
        "error",
        "Path closed or removed during hotplug add",
    );
    assert!(loops_of(&img).is_empty());

    // Initialising, then removed: exit 1, and the directory is not recreated.
    let v = me(&xs, img.to_str().unwrap(), "w");
    xs.write(&v.node("state"), "1");
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            xs.rm(&v.path);
        });
        xs.run("block", &v, "add")
    });
    assert_eq!(r.status, 1, "{r:?}");
    assert!(r.log.contains("was removed"), "{r:?}");
    assert!(xs.ls(&v.path).is_empty() && xs.read(&v.path).is_none());
    assert!(loops_of(&img).is_empty());

    // Stuck at Initialising: the wait ends inside the run's deadline (3 s here) with its
    // own error, not the watchdog's "timed out after 3 s while ...".
    let v = me(&xs, img.to_str().unwrap(), "w");
    xs.write(&v.node("state"), "1");
    let r = xs.run_with(
        "block",
        &["add"],
        &[("XENBUS_PATH", &v.path), ("XEN_BLOCK_HOTPLUG_TIMEOUT", "3")],
    );
    let err = assert_refused(&xs, &v, &r, "error", "timed out waiting for backend");
    assert!(err.contains("reach state 2 (last state: 1)"), "{err}");
    assert!(loops_of(&img).is_empty());
}
