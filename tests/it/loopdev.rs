//! The loop-device layer on real loop devices: both binding methods, identity checks.
//!
//! Which method bound a loop is observable: only `LOOP_CONFIGURE` takes the read-only flag
//! from its argument; `LOOP_SET_FD` + `LOOP_SET_STATUS64` (where `LO_FLAGS_READ_ONLY` is
//! not settable) make the loop read-only only when the backing fd is. A read-only request
//! on a read-write fd therefore tells the methods apart (`the_method_that_ran_is_the_one_asked_for`).

use std::fs::OpenOptions;

use crate::common::*;
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
            // A concurrent test may hold the loop open for a moment: the kernel then
            // completes the detach at that close. Wait for it before detaching again.
            assert!(loops_of(&img).is_empty());
            // Free, or already taken by a concurrent test: either way left alone.
            let again = loopdev::detach_if_ours(&att, backing).unwrap();
            assert!(
                matches!(again, Detach::AlreadyFree | Detach::Reused(_)),
                "{again:?}"
            );
        }
    }
}

/// `Method::Configure` really used `LOOP_CONFIGURE` (it falls back to the legacy pair only
/// on kernels before 5.8, which would make `both_methods_...` test the legacy path twice),
/// and `Method::Legacy` really used the legacy pair.
#[test]
fn the_method_that_ran_is_the_one_asked_for() {
    let t = TempDir::new("loopmeth");
    let img = image(&t, "a.img", 4);
    let _c = Cleanup(img.clone());
    let meta = std::fs::metadata(&img).unwrap();
    use std::os::unix::fs::MetadataExt;
    let backing = (blkdev::split_dev(meta.dev()), meta.ino());
    for (method, want_ro) in [(Method::Configure, "1"), (Method::Legacy, "0")] {
        let rw = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        let (att, fd) =
            loopdev::attach_using(method, &rw, img.to_str().unwrap(), true, |_, _| Ok(())).unwrap();
        let ro = sysfs(&att.path, "ro");
        drop(fd);
        assert_eq!(
            loopdev::detach_if_ours(&att, backing).unwrap(),
            Detach::Detached
        );
        assert_eq!(
            ro,
            want_ro,
            "{method:?}: a read-only request on a read-write fd gave ro={ro}: the other \
             method ran (kernel {})",
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
        );
    }
    assert!(loops_of(&img).is_empty());
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
