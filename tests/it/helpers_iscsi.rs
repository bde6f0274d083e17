//! `block-iscsi` against a real oxenstored, with the fake `iscsiadm`/`multipath` of
//! tests/fakes backing LUNs with real loop devices.

use crate::common;
use std::os::unix::fs::PermissionsExt;

use crate::common::{Loop, image};
use crate::fakes::{Env, FakeRoot, backing_file_of};

const IQN1: &str = "iqn.2003-01.org.linux-iscsi.dom0:disk1";
const IQN10: &str = "iqn.2003-01.org.linux-iscsi.dom0:disk10";
const PORTAL: &str = "127.0.0.1:3260";

fn env() -> Env {
    Env::new(FakeRoot::new(&["iscsiadm", "multipath"]), "iscsi-img")
}

impl Env {
    /// A LUN of a target, backed by a new image (or `backing`).
    fn lun(&self, iqn: &str, lun: u32, opts: &str) -> String {
        let img = image(
            &self.imgs,
            &format!("{}-{lun}.img", iqn.rsplit(':').next().unwrap()),
            4,
        );
        let img = img.to_str().unwrap().to_string();
        self.lun_on(iqn, lun, &img, opts);
        img
    }

    fn lun_on(&self, iqn: &str, lun: u32, backing: &str, opts: &str) {
        self.root.append(
            "state/iscsi/targets",
            &format!("{PORTAL} {iqn} {lun} {backing} {opts}"),
        );
    }

    fn sessions(&self) -> String {
        self.root.read("state/iscsi/sessions")
    }
}

fn params(iqn: &str) -> String {
    format!("iqn={iqn},portal=127.0.0.1")
}

#[test]
fn add_and_remove_a_lun() {
    let e = env();
    let img0 = e.lun(IQN1, 0, "");
    let img1 = e.lun(IQN1, 1, "delay=0.2");
    let vbd = e.vbd(&format!("iscsi:{},lun=1", params(IQN1)), "w");
    let (r, took) = e.root.run(&e.xs, "block-iscsi", &vbd, "add", None);
    assert_eq!(r.status, 0, "{r:?}");
    eprintln!("block-iscsi add (by-path link after 0.2 s): {took:?}");
    let path = e.xs.read(&vbd.node("physical-device-path")).unwrap();
    assert_eq!(backing_file_of(&path).as_deref(), Some(img1.as_str()));
    assert_ne!(backing_file_of(&path).as_deref(), Some(img0.as_str()));
    assert_eq!(
        e.xs.read(&vbd.node("physical-device")).unwrap(),
        common::dev_hex(&path)
    );
    assert!(e.xs.read(&vbd.node("diskseq")).is_some());
    assert_eq!(
        e.xs.read(&vbd.node("hotplug-status")).as_deref(),
        Some("connected")
    );
    assert_eq!(e.xs.read(&vbd.node("node")), None);
    assert_eq!(e.xs.read(&vbd.node("hotplug-error")), None);
    assert!(e.sessions().contains(IQN1));
    assert!(common::record_path(&vbd).exists());

    let (r, took) = e.root.run(&e.xs, "block-iscsi", &vbd, "remove", None);
    assert_eq!(r.status, 0, "{r:?}");
    eprintln!("block-iscsi remove: {took:?}");
    assert_eq!(e.sessions(), "");
    assert_eq!(
        common::loops_of(std::path::Path::new(&img1)),
        Vec::<String>::new()
    );
    assert!(!common::record_path(&vbd).exists());
    assert!(e.root.calls().contains("iscsiadm -m session -r 1 -u"));
}

#[test]
fn called_twice_does_nothing() {
    let e = env();
    e.lun(IQN1, 0, "");
    let vbd = e.vbd(&params(IQN1), "w");
    assert_eq!(
        e.root.run(&e.xs, "block-iscsi", &vbd, "add", None).0.status,
        0
    );
    let calls = e.root.calls();
    assert_eq!(
        e.root.run(&e.xs, "block-iscsi", &vbd, "add", None).0.status,
        0
    );
    assert_eq!(
        e.root.calls(),
        calls,
        "the second add must not call iscsiadm"
    );
    assert_eq!(
        e.root
            .run(&e.xs, "block-iscsi", &vbd, "remove", None)
            .0
            .status,
        0
    );
}

