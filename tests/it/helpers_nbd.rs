//! `block-nbd` against a real oxenstored, with the fake `nbd-client` of tests/fakes
//! connecting test-root `/dev/nbdN` nodes to real loop devices.

use crate::common;
use std::path::Path;

use crate::common::{Loop, image};
use crate::fakes::{Env, FakeRoot, loop_of_node};

/// A root with `devices` NBD devices (as `modprobe nbd nbds_max=<devices>` gives).
fn env_with(tools: &[&str], devices: u32) -> Env {
    let root = FakeRoot::new(tools);
    for i in 0..devices {
        root.write(&format!("sys/block/nbd{i}/size"), "0\n");
    }
    Env::new(root, "nbd-img")
}

fn env() -> Env {
    env_with(&["nbd-client"], 4)
}

impl Env {
    /// An export of the fake server, backed by a new image.
    fn export(&self, host_port: &str, export: &str, opts: &str) -> String {
        let img = image(&self.imgs, &format!("{export}.img"), 4);
        let img = img.to_str().unwrap().to_string();
        self.root.append(
            "state/nbd/servers",
            &format!("{host_port} {export} {img} {opts}"),
        );
        img
    }

    fn dev(&self, n: u32) -> String {
        format!("{}/dev/nbd{n}", self.root.root())
    }

    fn pid(&self, n: u32) -> Option<String> {
        let p = self.root.path(&format!("sys/block/nbd{n}/pid"));
        std::fs::read_to_string(p).ok()
    }
}

#[test]
fn add_and_remove_an_export() {
    let e = env();
    let img = e.export("127.0.0.1 10809", "disk1", "");
    let vbd = e.vbd("nbd://127.0.0.1/disk1", "w");
    let (r, took) = e.root.run(&e.xs, "block-nbd", &vbd, "add", None);
    assert_eq!(r.status, 0, "{r:?}");
    eprintln!("block-nbd add: {took:?}");
    let dev = e.dev(0);
    assert_eq!(e.xs.read(&vbd.node("node")), Some(dev.clone()));
    assert_eq!(
        e.xs.read(&vbd.node("physical-device-path")),
        Some(dev.clone())
    );
    let lp = loop_of_node(&dev).unwrap();
    assert_eq!(common::backing_of(&lp).as_deref(), Some(img.as_str()));
    assert_eq!(
        e.xs.read(&vbd.node("physical-device")),
        Some(common::dev_hex(&lp))
    );
    assert_eq!(
        e.xs.read(&vbd.node("hotplug-status")).as_deref(),
        Some("connected")
    );
    assert!(e.pid(0).is_some());
    assert!(
        e.root
            .calls()
            .contains(&format!("nbd-client -N disk1 127.0.0.1 10809 {dev}"))
    );

    let (r, took) = e.root.run(&e.xs, "block-nbd", &vbd, "remove", None);
    assert_eq!(r.status, 0, "{r:?}");
    eprintln!("block-nbd remove: {took:?}");
    assert!(e.pid(0).is_none());
    assert!(common::loops_of(Path::new(&img)).is_empty());
    assert!(!common::record_path(&vbd).exists());
}

#[test]
fn every_params_form_and_read_only() {
    let e = env();
    let img = e.export("127.0.0.1 20004", "-", "");
    let sock = e.root.path("nbd.sock");
    e.root.append(
        "state/nbd/servers",
        &format!("unix:{} - disk2 {img}", sock.display()),
    );
    for (params, mode, want) in [
        ("127.0.0.1 20004", "r", "nbd-client -R 127.0.0.1 20004"),
        ("nbd:127.0.0.1:20004", "w", "nbd-client 127.0.0.1 20004"),
        (
            &format!("nbd+unix:///disk2?socket={}", sock.display()) as &str,
            "w",
            &format!("nbd-client -u -N disk2 {}", sock.display()) as &str,
        ),
    ] {
        let vbd = e.vbd(params, mode);
        let (r, _) = e.root.run(&e.xs, "block-nbd", &vbd, "add", None);
        assert_eq!(r.status, 0, "{params}: {r:?}");
        assert!(
            e.root.calls().contains(want),
            "{params}: {}",
            e.root.calls()
        );
        let lp = loop_of_node(&e.dev(0)).unwrap();
        let ro = std::fs::read_to_string(format!("/sys/block/loop{}/ro", &lp[9..])).unwrap();
        assert_eq!(ro.trim(), if mode == "r" { "1" } else { "0" }, "{params}");
        assert_eq!(
            e.root
                .run(&e.xs, "block-nbd", &vbd, "remove", None)
                .0
                .status,
            0
        );
        e.xs.rm(&vbd.path);
    }
}

