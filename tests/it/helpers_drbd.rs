//! `block-drbd` against a real oxenstored, with the fake `drbdadm` of tests/fakes whose
//! `/dev/drbdN` are nodes of real loop devices.

use crate::common;
use std::path::Path;

use crate::common::{domid, image};
use crate::fakes::{Env, FakeRoot, loop_of_node};

fn env() -> Env {
    Env::new(FakeRoot::new(&["drbdadm"]), "drbd-img")
}

impl Env {
    /// A resource `res` on minor `minor`, backed by a new image; `extra` are more
    /// settings of the fake (`version=8`, `role=Primary`, ...).
    fn resource(&self, res: &str, minor: u32, extra: &str) -> String {
        let img = image(&self.imgs, &format!("{res}.img"), 4);
        let img = img.to_str().unwrap().to_string();
        self.root.write(
            &format!("state/drbd/{res}.conf"),
            &format!("minors=\"{minor}\"\nbacking={img}\n{extra}\n"),
        );
        img
    }

    fn vbd_in(&self, fe: u32, params: &str, mode: &str) -> common::Vbd {
        self.xs.vbd(fe, 51712, params, mode)
    }

    fn role(&self, res: &str) -> String {
        let r = self.root.read(&format!("state/drbd/{res}.role"));
        if r.is_empty() {
            "Secondary".into()
        } else {
            r.trim().to_string()
        }
    }

    fn add(&self, vbd: &common::Vbd) -> common::Run {
        self.root.run(&self.xs, "block-drbd", vbd, "add", None).0
    }

    fn remove(&self, vbd: &common::Vbd) -> common::Run {
        self.root.run(&self.xs, "block-drbd", vbd, "remove", None).0
    }
}

#[test]
fn add_promotes_and_remove_demotes() {
    let e = env();
    let img = e.resource("r0", 7, "");
    let vbd = e.vbd("drbd:r0", "w");
    let (r, took) = e.root.run(&e.xs, "block-drbd", &vbd, "add", None);
    assert_eq!(r.status, 0, "{r:?}");
    eprintln!("block-drbd add: {took:?}");
    let dev = format!("{}/dev/drbd7", e.root.root());
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
    assert_eq!(e.role("r0"), "Primary");
    assert_eq!(
        e.root.calls(),
        "drbdadm role r0\ndrbdadm sh-dev r0\ndrbdadm primary r0\n"
    );
    let (r, took) = e.root.run(&e.xs, "block-drbd", &vbd, "remove", None);
    assert_eq!(r.status, 0, "{r:?}");
    eprintln!("block-drbd remove: {took:?}");
    assert_eq!(e.role("r0"), "Secondary");
    assert!(
        e.root
            .calls()
            .ends_with("drbdadm role r0\ndrbdadm secondary r0\n")
    );
    assert!(!common::record_path(&vbd).exists());
}

#[test]
fn drbd8_role_output_and_an_already_primary_resource() {
    let e = env();
    e.resource("r8", 3, "version=8\nrole=Primary");
    let vbd = e.vbd("r8", "w");
    let r = e.add(&vbd);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(!e.root.calls().contains("primary"), "{}", e.root.calls());
    assert_eq!(e.remove(&vbd).status, 0);
    assert_eq!(e.role("r8"), "Secondary");

    // DRBD 8 says "Unconfigured" for a resource that is not up.
    e.resource("down8", 4, "version=8\ndown=1");
    let vbd = e.vbd("down8", "w");
    assert_eq!(e.add(&vbd).status, 1);
    let err = e.xs.read(&vbd.node("hotplug-error")).unwrap();
    assert!(
        err.contains("not configured") && err.contains("drbdadm up"),
        "{err}"
    );
    // DRBD 9 fails with drbdsetup's words.
    e.resource("down9", 5, "down=1");
    let vbd = e.vbd("down9", "w");
    assert_eq!(e.add(&vbd).status, 1);
    let err = e.xs.read(&vbd.node("hotplug-error")).unwrap();
    assert!(err.contains("down9: No such resource"), "{err}");
    assert!(!common::record_path(&vbd).exists());
}

#[test]
fn no_read_only_sharing_between_guests_but_the_same_vm_may() {
    let e = env();
    e.resource("r0", 7, "");
    let a = e.vbd("r0", "r");
    assert_eq!(e.add(&a).status, 0);
    let b = e.vbd("r0", "r");
    let r = e.add(&b);
    assert_eq!(r.status, 1);
    assert_eq!(
        e.xs.read(&b.node("hotplug-status")).as_deref(),
        Some("busy")
    );
    let err = e.xs.read(&b.node("hotplug-error")).unwrap();
    assert!(err.starts_with("DRBD resource r0 ("), "{err}");
    assert!(err.contains(&format!("domain {}", a.fe)), "{err}");
    assert_eq!(e.role("r0"), "Primary", "a's resource stays promoted");

    // A stubdom of a's guest (target = a's domain) may use it.
    let stub = domid();
    e.xs.set_vm(stub, &format!("stub-{stub}"));
    e.xs.write(&format!("/local/domain/{stub}/target"), &a.fe.to_string());
    let s = e.vbd_in(stub, "r0", "w");
    let r = e.add(&s);
    assert_eq!(r.status, 0, "{r:?}");

    // Remove demotes only with the last user.
    assert_eq!(e.remove(&a).status, 0);
    e.xs.rm(&a.path);
    assert_eq!(e.role("r0"), "Primary", "the stubdom still uses it");
    assert_eq!(e.remove(&s).status, 0);
    assert_eq!(e.role("r0"), "Secondary");
}