#[test]
fn an_iqn_ending_disk1_never_matches_disk10() {
    let e = env();
    let img1 = e.lun(IQN1, 0, "");
    let img10 = e.lun(IQN10, 0, "");
    // Someone else's session to disk10 is open.
    assert!(
        e.root
            .tool("iscsiadm", &["-m", "discovery", "-t", "st", "-p", PORTAL])
            .status
            .success()
    );
    assert!(
        e.root
            .tool(
                "iscsiadm",
                &["-m", "node", "-T", IQN10, "-p", PORTAL, "--login"]
            )
            .status
            .success()
    );
    let vbd = e.vbd(&params(IQN1), "w");
    let (r, _) = e.root.run(&e.xs, "block-iscsi", &vbd, "add", None);
    assert_eq!(r.status, 0, "disk10's session is not disk1's: {r:?}");
    let path = e.xs.read(&vbd.node("physical-device-path")).unwrap();
    assert_eq!(backing_file_of(&path).as_deref(), Some(img1.as_str()));
    assert_ne!(backing_file_of(&path).as_deref(), Some(img10.as_str()));
    assert_eq!(
        e.root
            .run(&e.xs, "block-iscsi", &vbd, "remove", None)
            .0
            .status,
        0
    );
    let s = e.sessions();
    assert!(
        s.contains(IQN10) && !s.contains(&format!("{IQN1}\n")),
        "{s}"
    );

    // A prefix of an offered IQN is not offered.
    let vbd = e.vbd(&params("iqn.2003-01.org.linux-iscsi.dom0:disk"), "w");
    let (r, _) = e.root.run(&e.xs, "block-iscsi", &vbd, "add", None);
    assert_eq!(r.status, 1);
    let err = e.xs.read(&vbd.node("hotplug-error")).unwrap();
    assert!(
        err.contains("is not offered by the portal 127.0.0.1:3260"),
        "{err}"
    );
    e.root.tool(
        "iscsiadm",
        &["-m", "node", "-T", IQN10, "-p", PORTAL, "--logout"],
    );
}

#[test]
fn a_lun_that_never_appears_times_out_and_logs_out() {
    let e = env();
    e.lun(IQN1, 0, "nodev");
    let vbd = e.vbd(&params(IQN1), "w");
    let (r, took) = e.root.run(&e.xs, "block-iscsi", &vbd, "add", Some("3"));
    eprintln!("block-iscsi add timing out with XEN_BLOCK_HOTPLUG_WAIT=3: {took:?}");
    assert_eq!(r.status, 1);
    assert!(took.as_secs_f64() < 8.0, "{took:?}");
    let err = e.xs.read(&vbd.node("hotplug-error")).unwrap();
    assert!(
        err.starts_with(&format!(
            "timed out after 3 s waiting for {}/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-{IQN1}-lun-0",
            e.root.root()
        )),
        "{err}"
    );
    assert!(err.contains("XEN_BLOCK_HOTPLUG_WAIT"), "{err}");
    assert_eq!(
        e.xs.read(&vbd.node("hotplug-status")).as_deref(),
        Some("error")
    );
    assert_eq!(e.xs.read(&vbd.node("physical-device")), None);
    assert_eq!(e.sessions(), "", "the undo must log out");
    assert!(!common::record_path(&vbd).exists());
}