#[test]
fn the_first_free_device_is_used() {
    let e = env();
    e.export("127.0.0.1 10809", "disk1", "");
    // nbd0 is connected by someone else.
    e.root.write("sys/block/nbd0/pid", "4242\n");
    let vbd = e.vbd("nbd://127.0.0.1/disk1", "w");
    let (r, _) = e.root.run(&e.xs, "block-nbd", &vbd, "add", None);
    assert_eq!(r.status, 0, "{r:?}");
    assert_eq!(e.xs.read(&vbd.node("node")), Some(e.dev(1)));
    assert_eq!(
        e.root
            .run(&e.xs, "block-nbd", &vbd, "remove", None)
            .0
            .status,
        0
    );
    assert_eq!(e.pid(0).as_deref(), Some("4242\n"), "never touched");

    // All busy: a clear error, nothing run.
    for i in 0..4 {
        e.root.write(&format!("sys/block/nbd{i}/pid"), "4242\n");
    }
    let vbd = e.vbd("nbd://127.0.0.1/disk1", "w");
    let (r, _) = e.root.run(&e.xs, "block-nbd", &vbd, "add", None);
    assert_eq!(r.status, 1);
    let err = e.xs.read(&vbd.node("hotplug-error")).unwrap();
    assert!(err.starts_with("all 4 NBD devices are connected"), "{err}");
}

#[test]
fn no_nbd_module_is_a_clear_error() {
    let e = env_with(&["nbd-client"], 0);
    let vbd = e.vbd("nbd://127.0.0.1/disk1", "w");
    let (r, _) = e.root.run(&e.xs, "block-nbd", &vbd, "add", None);
    assert_eq!(r.status, 1);
    let err = e.xs.read(&vbd.node("hotplug-error")).unwrap();
    assert!(err.contains("load the nbd module (modprobe nbd)"), "{err}");
}

#[test]
fn a_connection_that_never_gets_a_size_times_out_and_disconnects() {
    let e = env();
    let img = e.export("127.0.0.1 10809", "disk1", "nosize");
    let vbd = e.vbd("nbd://127.0.0.1/disk1", "w");
    let (r, took) = e.root.run(&e.xs, "block-nbd", &vbd, "add", Some("3"));
    eprintln!("block-nbd add timing out with XEN_BLOCK_HOTPLUG_WAIT=3: {took:?}");
    assert_eq!(r.status, 1);
    assert!(took.as_secs_f64() < 8.0, "{took:?}");
    let err = e.xs.read(&vbd.node("hotplug-error")).unwrap();
    assert!(
        err.starts_with(&format!(
            "timed out after 3 s waiting for {} to get a size (connected to 127.0.0.1:10809 export \"disk1\")",
            e.dev(0)
        )),
        "{err}"
    );
    assert_eq!(
        e.xs.read(&vbd.node("hotplug-status")).as_deref(),
        Some("error")
    );
    assert!(e.pid(0).is_none(), "the undo must disconnect");
    assert!(common::loops_of(Path::new(&img)).is_empty());
    assert!(!common::record_path(&vbd).exists());
}

#[test]
fn connection_errors_are_reported() {
    let e = env();
    e.export("127.0.0.1 10809", "disk1", "");
    for (params, want) in [
        (
            "nbd://127.0.0.1:10900/disk1",
            "Error: Socket failed: Connection refused",
        ),
        (
            "nbd://127.0.0.1/nosuch",
            "Error: Server error: Export unknown",
        ),
    ] {
        let vbd = e.vbd(params, "w");
        let (r, _) = e.root.run(&e.xs, "block-nbd", &vbd, "add", None);
        assert_eq!(r.status, 1);
        let err = e.xs.read(&vbd.node("hotplug-error")).unwrap();
        assert!(
            err.contains(want) && err.starts_with("cannot connect to 127.0.0.1:"),
            "{err}"
        );
        assert!(!common::record_path(&vbd).exists());
        assert!(e.pid(0).is_none());
    }
}