#[test]
fn a_refused_add_demotes_what_it_promoted() {
    let e = env();
    let img = e.resource("r0", 7, "");
    // Another guest uses the DRBD device as a plain phy disk (it is Secondary now, so
    // only its node says so).
    let other = e.vbd("/dev/whatever", "w");
    let vbd = e.vbd("r0", "w");
    // Learn the device number the fake will give: the node of the first sh-dev.
    e.root.tool("drbdadm", &["sh-dev", "r0"]);
    let dev = format!("{}/dev/drbd7", e.root.root());
    e.xs.write(&other.node("physical-device"), &common::dev_hex(&dev));
    let r = e.add(&vbd);
    assert_eq!(r.status, 1);
    assert_eq!(
        e.xs.read(&vbd.node("hotplug-status")).as_deref(),
        Some("busy")
    );
    assert!(
        e.root
            .calls()
            .ends_with("drbdadm primary r0\ndrbdadm secondary r0\n")
    );
    assert_eq!(e.role("r0"), "Secondary");
    assert!(!common::record_path(&vbd).exists());
    assert_eq!(
        common::backing_of(&loop_of_node(&dev).unwrap()).as_deref(),
        Some(img.as_str())
    );
}

#[test]
fn a_failed_promotion_is_reported() {
    let e = env();
    e.resource("r0", 7, "fail_primary=1");
    let vbd = e.vbd("r0", "w");
    let r = e.add(&vbd);
    assert_eq!(r.status, 1);
    let err = e.xs.read(&vbd.node("hotplug-error")).unwrap();
    assert!(
        err.contains("`drbdadm primary r0` failed (exit status 11)")
            && err.contains("Multiple primaries not allowed by config"),
        "{err}"
    );
    assert!(!e.root.calls().contains("secondary"), "it promoted nothing");
    assert_eq!(e.xs.read(&vbd.node("physical-device")), None);
    assert!(!common::record_path(&vbd).exists());
}

#[test]
fn params_type_volumes_and_missing_tool() {
    let e = env();
    e.root.write(
        "state/drbd/multi.conf",
        "minors=\"10 11\"\nbacking=/nonexistent\n",
    );
    for (params, want) in [
        ("drbd:", "params is empty"),
        ("r 0", "not a DRBD resource name"),
        ("all", "not a DRBD resource name"),
        ("r0/x", "params volume \"x\""),
        ("nosuch", "'nosuch' not defined in your config"),
        ("multi", "the resource has 2 volumes"),
    ] {
        e.add_must_fail("block-drbd", params, want);
    }
    let vbd = e.vbd("r0", "w");
    e.xs.write(&vbd.node("type"), "file");
    assert_eq!(e.add(&vbd).status, 1);
    let err = e.xs.read(&vbd.node("hotplug-error")).unwrap();
    assert!(
        err.contains("backend type \"file\" is not drbd or phy"),
        "{err}"
    );

    let bare = FakeRoot::new(&[]);
    let vbd = e.vbd("r0", "w");
    let (r, _) = bare.run(&e.xs, "block-drbd", &vbd, "add", None);
    assert_eq!(r.status, 1);
    let err = e.xs.read(&vbd.node("hotplug-error")).unwrap();
    assert!(err.starts_with("drbdadm not found (looked in"), "{err}");
}

#[test]
fn remove_after_the_backend_nodes_are_gone() {
    let e = env();
    e.resource("r0", 7, "");
    let vbd = e.vbd("r0", "w");
    assert_eq!(e.add(&vbd).status, 0);
    e.xs.rm(&vbd.path);
    let r = e.remove(&vbd);
    assert_eq!(r.status, 0, "{r:?}");
    assert_eq!(e.role("r0"), "Secondary");
    assert!(!common::record_path(&vbd).exists());
}

#[test]
fn remove_does_not_demote_a_device_another_vbd_now_uses() {
    let e = env();
    e.resource("r0", 7, "");
    let vbd = e.vbd("r0", "w");
    assert_eq!(e.add(&vbd).status, 0);
    // Meanwhile another vbd (here a phy one of another guest, under live migration) uses
    // the same device.
    let dev = format!("{}/dev/drbd7", e.root.root());
    let other = e.vbd(&dev, "w");
    e.xs.write(&other.node("physical-device-path"), &dev);
    let r = e.remove(&vbd);
    assert_eq!(r.status, 0, "{r:?}");
    assert_eq!(e.role("r0"), "Primary");
    assert!(!e.root.calls().contains("secondary"));
    assert!(!common::record_path(&vbd).exists());
    let _ = Path::new(&dev);
}

#[test]
fn a_failed_demotion_is_reported_and_the_record_kept() {
    let e = env();
    e.resource("r0", 7, "fail_secondary=1");
    let vbd = e.vbd("r0", "w");
    assert_eq!(e.add(&vbd).status, 0);
    let r = e.remove(&vbd);
    assert_eq!(r.status, 1);
    let err = e.xs.read(&vbd.node("hotplug-error")).unwrap();
    assert!(
        err.starts_with("remove incomplete: demoting DRBD resource r0:")
            && err.contains("Device is held open by someone"),
        "{err}"
    );
    assert!(common::record_path(&vbd).exists());
    let _ = std::fs::remove_file(common::record_path(&vbd));
}

#[test]
fn remove_of_a_resource_taken_down_meanwhile_is_complete() {
    let e = env();
    e.resource("r0", 7, "");
    let vbd = e.vbd("r0", "w");
    assert_eq!(e.add(&vbd).status, 0);
    // The administrator takes the resource down (DRBD 9: drbdsetup says No such resource).
    e.root.append("state/drbd/r0.conf", "down=1");
    let r = e.remove(&vbd);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(!e.root.calls().contains("secondary"));
    assert!(!common::record_path(&vbd).exists());
}