#[test]
fn a_lun_in_use_by_another_guest_is_busy_and_undone() {
    let e = env();
    let img = image(&e.imgs, "shared.img", 4);
    let lp = Loop::attach(&img, false);
    e.lun_on(IQN1, 0, &lp.path, "");
    // Another guest uses the same disk through a phy vbd.
    let other = e.vbd(&lp.path, "w");
    e.xs.write(&other.node("physical-device"), &lp.hex());
    e.xs.write(&other.node("physical-device-path"), &lp.path);
    let vbd = e.vbd(&params(IQN1), "w");
    let (r, _) = e.root.run(&e.xs, "block-iscsi", &vbd, "add", None);
    assert_eq!(r.status, 1);
    assert_eq!(
        e.xs.read(&vbd.node("hotplug-status")).as_deref(),
        Some("busy")
    );
    let err = e.xs.read(&vbd.node("hotplug-error")).unwrap();
    assert!(err.contains(&format!("domain {}", other.fe)), "{err}");
    assert!(err.contains(&format!("iSCSI LUN 0 of {IQN1}")), "{err}");
    assert_eq!(e.sessions(), "", "refused: logged out again");
    assert!(!common::record_path(&vbd).exists());
    assert_eq!(common::backing_of(lp.name()).as_deref(), img.to_str());
}

#[test]
fn a_second_guest_rw_is_refused_but_read_only_may_share() {
    let e = env();
    e.lun(IQN1, 0, "");
    let a = e.vbd(&params(IQN1), "w");
    assert_eq!(
        e.root.run(&e.xs, "block-iscsi", &a, "add", None).0.status,
        0
    );
    let b = e.vbd(&params(IQN1), "w");
    let (r, _) = e.root.run(&e.xs, "block-iscsi", &b, "add", None);
    assert_eq!(r.status, 1);
    assert_eq!(
        e.xs.read(&b.node("hotplug-status")).as_deref(),
        Some("busy")
    );
    let err = e.xs.read(&b.node("hotplug-error")).unwrap();
    assert!(err.contains("already has a session (sid 1)"), "{err}");
    // The refusal must not touch a's session.
    assert!(e.sessions().contains(IQN1));
    assert_eq!(
        e.root
            .run(&e.xs, "block-iscsi", &a, "remove", None)
            .0
            .status,
        0
    );
    e.xs.rm(&a.path);

    // Read-only: two guests share one session; it ends with the last remove.
    let r1 = e.vbd(&params(IQN1), "r");
    let r2 = e.vbd(&params(IQN1), "r");
    assert_eq!(
        e.root.run(&e.xs, "block-iscsi", &r1, "add", None).0.status,
        0
    );
    let (r, _) = e.root.run(&e.xs, "block-iscsi", &r2, "add", None);
    assert_eq!(r.status, 0, "{r:?}");
    assert_eq!(
        e.xs.read(&r1.node("physical-device")),
        e.xs.read(&r2.node("physical-device"))
    );
    assert_eq!(e.sessions().lines().count(), 1);
    assert_eq!(
        e.root
            .run(&e.xs, "block-iscsi", &r1, "remove", None)
            .0
            .status,
        0
    );
    e.xs.rm(&r1.path);
    assert_eq!(e.sessions().lines().count(), 1, "r2 still uses the session");
    assert_eq!(
        e.root
            .run(&e.xs, "block-iscsi", &r2, "remove", None)
            .0
            .status,
        0
    );
    assert_eq!(e.sessions(), "");
}

#[test]
fn missing_iscsiadm_is_named() {
    let e = Env::new(FakeRoot::new(&[]), "iscsi-img");
    let vbd = e.vbd(&params(IQN1), "w");
    let (r, _) = e.root.run(&e.xs, "block-iscsi", &vbd, "add", None);
    assert_eq!(r.status, 1);
    let err = e.xs.read(&vbd.node("hotplug-error")).unwrap();
    assert_eq!(
        err,
        format!(
            "iscsiadm not found (looked in {}/bin): install it, or fix PATH",
            e.root.root()
        )
    );

    // multipath=y without multipath: refused before logging in.
    let e = Env {
        xs: e.xs,
        root: FakeRoot::new(&["iscsiadm"]),
        imgs: e.imgs,
    };
    e.lun(IQN1, 0, "");
    let vbd = e.vbd(&format!("{},multipath=y", params(IQN1)), "w");
    let (r, _) = e.root.run(&e.xs, "block-iscsi", &vbd, "add", None);
    assert_eq!(r.status, 1);
    let err = e.xs.read(&vbd.node("hotplug-error")).unwrap();
    assert!(err.starts_with("multipath not found (looked in"), "{err}");
    assert_eq!(e.root.calls(), "");
}