#[test]
fn a_device_in_use_by_another_guest_is_busy_and_undone() {
    let e = env();
    let img = image(&e.imgs, "shared.img", 4);
    let lp = Loop::attach(&img, false);
    e.root.append(
        "state/nbd/servers",
        &format!("127.0.0.1 10809 disk1 {}", lp.path),
    );
    let other = e.vbd(&lp.path, "w");
    e.xs.write(&other.node("physical-device"), &lp.hex());
    let vbd = e.vbd("nbd://127.0.0.1/disk1", "w");
    let (r, _) = e.root.run(&e.xs, "block-nbd", &vbd, "add", None);
    assert_eq!(r.status, 1);
    assert_eq!(
        e.xs.read(&vbd.node("hotplug-status")).as_deref(),
        Some("busy")
    );
    let err = e.xs.read(&vbd.node("hotplug-error")).unwrap();
    assert!(err.contains(&format!("domain {}", other.fe)), "{err}");
    assert!(e.pid(0).is_none(), "refused: disconnected again");
    assert!(!common::record_path(&vbd).exists());
}

#[test]
fn missing_nbd_client_is_named() {
    let e = env_with(&[], 2);
    let vbd = e.vbd("nbd://127.0.0.1/disk1", "w");
    let (r, _) = e.root.run(&e.xs, "block-nbd", &vbd, "add", None);
    assert_eq!(r.status, 1);
    let err = e.xs.read(&vbd.node("hotplug-error")).unwrap();
    assert!(err.starts_with("nbd-client not found (looked in"), "{err}");
    assert!(!common::record_path(&vbd).exists());
}

#[test]
fn bad_params_name_what_is_wrong() {
    let e = env();
    for (params, want) in [
        ("host port", "params port \"port\""),
        ("-o 10809", "params host \"-o\""),
        ("nbds://h/e", "TLS"),
        ("nbd+unix:///e", "without socket="),
        ("a b c", "is not understood"),
    ] {
        e.add_must_fail("block-nbd", params, want);
    }
    assert_eq!(e.root.calls(), "");
}

#[test]
fn remove_after_the_backend_nodes_are_gone() {
    let e = env();
    let img = e.export("127.0.0.1 10809", "disk1", "");
    let vbd = e.vbd("127.0.0.1:10809", "w");
    e.root
        .append("state/nbd/servers", &format!("127.0.0.1 10809 - {img}"));
    assert_eq!(
        e.root.run(&e.xs, "block-nbd", &vbd, "add", None).0.status,
        0
    );
    e.xs.rm(&vbd.path);
    let (r, _) = e.root.run(&e.xs, "block-nbd", &vbd, "remove", None);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(e.pid(0).is_none());
    assert!(common::loops_of(Path::new(&img)).is_empty());
    assert!(!common::record_path(&vbd).exists());
}

#[test]
fn remove_does_not_disconnect_a_reused_device() {
    let e = env();
    e.export("127.0.0.1 10809", "disk1", "");
    let other = e.export("127.0.0.1 10809", "other", "");
    let vbd = e.vbd("nbd://127.0.0.1/disk1", "w");
    assert_eq!(
        e.root.run(&e.xs, "block-nbd", &vbd, "add", None).0.status,
        0
    );
    // Someone disconnects nbd0 and connects it to another export.
    let dev = e.dev(0);
    assert!(e.root.tool("nbd-client", &["-d", &dev]).status.success());
    assert!(
        e.root
            .tool("nbd-client", &["-N", "other", "127.0.0.1", "10809", &dev])
            .status
            .success()
    );
    let before = e.root.calls().matches("nbd-client -d").count();
    let (r, _) = e.root.run(&e.xs, "block-nbd", &vbd, "remove", None);
    assert_eq!(r.status, 0, "{r:?}");
    assert_eq!(e.root.calls().matches("nbd-client -d").count(), before);
    assert!(e.pid(0).is_some(), "the other connection must survive");
    assert!(r.log.contains("the device was reused"), "{}", r.log);
    assert!(!common::record_path(&vbd).exists());
    let lp = loop_of_node(&dev).unwrap();
    assert_eq!(common::backing_of(&lp).as_deref(), Some(other.as_str()));
    e.root.tool("nbd-client", &["-d", &dev]);
}
