//! Exhausted resources: a full `/run` (no room for the remove record), `/run` out of
//! inodes or read-only (no lock file), a full or unwritable log directory. Each run happens
//! in a private mount namespace (`unshare -m`) where the test's stand-in for `/run`
//! (`$RUN`, holding its lock and record directories) or its log directory is a small
//! tmpfs; the daemon's socket lives outside it. Whatever is
//! exhausted, the add must still report correctly: `connected` and exit 0 when it could do
//! its job, else `hotplug-error`, `hotplug-status=error` and exit 1, with no loop left.

use std::process::{Command, Stdio};

use crate::common::*;
use crate::rel::*;

struct Ran {
    code: i32,
    status: Option<String>,
    error: Option<String>,
}

/// Runs our `block <action>` for `v` after `setup` (shell, as root, in a private mount
/// namespace). `$LOGDIR` is the log directory the run uses, `$RUN` the test's `/run`.
fn run_in_ns(xs: &Xenstored, v: &Vbd, action: &str, setup: &str, logdir: &str) -> Ran {
    let script = our_block(xs);
    let trace = std::env::var("XBH_EXHAUST_STRACE").unwrap_or_default();
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "set -e\n{setup}\nset +e\nexec {trace} \"$SCRIPT\" {action}"
        ))
        .env_clear();
    let out = xs
        .hermetic(&mut cmd)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("SCRIPT", &script)
        .env("RUN", &xs.run)
        .env("LOGDIR", logdir)
        .env("XEN_LOG_DIR", logdir)
        .env("XENSTORED_PATH", &xs.socket)
        .env("XENBUS_TYPE", "vbd")
        .env("XENBUS_BASE_PATH", "backend")
        .env("XENBUS_PATH", &v.path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        status: xs.read(&v.node("hotplug-status")),
        error: xs.read(&v.node("hotplug-error")),
    }
}

fn logdir(t: &TempDir) -> String {
    t.join("log").to_str().unwrap().to_string()
}

/// A tmpfs on `$RUN` with the lock and record directories made as the harness makes them
/// (mode 0755: the binary honours only directories nobody else may write), then `fill`.
fn tmpfs_run(options: &str, fill: &str) -> String {
    format!(
        "mount -t tmpfs -o {options} tmpfs \"$RUN\"\n\
         mkdir -m 755 -p \"$RUN/xen-hotplug/xen-block-hotplug\"\n\
         chmod 755 \"$RUN/xen-hotplug\"\n\
         {fill}"
    )
}

/// A tmpfs `$RUN` of `pages` pages with all but `free` of them filled.
fn full_run(pages: u32, free: u32) -> String {
    tmpfs_run(
        &format!("size={}k", pages * 4),
        &format!(
            "dd if=/dev/zero of=\"$RUN/fill\" bs=4096 count={} 2>/dev/null || true",
            pages - free
        ),
    )
}

fn assert_failed_cleanly(r: &Ran, img: &std::path::Path, needle: &str) {
    eprintln!("exhaust: exit {} hotplug-error {:?}", r.code, r.error);
    assert_eq!(r.code, 1, "exit");
    assert_eq!(r.status.as_deref(), Some("error"));
    let e = r.error.as_deref().unwrap_or_default();
    assert!(e.contains(needle), "hotplug-error {e:?} lacks {needle:?}");
    assert!(
        loops_of(img).is_empty(),
        "a loop was left: {:?}",
        loops_of(img)
    );
}

#[test]
fn full_run_phy_add_still_succeeds() {
    // The lock file is empty: an inode, no data. A block device needs no record.
    let xs = Xenstored::start();
    let t = TempDir::new("fullrun");
    let dev = Loop::attach(&image(&t, "dev.img", 8), false);
    let v = guest(&xs, &dev.path, "w");
    let r = run_in_ns(&xs, &v, "add", &full_run(8, 0), &logdir(&t));
    assert_eq!(r.code, 0, "{:?}", r.error);
    assert_eq!(r.status.as_deref(), Some("connected"));
    assert_eq!(xs.read(&v.node("physical-device")), Some(dev.hex()));
}

#[test]
fn full_run_file_add_fails_cleanly() {
    let xs = Xenstored::start();
    let t = TempDir::new("fullrunf");
    let img = image(&t, "file.img", 8);
    let _c = Cleanup(img.clone());
    let v = guest(&xs, img.to_str().unwrap(), "w");
    let r = run_in_ns(&xs, &v, "add", &full_run(8, 0), &logdir(&t));
    assert_failed_cleanly(&r, &img, "cannot save remove record");
    assert_eq!(xs.read(&v.node("physical-device")), None);
}

