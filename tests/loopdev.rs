//! The loop-device layer on real loop devices: both binding methods, identity checks.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs::OpenOptions;

use common::*;
use xen_block_hotplug::platform::linux::blkdev;
use xen_block_hotplug::platform::linux::loopdev::{self, Detach, Method};

fn sysfs(dev: &str, attr: &str) -> String {
    let name = dev.trim_start_matches("/dev/");
    std::fs::read_to_string(format!("/sys/block/{name}/{attr}"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn both_methods_bind_read_only_and_read_write() {
    let t = TempDir::new("loopdev");
    let img = image(&t, "a.img", 4);
    let _c = Cleanup(img.clone());
    for method in [Method::Configure, Method::Legacy] {
        for ro in [true, false] {
            let f = OpenOptions::new().read(true).write(!ro).open(&img).unwrap();
            let mut seen = None;
            let (att, fd) = loopdev::attach_using(method, &f, img.to_str().unwrap(), ro, |p, d| {
                seen = Some((p.to_string(), d));
                Ok(())
            })
            .unwrap();
            assert_eq!(
                seen,
                Some((att.path.clone(), att.rdev)),
                "recorded before binding"
            );
            assert_eq!(
                backing_of(&att.path).as_deref(),
                Some(img.to_str().unwrap())
            );
            assert_eq!(
                sysfs(&att.path, "ro"),
                if ro { "1" } else { "0" },
                "{method:?} ro={ro}"
            );
            assert_eq!(blkdev::read_only(&fd).unwrap(), ro);
            assert_eq!(
                loopdev::flags_of(&fd).unwrap() & loopdev::LO_FLAGS_READ_ONLY != 0,
                ro
            );
            assert!(att.diskseq.is_some());
            let meta = std::fs::metadata(&img).unwrap();
            use std::os::unix::fs::MetadataExt;
            let found =
                loopdev::loops_backed_by(blkdev::split_dev(meta.dev()), meta.ino()).unwrap();
            assert_eq!(found, vec![(att.path.clone(), att.rdev)]);
            drop(fd);
            let backing = (blkdev::split_dev(meta.dev()), meta.ino());
            // A wrong diskseq is a different attachment: left alone.
            let mut wrong = att.clone();
            wrong.diskseq = att.diskseq.map(|s| s + 1);
            assert!(matches!(
                loopdev::detach_if_ours(&wrong, backing).unwrap(),
                Detach::Reused(_)
            ));
            // A wrong backing inode: left alone.
            assert!(matches!(
                loopdev::detach_if_ours(&att, (backing.0, backing.1 + 1)).unwrap(),
                Detach::Reused(_)
            ));
            assert_eq!(
                loopdev::detach_if_ours(&att, backing).unwrap(),
                Detach::Detached
            );
            assert_eq!(
                loopdev::detach_if_ours(&att, backing).unwrap(),
                Detach::AlreadyFree
            );
            assert!(loops_of(&img).is_empty());
        }
    }
}

#[test]
fn a_refusal_before_binding_leaves_nothing() {
    let t = TempDir::new("loopdev2");
    let img = image(&t, "a.img", 4);
    let _c = Cleanup(img.clone());
    let f = OpenOptions::new().read(true).open(&img).unwrap();
    let r = loopdev::attach(&f, "x", true, |_, _| {
        Err(anyhow::anyhow!("no record, no loop"))
    });
    assert!(r.is_err());
    assert!(loops_of(&img).is_empty());
}