#[test]
fn bad_params_name_the_key_and_run_nothing() {
    let e = env();
    for (params, want) in [
        (
            "iqn=x,portal=127.0.0.1".to_string(),
            "params key iqn: \"x\"",
        ),
        (format!("iqn={IQN1}"), "params key portal is missing"),
        (format!("{},lun=a", params(IQN1)), "params key lun: \"a\""),
        (
            format!("{},multipath=1", params(IQN1)),
            "params key multipath",
        ),
        (
            format!("{},user=x", params(IQN1)),
            "params key \"user\" is unknown",
        ),
        (IQN1.to_string(), "is not key=value"),
    ] {
        e.add_must_fail("block-iscsi", &params, want);
    }
    assert_eq!(e.root.calls(), "");
}

#[test]
fn remove_after_the_backend_nodes_are_gone() {
    let e = env();
    let img = e.lun(IQN1, 0, "");
    let vbd = e.vbd(&params(IQN1), "w");
    assert_eq!(
        e.root.run(&e.xs, "block-iscsi", &vbd, "add", None).0.status,
        0
    );
    e.xs.rm(&vbd.path);
    let (r, _) = e.root.run(&e.xs, "block-iscsi", &vbd, "remove", None);
    assert_eq!(r.status, 0, "{r:?}");
    assert_eq!(e.sessions(), "");
    assert!(common::loops_of(std::path::Path::new(&img)).is_empty());
    assert!(!common::record_path(&vbd).exists());
}

#[test]
fn remove_leaves_a_session_it_did_not_open() {
    let e = env();
    e.lun(IQN1, 0, "");
    let vbd = e.vbd(&params(IQN1), "w");
    assert_eq!(
        e.root.run(&e.xs, "block-iscsi", &vbd, "add", None).0.status,
        0
    );
    // The administrator logs out and back in: a new session (sid 2) to the same target.
    assert!(
        e.root
            .tool("iscsiadm", &["-m", "session", "-r", "1", "-u"])
            .status
            .success()
    );
    assert!(
        e.root
            .tool(
                "iscsiadm",
                &["-m", "node", "-T", IQN1, "-p", PORTAL, "--login"]
            )
            .status
            .success()
    );
    let (r, _) = e.root.run(&e.xs, "block-iscsi", &vbd, "remove", None);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(
        e.sessions().starts_with("2 "),
        "sid 2 must survive: {}",
        e.sessions()
    );
    assert!(r.log.contains("not touching session(s) 2"), "{}", r.log);
    assert!(!common::record_path(&vbd).exists());
    e.root.tool("iscsiadm", &["-m", "session", "-r", "2", "-u"]);
}

#[test]
fn chap_from_a_root_only_file_never_reaches_xenstore() {
    let e = env();
    e.lun(IQN1, 0, "chap=xen:s3cret-Pa55");
    let creds = e.root.path("chap");
    std::fs::write(&creds, "# CHAP\nusername=xen\npassword=s3cret-Pa55\n").unwrap();
    let p = format!("{},auth={}", params(IQN1), creds.display());

    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    let vbd = e.vbd(&p, "w");
    let (r, _) = e.root.run(&e.xs, "block-iscsi", &vbd, "add", None);
    assert_eq!(r.status, 1);
    let err = e.xs.read(&vbd.node("hotplug-error")).unwrap();
    assert!(
        err.contains("accessible to group or others (mode 0644)"),
        "{err}"
    );
    assert_eq!(
        e.root.calls(),
        "",
        "nothing runs before the file is accepted"
    );

    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let vbd = e.vbd(&p, "w");
    let (r, _) = e.root.run(&e.xs, "block-iscsi", &vbd, "add", None);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(!r.log.contains("s3cret"), "{}", r.log);
    for n in e.xs.ls(&vbd.path) {
        let v = e.xs.read(&vbd.node(&n)).unwrap_or_default();
        assert!(!v.contains("s3cret"), "{n}={v}");
    }
    assert!(
        !std::fs::read_to_string(common::record_path(&vbd))
            .unwrap()
            .contains("s3cret")
    );
    assert_eq!(
        e.root
            .run(&e.xs, "block-iscsi", &vbd, "remove", None)
            .0
            .status,
        0
    );

    // Wrong credentials: the login fails and nothing is left.
    std::fs::write(&creds, "username=xen\npassword=wrong\n").unwrap();
    let vbd = e.vbd(&p, "w");
    let (r, _) = e.root.run(&e.xs, "block-iscsi", &vbd, "add", None);
    assert_eq!(r.status, 1);
    let err = e.xs.read(&vbd.node("hotplug-error")).unwrap();
    assert!(err.contains("authorization failure"), "{err}");
    assert!(!err.contains("wrong"), "{err}");
    assert_eq!(e.sessions(), "");
    assert!(!common::record_path(&vbd).exists());
}

