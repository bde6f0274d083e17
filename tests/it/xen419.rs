//! The inputs Xen 4.19 and later send to `block` (`xen-4.19-and-later.md` A.3, A.4), on a
//! real oxenstored with real loop devices: libxl's empty CD-ROM drive, a stubdom's media
//! change (remove, then add on the same vdev at once), and tapback (`vbd3`) disks.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::common::*;

/// libxl's `device_disk_add` for a phy CD-ROM: `device-type` `cdrom`; xl writes `mode` `r`
/// for every CD-ROM, the test also tries what a toolstack might write instead.
fn cdrom(xs: &Xenstored, fe: u32, params: &str, mode: &str) -> Vbd {
    let v = xs.vbd(fe, 5632, params, mode);
    xs.write(&v.node("device-type"), "cdrom");
    xs.write(&v.node("removable"), "1");
    v
}

/// libxl's empty drive: `creat(XEN_RUN_DIR "/empty-cdrom.<domid>", 0400)`, zero-length.
fn empty_cdrom(xs: &Xenstored, target: u32) -> std::path::PathBuf {
    let dir = xs.run.join("xen");
    fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("empty-cdrom.{target}"));
    fs::write(&p, b"").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o400)).unwrap();
    p
}

fn sys(loopdev: &str, attr: &str) -> Option<String> {
    let name = loopdev.trim_start_matches("/dev/");
    fs::read_to_string(format!("/sys/block/{name}/{attr}"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn assert_connected_loop(xs: &Xenstored, v: &Vbd, r: &Run, backing: &str) -> String {
    assert_eq!(r.status, 0, "{r:?}");
    assert_eq!(
        xs.read(&v.node("hotplug-status")).as_deref(),
        Some("connected"),
        "{r:?}"
    );
    assert_eq!(xs.read(&v.node("hotplug-error")), None);
    let node = xs.read(&v.node("node")).expect("node written");
    assert_eq!(xs.read(&v.node("physical-device")), Some(dev_hex(&node)));
    assert_eq!(
        xs.read(&v.node("physical-device-path")).as_deref(),
        Some(node.as_str())
    );
    assert_eq!(backing_of(&node).as_deref(), Some(backing));
    let rec = fs::read_to_string(record_path(v)).expect("remove record written");
    assert!(rec.contains(&node), "{rec}");
    node
}

#[test]
fn empty_cdrom_is_attached_read_only_and_removed_without_its_file() {
    let xs = Xenstored::start();
    for mode in ["r", "w"] {
        let fe = domid();
        xs.set_vm(fe, &format!("hvm-{fe}"));
        let empty = empty_cdrom(&xs, fe);
        let p = empty.to_str().unwrap();
        let _c = Cleanup(empty.clone());
        let v = cdrom(&xs, fe, p, mode);
        let r = xs.run("block", &v, "add");
        let node = assert_connected_loop(&xs, &v, &r, p);
        assert_eq!(sys(&node, "ro").as_deref(), Some("1"), "mode {mode}");
        assert_eq!(sys(&node, "size").as_deref(), Some("0"), "zero-length");
        // libxl deletes the file after the remove; remove must not need it even when it is
        // gone already.
        fs::remove_file(&empty).unwrap();
        let r = xs.run("block", &v, "remove");
        assert_eq!(r.status, 0, "{r:?}");
        assert!(!record_path(&v).exists(), "record deleted");
        assert!(
            !backing_of(&node).is_some_and(|b| b.starts_with(p)),
            "{node} still backed by {p}"
        );
        xs.rm(&v.path);
    }
    // The same 0400 file as a disk asked read-write: upstream's read-only refusal.
    let fe = domid();
    let empty = empty_cdrom(&xs, fe);
    let _c = Cleanup(empty.clone());
    let v = xs.vbd(fe, 51712, empty.to_str().unwrap(), "w");
    let r = xs.run("block", &v, "add");
    assert_eq!(r.status, 1, "{r:?}");
    assert_eq!(xs.read(&v.node("hotplug-status")).as_deref(), Some("busy"));
    assert!(loops_of(&empty).is_empty());
}

#[test]
fn a_cdrom_asked_read_write_is_a_reader() {
    // An ISO in two guests' drives, the second asked `w`: both attached read-only (the
    // second judged as a reader), and a guest asking the image read-write as a disk is
    // refused. (The other way round the second is refused: another backend's `mode` is
    // taken as written, and a `w` CD-ROM counts as a writer for the others.)
    let xs = Xenstored::start();
    let t = TempDir::new("iso");
    let iso = image(&t, "a.iso", 4);
    let _c = Cleanup(iso.clone());
    let p = iso.to_str().unwrap();
    let (a, b) = (domid(), domid());
    xs.set_vm(a, "a");
    xs.set_vm(b, "b");
    let va = cdrom(&xs, a, p, "r");
    let na = assert_connected_loop(&xs, &va, &xs.run("block", &va, "add"), p);
    let vb = cdrom(&xs, b, p, "w");
    let nb = assert_connected_loop(&xs, &vb, &xs.run("block", &vb, "add"), p);
    assert_eq!(sys(&na, "ro").as_deref(), Some("1"));
    assert_eq!(sys(&nb, "ro").as_deref(), Some("1"));
    let c = domid();
    xs.set_vm(c, "c");
    let vc = xs.vbd(c, 51712, p, "w");
    let r = xs.run("block", &vc, "add");
    assert_eq!(r.status, 1, "{r:?}");
    assert_eq!(xs.read(&vc.node("hotplug-status")).as_deref(), Some("busy"));
    for v in [&va, &vb] {
        assert_eq!(xs.run("block", v, "remove").status, 0);
    }
    assert!(loops_of(&iso).is_empty());
}

#[test]
fn a_device_cdrom_keeps_its_mode() {
    // blkback opens a device by `mode`: a device CD-ROM asked `w` is a writer, refused
    // next to a reader; asked `r`, it shares.
    let xs = Xenstored::start();
    let t = TempDir::new("phycd");
    let lo = Loop::attach(&image(&t, "drive.img", 4), false);
    let a = domid();
    xs.set_vm(a, "a");
    let va = cdrom(&xs, a, &lo.path, "r");
    assert_eq!(xs.run("block", &va, "add").status, 0);
    let b = domid();
    xs.set_vm(b, "b");
    let vb = cdrom(&xs, b, &lo.path, "w");
    let r = xs.run("block", &vb, "add");
    assert_eq!(r.status, 1, "{r:?}");
    assert_eq!(xs.read(&vb.node("hotplug-status")).as_deref(), Some("busy"));
    xs.rm(&vb.path);
    let vb = cdrom(&xs, b, &lo.path, "r");
    let r = xs.run("block", &vb, "add");
    assert_eq!(r.status, 0, "{r:?}");
    assert_eq!(xs.read(&vb.node("physical-device")), Some(lo.hex()));
}

#[test]
fn stubdom_media_change_back_to_back() {
    // Xen 4.20's CD-ROM change with a stubdomain: eject (remove the stubdom's disk, add the
    // empty drive), insert (remove, add the new medium), on one vdev, as fast as libxl can.
    // Some removes happen while the old loop is still open elsewhere (udev's probe,
    // blkback's last close): the kernel only marks it to detach on its last close, and the
    // next add of the same medium must still connect, with a loop of its own.
    let xs = Xenstored::start();
    let t = TempDir::new("media");
    let iso1 = image(&t, "one.iso", 4);
    let iso2 = image(&t, "two.iso", 4);
    let _c1 = Cleanup(iso1.clone());
    let _c2 = Cleanup(iso2.clone());
    let guest = domid();
    let stub = domid();
    xs.set_vm(guest, &format!("hvm-{guest}"));
    xs.set_vm(stub, &format!("stub-{stub}"));
    xs.write(&format!("/local/domain/{stub}/target"), &guest.to_string());
    let empty = xs.run.join("xen").join(format!("empty-cdrom.{guest}"));
    let _ce = Cleanup(empty.clone());
    // (medium, hold the loop open across its remove and the next add)
    let rounds: [(Option<&std::path::Path>, bool); 9] = [
        (Some(&iso1), false),
        (None, false),
        (Some(&iso2), true),
        (Some(&iso2), true),
        (Some(&iso2), false),
        (None, true),
        (None, false),
        (Some(&iso1), true),
        (Some(&iso1), false),
    ];
    let mut held: Vec<(fs::File, String, String)> = Vec::new();
    let mut nodes = Vec::new();
    for (i, (medium, hold)) in rounds.iter().enumerate() {
        let p = match medium {
            Some(m) => m.to_str().unwrap().to_string(),
            None => empty_cdrom(&xs, guest).to_str().unwrap().to_string(),
        };
        let v = cdrom(&xs, stub, &p, "r");
        let r = xs.run("block", &v, "add");
        assert_ne!(
            xs.read(&v.node("hotplug-status")).as_deref(),
            Some("busy"),
            "round {i}: {r:?}"
        );
        let node = assert_connected_loop(&xs, &v, &r, &p);
        assert!(
            !held.iter().any(|(_, n, _)| *n == node),
            "round {i}: {node} is a loop still held from an earlier round"
        );
        nodes.push(node.clone());
        if *hold {
            let f = fs::File::open(&node).unwrap();
            held.push((f, node.clone(), p.clone()));
        }
        let r = xs.run("block", &v, "remove");
        assert_eq!(r.status, 0, "round {i}: {r:?}");
        assert!(!record_path(&v).exists(), "round {i}: record left");
        if *hold {
            // Still bound (we hold it), marked to go on our close.
            assert_eq!(backing_of(&node).as_deref(), Some(p.as_str()), "round {i}");
            assert_eq!(
                sys(&node, "loop/autoclear").as_deref(),
                Some("1"),
                "round {i}"
            );
        }
        // libxl: the backend directory goes, then the empty drive's file.
        xs.rm(&v.path);
        if medium.is_none() {
            fs::remove_file(&p).unwrap();
        }
    }
    // Every loop held across a media change goes away on its last close.
    let held_nodes: Vec<(String, String)> = held.drain(..).map(|(_, n, p)| (n, p)).collect();
    for (n, p) in &held_nodes {
        let gone = (0..1500).any(|_| {
            let b = backing_of(n);
            if !b.is_some_and(|b| b.starts_with(p.as_str())) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            false
        });
        assert!(gone, "{n} still backed by {p}");
    }
    assert!(loops_of(&iso1).is_empty());
    assert!(loops_of(&iso2).is_empty());
    assert_eq!(nodes.len(), rounds.len());
}

/// A `block-tap` in the test's script directory that logs how it was called.
fn fake_block_tap(xs: &Xenstored) -> std::path::PathBuf {
    let dir = xs.dir.join("scripts");
    fs::create_dir_all(&dir).unwrap();
    let marker = xs.dir.join("block-tap.calls");
    let tap = dir.join("block-tap");
    fs::write(
        &tap,
        format!(
            "#!/bin/sh\necho \"$0 $* $XENBUS_TYPE $XENBUS_PATH\" >> {}\n",
            marker.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&tap, fs::Permissions::from_mode(0o755)).unwrap();
    marker
}

/// A backend as libxl writes it for `backendtype=tap` (Xen 4.19+, libxl_disk.c).
fn vbd3(xs: &Xenstored, fe: u32, params: &str) -> String {
    let path = format!("backend/vbd3/{fe}/51712");
    for (k, v) in [
        ("params", params),
        ("mode", "w"),
        ("frontend-id", &fe.to_string()),
        ("state", "2"),
        ("type", "vbd3"),
        ("online", "1"),
        ("device-type", "disk"),
    ] {
        xs.write(&format!("{path}/{k}"), v);
    }
    path
}

fn run_vbd3(xs: &Xenstored, path: &str, action: &str) -> Run {
    xs.run_with(
        "block",
        &[action],
        &[("XENBUS_PATH", path), ("XENBUS_TYPE", "vbd3")],
    )
}

#[test]
fn tapback_disks_go_to_block_tap() {
    let xs = Xenstored::start();
    let t = TempDir::new("vbd3");
    let img = image(&t, "disk.img", 4);
    let _c = Cleanup(img.clone());
    let marker = fake_block_tap(&xs);
    let tap = xs.dir.join("scripts/block-tap");
    let mut want = String::new();
    for (i, params) in [
        format!("aio:{}", img.display()),
        format!("vhd:{}", img.display()),
        // A bare path block could attach: still block-tap's.
        img.to_str().unwrap().to_string(),
    ]
    .iter()
    .enumerate()
    {
        let fe = domid();
        let path = vbd3(&xs, fe, params);
        for action in ["add", "remove"] {
            let r = run_vbd3(&xs, &path, action);
            assert_eq!(r.status, 0, "{i} {action}: {r:?}");
            want.push_str(&format!("{} {action} vbd3 {path}\n", tap.display()));
        }
        assert_eq!(fs::read_to_string(&marker).unwrap(), want, "{params}");
        // Nothing of ours: no loop, no node, no status (block-tap writes those).
        assert!(loops_of(&img).is_empty(), "{params}");
        for n in [
            "physical-device",
            "physical-device-path",
            "node",
            "hotplug-status",
        ] {
            assert_eq!(xs.read(&format!("{path}/{n}")), None, "{params}: {n}");
        }
    }
}

#[test]
fn tapback_disks_without_block_tap_are_refused_naming_it() {
    let xs = Xenstored::start();
    let t = TempDir::new("vbd3none");
    let img = image(&t, "disk.img", 4);
    let _c = Cleanup(img.clone());
    for params in [
        format!("aio:{}", img.display()),
        img.to_str().unwrap().to_string(),
    ] {
        let fe = domid();
        let path = vbd3(&xs, fe, &params);
        let r = run_vbd3(&xs, &path, "add");
        assert_eq!(r.status, 1, "{r:?}");
        assert_eq!(
            xs.read(&format!("{path}/hotplug-status")).as_deref(),
            Some("error")
        );
        let err = xs.read(&format!("{path}/hotplug-error")).unwrap();
        assert!(err.contains("tapback (vbd3) disk"), "{err}");
        assert!(err.contains("needs the block-tap script"), "{err}");
        assert!(
            err.contains(xs.dir.join("scripts").to_str().unwrap()),
            "names the script directory: {err}"
        );
        assert!(loops_of(&img).is_empty());
        for n in ["physical-device", "physical-device-path", "node"] {
            assert_eq!(xs.read(&format!("{path}/{n}")), None, "{n}");
        }
        // libxl runs remove after a failed add: nothing to undo, success.
        let r = run_vbd3(&xs, &path, "remove");
        assert_eq!(r.status, 0, "{r:?}");
    }
    // The `type` node alone (a `vbd` path) is enough.
    let fe = domid();
    let v = xs.vbd(fe, 51712, img.to_str().unwrap(), "w");
    xs.write(&v.node("type"), "vbd3");
    let r = xs.run("block", &v, "add");
    assert_eq!(r.status, 1, "{r:?}");
    assert!(
        xs.read(&v.node("hotplug-error"))
            .unwrap()
            .contains("needs the block-tap script")
    );
    assert!(loops_of(&img).is_empty());
}
