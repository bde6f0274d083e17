//! Remove must never detach a loop device that has been reused since add. In a test
//! binary of its own: it detaches and re-binds a specific loop number, which a concurrent
//! test allocating loops could take in between.

use std::process::Command;

use crate::common::*;

fn me(xs: &Xenstored, params: &str, mode: &str) -> Vbd {
    let fe = domid();
    xs.set_vm(fe, &format!("me-{fe}"));
    xs.vbd(fe, 51712, params, mode)
}

#[test]
fn remove_never_detaches_a_reused_loop() {
    let xs = Xenstored::start();
    let t = TempDir::new("reuse");
    let img = image(&t, "disk.img", 8);
    let other = image(&t, "other.img", 8);
    let _c = Cleanup(img.clone());
    let v = me(&xs, img.to_str().unwrap(), "w");
    assert_eq!(xs.run("block", &v, "add").status, 0);
    let node = xs.read(&v.node("node")).unwrap();
    // Someone detaches it behind our back and reuses the same device for another file.
    assert!(
        Command::new("losetup")
            .args(["-d", &node])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("losetup")
            .arg(&node)
            .arg(&other)
            .status()
            .unwrap()
            .success()
    );
    let reused = Loop {
        path: node.clone(),
        image: other.clone(),
    };
    let r = xs.run("block", &v, "remove");
    assert_eq!(r.status, 0, "{r:?}");
    assert_eq!(
        backing_of(&node).as_deref(),
        Some(other.to_str().unwrap()),
        "someone else's loop kept"
    );
    assert!(r.log.contains("not detaching"), "{}", r.log);
    assert!(!record_path(&v).exists());
    // Same device and file, attached again (new diskseq): also left alone.
    drop(reused);
    let v2 = me(&xs, img.to_str().unwrap(), "w");
    assert_eq!(xs.run("block", &v2, "add").status, 0);
    let node2 = xs.read(&v2.node("node")).unwrap();
    assert!(
        Command::new("losetup")
            .args(["-d", &node2])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("losetup")
            .arg(&node2)
            .arg(&img)
            .status()
            .unwrap()
            .success()
    );
    let r = xs.run("block", &v2, "remove");
    assert_eq!(r.status, 0);
    assert_eq!(
        backing_of(&node2).as_deref(),
        Some(img.to_str().unwrap()),
        "re-attached loop kept (diskseq)"
    );
    assert!(r.log.contains("disk sequence"), "{}", r.log);
    let _ = Command::new("losetup").args(["-d", &node2]).status();
}