#[test]
fn run_with_room_for_one_record_only_undoes_the_attach() {
    // The first record (written before the loop is bound) fits; the second (after, with
    // the diskseq) does not: the bound loop must be detached again.
    let xs = Xenstored::start();
    let t = TempDir::new("onepage");
    let img = image(&t, "file.img", 8);
    let _c = Cleanup(img.clone());
    let v = guest(&xs, img.to_str().unwrap(), "w");
    let r = run_in_ns(&xs, &v, "add", &full_run(8, 1), &logdir(&t));
    assert_failed_cleanly(&r, &img, "cannot save remove record");
    assert_eq!(xs.read(&v.node("physical-device")), None);
}

#[test]
fn run_without_inodes_or_read_only_fails_cleanly() {
    let xs = Xenstored::start();
    let t = TempDir::new("noinode");
    let img = image(&t, "file.img", 8);
    let _c = Cleanup(img.clone());
    let dev = Loop::attach(&image(&t, "dev.img", 8), false);
    let no_inodes = tmpfs_run(
        "size=1m,nr_inodes=8",
        "i=0; while touch \"$RUN/f$i\" 2>/dev/null; do i=$((i+1)); done",
    );
    let read_only = tmpfs_run("size=1m", "mount -o remount,ro \"$RUN\"");
    for (what, setup) in [("no inodes", &no_inodes), ("read-only", &read_only)] {
        for target in [dev.path.as_str(), img.to_str().unwrap()] {
            let v = guest(&xs, target, "w");
            let r = run_in_ns(&xs, &v, "add", setup, &logdir(&t));
            assert_failed_cleanly(&r, &img, "lock");
            assert_eq!(xs.read(&v.node("physical-device")), None, "{what}");
            forget(&xs, &v);
        }
    }
    assert_eq!(
        backing_of(&dev.path).as_deref(),
        Some(dev.image.to_str().unwrap())
    );
}

#[test]
fn unwritable_log_dir_still_reports() {
    let xs = Xenstored::start();
    let t = TempDir::new("rolog");
    let dev = Loop::attach(&image(&t, "dev.img", 8), false);
    let log = logdir(&t);
    std::fs::create_dir_all(&log).unwrap();
    let ro = "mount -t tmpfs -o ro tmpfs \"$LOGDIR\"";
    let v = guest(&xs, &dev.path, "w");
    let r = run_in_ns(&xs, &v, "add", ro, &log);
    assert_eq!(r.code, 0, "{:?}", r.error);
    assert_eq!(r.status.as_deref(), Some("connected"));
    let bad = guest(&xs, "/nonexistent/xbh", "w");
    let r = run_in_ns(&xs, &bad, "add", ro, &log);
    assert_eq!(r.code, 1);
    assert_eq!(r.status.as_deref(), Some("error"));
    assert!(r.error.unwrap().contains("does not exist"));
}

/// A log file system with no room left: fd 2 points at the log, and every write to it
/// fails with ENOSPC. Logging must never decide an outcome. (Found here: `eprintln!`
/// panicked on the failed write, exit 101 with nothing reported; fixed in 382bef3.)
#[test]
fn full_log_dir_still_reports() {
    let xs = Xenstored::start();
    let t = TempDir::new("fulllog");
    let dev = Loop::attach(&image(&t, "dev.img", 8), false);
    let log = logdir(&t);
    std::fs::create_dir_all(&log).unwrap();
    let full = "mount -t tmpfs -o size=16k tmpfs \"$LOGDIR\"\n\
                dd if=/dev/zero of=\"$LOGDIR/fill\" bs=4096 count=8 2>/dev/null || true";
    let v = guest(&xs, &dev.path, "w");
    let r = run_in_ns(&xs, &v, "add", full, &log);
    assert_eq!(r.code, 0, "a successful add must not die on its log");
    assert_eq!(r.status.as_deref(), Some("connected"));
    let bad = guest(&xs, "/nonexistent/xbh", "w");
    let r = run_in_ns(&xs, &bad, "add", full, &log);
    assert_eq!(r.code, 1, "a failure must still be reported");
    assert_eq!(r.status.as_deref(), Some("error"));
    assert!(r.error.unwrap_or_default().contains("does not exist"));
}