#[test]
fn multipath_uses_the_map_and_flushes_it() {
    let e = env();
    e.root.write("state/multipath/enabled", "");
    e.lun(IQN1, 0, "");
    let vbd = e.vbd(&format!("{},multipath=y", params(IQN1)), "w");
    let (r, _) = e.root.run(&e.xs, "block-iscsi", &vbd, "add", None);
    assert_eq!(r.status, 0, "{r:?}");
    let map = format!("{}/dev/mapper/mpatha", e.root.root());
    assert_eq!(
        e.xs.read(&vbd.node("physical-device-path")),
        Some(map.clone())
    );
    assert!(e.root.calls().contains("multipath -ll /dev/loop"));
    let (r, _) = e.root.run(&e.xs, "block-iscsi", &vbd, "remove", None);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(e.root.calls().contains("multipath -f mpatha"));
    assert!(!std::path::Path::new(&map).exists());
    assert_eq!(e.sessions(), "");
}

#[test]
fn a_failed_login_leaves_nothing() {
    let e = env();
    e.lun(IQN1, 0, "");
    e.root.write("state/iscsi/fail-login", "");
    let vbd = e.vbd(&params(IQN1), "w");
    let (r, _) = e.root.run(&e.xs, "block-iscsi", &vbd, "add", None);
    assert_eq!(r.status, 1);
    let err = e.xs.read(&vbd.node("hotplug-error")).unwrap();
    assert!(
        err.contains("`iscsiadm -m node -T iqn.2003-01.org.linux-iscsi.dom0:disk1 -p 127.0.0.1:3260 --login` failed (exit status 24)"),
        "{err}"
    );
    assert_eq!(e.sessions(), "");
    assert!(!common::record_path(&vbd).exists());
    // No target at all on the portal: discovery fails with iscsiadm's words.
    let vbd = e.vbd("iqn=iqn.2003-01.org.x:y,portal=127.0.0.2", "w");
    let (r, _) = e.root.run(&e.xs, "block-iscsi", &vbd, "add", None);
    assert_eq!(r.status, 1);
    let err = e.xs.read(&vbd.node("hotplug-error")).unwrap();
    assert!(
        err.contains("Could not perform SendTargets discovery"),
        "{err}"
    );
}

#[test]
fn a_hung_login_is_killed_at_the_deadline() {
    let e = env();
    e.lun(IQN1, 0, "");
    e.root.write("state/iscsi/hang-login", "");
    let vbd = e.vbd(&params(IQN1), "w");
    let (r, took) = e.root.run(&e.xs, "block-iscsi", &vbd, "add", Some("3"));
    eprintln!("block-iscsi add with a hung login, XEN_BLOCK_HOTPLUG_WAIT=3: {took:?}");
    assert_eq!(r.status, 1);
    assert!(took.as_secs_f64() < 8.0, "{took:?}");
    let err = e.xs.read(&vbd.node("hotplug-error")).unwrap();
    assert!(
        err.starts_with(&format!(
            "timed out after 3 s waiting for `iscsiadm -m node -T {IQN1} -p 127.0.0.1:3260 --login` (killed it)"
        )),
        "{err}"
    );
    assert_eq!(e.sessions(), "");
    assert!(!common::record_path(&vbd).exists());
}
