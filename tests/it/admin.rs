//! The operator commands (`status`, `explain`, `sweep`) on planted host states: a real
//! oxenstored, real loop devices and mounts, the binary's own `block add`.
//!
//! Hermetic as every test here (`common::Xenstored`): each test's runs, ours and `block`'s,
//! use the test's own lock and record directories (`Xenstored::hermetic`), and Debian's
//! `locking.sh` takes the lock in them from a private mount namespace
//! (`ShellLockHolder`): the records and locks of other tests on this host are neither
//! reported nor touched, and a lock held here for 40 s blocks no one else.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// A private daemon, with the test's own lock and record directories.
struct Host {
    xs: Xenstored,
}

/// What a command printed and how it exited.
#[derive(Debug)]
struct Out {
    status: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

fn out(o: Output) -> Out {
    Out {
        status: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

impl Host {
    fn new() -> Host {
        Host {
            xs: Xenstored::start(),
        }
    }

    /// The binary with `args`, pointed at this test's daemon, locks and records.
    fn command(&self, args: &[&OsStr]) -> Command {
        let mut c = Command::new(BIN);
        self.xs
            .hermetic(&mut c)
            .args(args)
            .env("XENSTORED_PATH", &self.xs.socket)
            .env("XEN_LOG_DIR", self.xs.dir.join("log"))
            .stdin(Stdio::null());
        c
    }

    fn admin(&self, args: &[&str]) -> Out {
        let argv: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        out(self.command(&argv).output().unwrap())
    }

    fn status(&self) -> Out {
        self.admin(&["status", "--json"])
    }

    /// `block` as libxl runs it.
    fn block(&self, vbd: &Vbd, action: &str) {
        let r = self.xs.run("block", vbd, action);
        assert_eq!(r.status, 0, "block {action} {}: {}", vbd.path, r.log);
    }

    /// A guest with a name and a vm, and a vbd for it as libxl writes it.
    fn guest(&self, params: &str, mode: &str) -> Vbd {
        let fe = domid();
        self.xs.set_vm(fe, &format!("vm-{fe}"));
        self.xs
            .write(&format!("/local/domain/{fe}/name"), &format!("guest-{fe}"));
        self.xs.vbd(fe, 51712, params, mode)
    }

    /// A guest's vbd over `dev` as a connected backend looks (planted, not attached).
    fn connected(&self, dev: &str, mode: &str) -> Vbd {
        let v = self.guest(dev, mode);
        self.xs.write(&v.node("physical-device"), &dev_hex(dev));
        self.xs.write(&v.node("physical-device-path"), dev);
        self.xs.write(&v.node("hotplug-status"), "connected");
        self.xs.write(&v.node("state"), "4");
        v
    }

    fn record(&self, vbd: &Vbd) -> PathBuf {
        record_path(vbd)
    }
}

fn problems(v: &Value) -> Vec<&Value> {
    v["problems"].as_array().unwrap().iter().collect()
}

fn kinds(v: &Value) -> Vec<String> {
    problems(v)
        .iter()
        .map(|p| p["kind"].as_str().unwrap().to_string())
        .collect()
}

fn backend<'a>(v: &'a Value, vbd: &Vbd) -> &'a Value {
    v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["path"] == vbd.path.as_str())
        .unwrap_or_else(|| panic!("{} not listed: {v}", vbd.path))
}

/// Output with line breaks and indents as single spaces (human output wraps at 80).
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn is_bound(dev: &str) -> bool {
    backing_of(dev).is_some()
}

#[test]
fn a_healthy_host_has_no_problems() {
    let h = Host::new();
    let t = TempDir::new("healthy");
    let img = image(&t, "file.img", 8);
    let _c = Cleanup(img.clone());
    let file = h.guest(img.to_str().unwrap(), "w");
    h.block(&file, "add");
    let lo = Loop::attach(&image(&t, "phy.img", 8), false);
    let phy = h.guest(&lo.path, "r");
    h.block(&phy, "add");
    // A backend of another disk kind, and a network backend that is not listed.
    h.xs.write("backend/qdisk/77/768/params", "aio:/srv/q.img");
    h.xs.write("backend/qdisk/77/768/mode", "r");
    h.xs.write("backend/vif/77/0/mac", "00:16:3e:00:00:01");

    let s = h.status();
    assert_eq!(s.status, 0, "{s:?}");
    let v = s.json();
    assert!(problems(&v).is_empty(), "{v}");
    let node = h.xs.read(&file.node("node")).unwrap();
    let f = backend(&v, &file);
    assert_eq!(f["kind"], "vbd");
    assert_eq!(f["domain"], file.fe);
    assert_eq!(f["name"], format!("guest-{}", file.fe));
    assert_eq!(f["devid"], "51712");
    assert_eq!(f["params"], img.to_str().unwrap());
    assert_eq!(f["mode"], "w");
    assert_eq!(f["device"], dev_hex(&node));
    assert_eq!(f["device_path"], node.as_str());
    assert_eq!(f["backing_file"], img.to_str().unwrap());
    assert_eq!(f["state"], "2");
    assert_eq!(f["hotplug_status"], "connected");
    assert_eq!(f["record"], true);
    let p = backend(&v, &phy);
    assert_eq!(p["device_path"], lo.path.as_str());
    assert_eq!(p["backing_file"], lo.image.to_str().unwrap());
    assert_eq!(p["record"], false);
    let paths: Vec<&str> = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"backend/qdisk/77/768"), "{paths:?}");
    assert!(
        !paths.iter().any(|p| p.starts_with("backend/vif")),
        "{paths:?}"
    );

    // The human table: problems first, then a row and a detail line per backend.
    let human = h.admin(&["status"]);
    assert_eq!(human.status, 0, "{human:?}");
    assert!(
        human.stdout.starts_with("No problems.\n\nBACKEND"),
        "{}",
        human.stdout
    );
    assert!(
        human
            .stdout
            .contains(&format!("{}  guest-{}  w", file.path, file.fe))
    );
    for l in human.stdout.lines() {
        assert!(l.chars().count() <= 80, "{l:?}");
    }

    // explain: the phy device is read-only with another guest; writing it is refused.
    let e = h.admin(&["explain", &lo.path, "--mode", "r", "--json"]);
    assert_eq!(e.status, 0, "{e:?}");
    assert_eq!(e.json()["grantable"], true);
    let e = h.admin(&["explain", &lo.path, "--json"]);
    assert_eq!(e.status, 1, "{e:?}");
    let v = e.json();
    assert_eq!(v["grantable"], false);
    let g = &v["holders"][0];
    assert_eq!(g["kind"], "guest");
    assert_eq!(g["domain"], phy.fe);
    assert_eq!(g["backend"], phy.path.as_str());
    assert_eq!(g["mode"], "r");
    // For the guest that has it, it is its own disk.
    let fe = phy.fe.to_string();
    let e = h.admin(&["explain", &lo.path, "--frontend", &fe]);
    assert_eq!(e.status, 0, "{e:?}");
    assert!(e.stdout.contains("grantable"), "{e:?}");
    // The file, through its loop device.
    let e = h.admin(&["explain", img.to_str().unwrap(), "--mode", "r"]);
    assert_eq!(e.status, 1, "{e:?}");
    assert!(e.stdout.contains(&format!("{node} (")), "{}", e.stdout);
    assert!(e.stdout.contains("is a loop device over"), "{}", e.stdout);
    let free = image(&t, "free.img", 1);
    let e = h.admin(&["explain", free.to_str().unwrap(), "--json"]);
    assert_eq!(e.status, 0, "{e:?}");
    assert_eq!(e.json()["holders"], Value::Array(vec![]));

    let s = h.admin(&["sweep"]);
    assert_eq!(s.status, 0, "{s:?}");
    assert_eq!(s.stdout, "Nothing to mend.\n");

    h.block(&file, "remove");
    h.block(&phy, "remove");
    assert!(loops_of(&img).is_empty());
}

#[test]
fn two_guests_writing_one_disk_are_reported_and_never_swept() {
    let h = Host::new();
    let t = TempDir::new("shared");
    let lo = Loop::attach(&image(&t, "a.img", 8), false);
    let a = h.connected(&lo.path, "w");
    let b = h.connected(&lo.path, "w");
    // A third guest on another disk is not involved.
    let other = Loop::attach(&image(&t, "b.img", 8), false);
    let _c = h.connected(&other.path, "w");

    let s = h.status();
    assert_eq!(s.status, 1, "{s:?}");
    let v = s.json();
    assert_eq!(kinds(&v), ["shared-writable"], "{v}");
    let p = problems(&v)[0];
    let named: Vec<&str> = p["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backend"].as_str().unwrap())
        .collect();
    let mut want = vec![a.path.as_str(), b.path.as_str()];
    want.sort();
    assert_eq!(named, want);
    assert_eq!(p["backends"][0]["mode"], "w");
    assert_eq!(p["device"], dev_hex(&lo.path));
    assert!(
        p["message"]
            .as_str()
            .unwrap()
            .contains("sharing rules forbid")
    );

    let human = h.admin(&["status"]);
    assert_eq!(human.status, 1);
    assert!(
        human.stdout.starts_with("1 problem:\n* shared-writable: "),
        "{}",
        human.stdout
    );

    // explain names every holder, with its domain as a number.
    let e = h.admin(&["explain", &lo.path, "--mode", "r", "--json"]);
    assert_eq!(e.status, 1, "{e:?}");
    let v = e.json();
    let doms: Vec<u64> = v["holders"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["kind"] == "guest")
        .map(|h| h["domain"].as_u64().unwrap())
        .collect();
    let mut want = vec![u64::from(a.fe), u64::from(b.fe)];
    want.sort();
    assert_eq!(doms, want);

    for args in [&["sweep"][..], &["sweep", "--apply"][..]] {
        let s = h.admin(args);
        assert_eq!(s.status, 1, "{s:?}");
        assert!(
            s.stdout
                .contains("Left alone (reported only):\n* shared-writable"),
            "{}",
            s.stdout
        );
        assert!(is_bound(&lo.path), "never touched");
    }
}

#[test]
fn two_loops_over_one_image_file_are_one_disk() {
    // What upstream's broken file check leaves: a loop per guest over the same file.
    let h = Host::new();
    let t = TempDir::new("sharedfile");
    let img = image(&t, "a.img", 8);
    let (l1, l2) = (Loop::attach(&img, false), Loop::attach(&img, false));
    let a = h.connected(&l1.path, "w");
    let b = h.connected(&l2.path, "r");
    let v = h.status().json();
    assert_eq!(kinds(&v), ["shared-writable"], "{v}");
    let p = problems(&v)[0];
    assert_eq!(p["disk"], img.to_str().unwrap());
    assert_eq!(p["backends"].as_array().unwrap().len(), 2, "{p}");
    assert!(p.to_string().contains(&a.path) && p.to_string().contains(&b.path));
    // explain on the file names both loops.
    let e = h
        .admin(&["explain", img.to_str().unwrap(), "--json"])
        .json();
    let loops: Vec<&str> = e["holders"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["kind"] == "loop")
        .map(|h| h["path"].as_str().unwrap())
        .collect();
    assert!(
        loops.contains(&l1.path.as_str()) && loops.contains(&l2.path.as_str()),
        "{e}"
    );
}

#[test]
fn an_orphan_loop_is_reported_then_swept() {
    let h = Host::new();
    let t = TempDir::new("orphan");
    let img = image(&t, "disk.img", 8);
    let _c = Cleanup(img.clone());
    let v = h.guest(img.to_str().unwrap(), "w");
    h.block(&v, "add");
    let node = h.xs.read(&v.node("node")).unwrap();
    // libxl forgot to run remove: the backend is gone, the loop and record stay.
    h.xs.rm(&v.path);

    let s = h.status();
    assert_eq!(s.status, 1, "{s:?}");
    let j = s.json();
    assert_eq!(kinds(&j), ["orphan-loop"], "{j}");
    let p = problems(&j)[0];
    assert_eq!(p["loop"], node.as_str());
    assert_eq!(p["backend"], v.path.as_str());
    assert_eq!(p["backing_file"], img.to_str().unwrap());
    assert_eq!(p["record"], h.record(&v).to_str().unwrap());

    let dry = h.admin(&["sweep"]);
    assert_eq!(dry.status, 1, "{dry:?}");
    assert!(
        dry.stdout
            .starts_with("Would mend (run again with --apply):\n* orphan-loop: detach"),
        "{}",
        dry.stdout
    );
    assert!(is_bound(&node), "a dry run changes nothing");
    assert!(h.record(&v).exists());

    let apply = h.admin(&["sweep", "--apply"]);
    assert_eq!(apply.status, 0, "{apply:?}");
    assert!(
        apply
            .stdout
            .starts_with(&format!("Mended:\n* detached {node}")),
        "{}",
        apply.stdout
    );
    assert!(loops_of(&img).is_empty(), "detached");
    assert!(!h.record(&v).exists(), "record deleted");
    let s = h.status();
    assert_eq!(s.status, 0, "{s:?}");
    assert_eq!(h.admin(&["sweep"]).stdout, "Nothing to mend.\n");
}

#[test]
fn an_orphan_mounted_in_dom0_is_left_alone() {
    let h = Host::new();
    let t = TempDir::new("orphanmnt");
    let img = image(&t, "disk.img", 8);
    let _c = Cleanup(img.clone());
    let v = h.guest(img.to_str().unwrap(), "w");
    h.block(&v, "add");
    let node = h.xs.read(&v.node("node")).unwrap();
    h.xs.rm(&v.path);
    let m = Mounted::new(&node, false);
    let s = h.admin(&["sweep", "--apply"]);
    assert_eq!(s.status, 1, "{s:?}");
    assert!(
        squash(&s.stdout).contains("is not touched: it is mounted at"),
        "{}",
        s.stdout
    );
    assert!(is_bound(&node));
    assert!(h.record(&v).exists());
    drop(m);
    let s = h.admin(&["sweep", "--apply"]);
    assert_eq!(s.status, 0, "{s:?}");
    assert!(loops_of(&img).is_empty());
}

#[test]
fn a_stale_record_is_reported_then_deleted() {
    let h = Host::new();
    let t = TempDir::new("stale");
    let img = image(&t, "disk.img", 8);
    let _c = Cleanup(img.clone());
    let v = h.guest(img.to_str().unwrap(), "w");
    h.block(&v, "add");
    let node = h.xs.read(&v.node("node")).unwrap();
    // Backend gone and loop detached by hand: the record names neither.
    h.xs.rm(&v.path);
    assert!(
        Command::new("losetup")
            .arg("-d")
            .arg(&node)
            .status()
            .unwrap()
            .success()
    );
    wait_not_backed_by(&node, &img);

    let j = h.status().json();
    assert_eq!(kinds(&j), ["stale-record"], "{j}");
    let p = problems(&j)[0];
    assert_eq!(p["backend"], v.path.as_str());
    // Free, or already taken by another test's attach: either way not ours.
    let why = p["why"].as_str().unwrap();
    assert!(
        why.contains("no longer attached") || why.contains("reused since"),
        "{p}"
    );
    let dry = h.admin(&["sweep"]);
    assert!(
        dry.stdout.contains("* stale-record: delete the record"),
        "{}",
        dry.stdout
    );
    assert!(h.record(&v).exists());
    let apply = h.admin(&["sweep", "--apply"]);
    assert_eq!(apply.status, 0, "{apply:?}");
    assert!(!h.record(&v).exists());
    assert_eq!(h.status().status, 0);
}

/// Waits until `dev` is no longer bound to `img` (a detach completes at the last close of
/// the device, and another test scanning loops may hold it open for a moment; another
/// test may also bind it again at once).
fn wait_not_backed_by(dev: &str, img: &Path) {
    let t = Instant::now();
    let ours = || backing_of(dev).as_deref() == img.to_str();
    while ours() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!ours(), "{dev} still bound to {}", img.display());
}

#[test]
fn a_loop_reused_since_its_attach_is_device_reused_and_not_detached() {
    let h = Host::new();
    let t = TempDir::new("reused");
    let img = image(&t, "disk.img", 8);
    let _c = Cleanup(img.clone());
    let v = h.guest(img.to_str().unwrap(), "w");
    h.block(&v, "add");
    let node = h.xs.read(&v.node("node")).unwrap();
    // Someone detaches it behind our back and binds another image to the same device.
    let other = image(&t, "other.img", 8);
    assert!(
        Command::new("losetup")
            .arg("-d")
            .arg(&node)
            .status()
            .unwrap()
            .success()
    );
    wait_not_backed_by(&node, &img);
    // Bound again by us, unless another test's attach took it first: reused either way.
    let deadline = Instant::now() + Duration::from_secs(5);
    let rebound = loop {
        if backing_of(&node).is_some() {
            break false;
        }
        let ok = Command::new("losetup")
            .arg(&node)
            .arg(&other)
            .status()
            .unwrap()
            .success();
        if ok {
            break true;
        }
        assert!(Instant::now() < deadline, "could not re-bind {node}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _reuse = rebound.then(|| Loop {
        path: node.clone(),
        image: other.clone(),
    });

    let s = h.status();
    assert_eq!(s.status, 1, "{s:?}");
    let j = s.json();
    assert_eq!(kinds(&j), ["device-reused"], "{j}");
    let p = problems(&j)[0];
    assert_eq!(p["backend"], v.path.as_str());
    assert_eq!(
        p["diskseq"],
        h.xs.read(&v.node("diskseq")).unwrap().as_str()
    );
    assert_ne!(p["diskseq"], p["device_diskseq"]);
    // The backend shows the loop's present backing file.
    if rebound {
        assert_eq!(backend(&j, &v)["backing_file"], other.to_str().unwrap());
    }

    // Gone backend now: the record's loop is someone else's; sweep deletes only the record.
    h.xs.rm(&v.path);
    let j = h.status().json();
    assert_eq!(kinds(&j), ["stale-record"], "{j}");
    let why = problems(&j)[0]["why"].as_str().unwrap();
    assert!(
        why.contains("reused") || (!rebound && why.contains("no longer attached")),
        "{j}"
    );
    let apply = h.admin(&["sweep", "--apply"]);
    assert_eq!(apply.status, 0, "{apply:?}");
    if rebound {
        assert_eq!(
            backing_of(&node).as_deref(),
            Some(other.to_str().unwrap()),
            "not detached"
        );
    }
    assert!(!h.record(&v).exists());
}

#[test]
fn a_lock_held_past_libxl_s_timeout_is_reported_with_its_holder() {
    let h = Host::new();
    let t = TempDir::new("lockheld");
    // An orphan to mend, planted while the lock is free.
    let img = image(&t, "disk.img", 8);
    let _c = Cleanup(img.clone());
    let v = h.guest(img.to_str().unwrap(), "w");
    h.block(&v, "add");
    let node = h.xs.read(&v.node("node")).unwrap();
    h.xs.rm(&v.path);

    let holder = ShellLockHolder::start(&h.xs.run);
    let since = Instant::now();
    let s = h.status();
    assert_eq!(s.status, 1, "{s:?}");
    assert_eq!(
        kinds(&s.json()),
        ["orphan-loop"],
        "held briefly is no problem"
    );
    // The read-only commands never wait for the lock (they would hang here).
    let free = image(&t, "free.img", 1);
    assert_eq!(h.admin(&["explain", free.to_str().unwrap()]).status, 0);
    assert_eq!(h.admin(&["sweep"]).status, 1);
    // sweep --apply needs the lock: it gives up after 30 s and touches nothing.
    let s = h.admin(&["sweep", "--apply"]);
    assert_eq!(s.status, 2, "{s:?}");
    assert!(s.stderr.contains("was not free within 30 s"), "{s:?}");
    assert!(is_bound(&node) && h.record(&v).exists());
    // libxl gives a hotplug script 40 s.
    std::thread::sleep(Duration::from_secs(41).saturating_sub(since.elapsed()));
    let s = h.status();
    assert_eq!(s.status, 1, "{s:?}");
    let j = s.json();
    assert_eq!(kinds(&j), ["orphan-loop", "lock-held"], "{j}");
    let p = problems(&j)[1];
    assert!(p["seconds"].as_u64().unwrap() >= 40, "{p}");
    assert_eq!(p["lock"], h.xs.locks.join("block").to_str().unwrap());
    // /proc/locks names flock(1), which has exited; the script keeps the file open.
    assert!(p["pid"].as_u64().unwrap() > 0);
    assert_eq!(p["pid_alive"], false);
    let open: Vec<u64> = p["open_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert!(open.contains(&u64::from(holder.pid())), "{p}");
    let human = h.admin(&["status"]);
    assert!(
        human.stdout.contains("* lock-held: the block lock"),
        "{}",
        human.stdout
    );
    drop(holder);
    let s = h.admin(&["sweep", "--apply"]);
    assert_eq!(s.status, 0, "{s:?}");
    assert!(loops_of(&img).is_empty());
    assert_eq!(h.status().status, 0);
}

#[test]
fn hostile_inputs_are_clear_errors_with_exit_2() {
    let h = Host::new();
    let v = h.guest("/dev/null", "w");
    // params not UTF-8.
    let mut p = v.node("params").into_bytes();
    p.push(0);
    p.extend_from_slice(b"/srv/\xff\xfe.img");
    h.xs.request(11, &p).unwrap();
    let s = h.status();
    assert_eq!(s.status, 2, "{s:?}");
    assert!(
        s.stderr.contains("cannot inspect")
            && s.stderr.contains(&v.node("params"))
            && s.stderr.contains("not valid UTF-8"),
        "{s:?}"
    );
    assert!(
        s.json()["error"]
            .as_str()
            .unwrap()
            .contains("not valid UTF-8")
    );
    let s = h.admin(&["status"]);
    assert_eq!((s.status, s.stdout.as_str()), (2, ""), "{s:?}");
    let s = h.admin(&["sweep"]);
    assert_eq!(s.status, 2, "{s:?}");
    h.xs.rm(&v.path);

    // A record that cannot be parsed.
    let dir = &h.xs.records;
    fs::write(dir.join("backend-vbd-9-51712"), "garbage\n").unwrap();
    let s = h.status();
    assert_eq!(s.status, 2, "{s:?}");
    assert!(
        s.stderr.contains("corrupt remove record") && s.stderr.contains("backend-vbd-9-51712"),
        "{s:?}"
    );
    fs::remove_file(dir.join("backend-vbd-9-51712")).unwrap();
    assert_eq!(h.status().status, 0);

    // explain: not UTF-8, nothing there, not a disk.
    use std::os::unix::ffi::OsStrExt;
    let argv = ["explain".as_ref(), OsStr::from_bytes(b"/srv/\xff.img")];
    let e = out(h.command(&argv).output().unwrap());
    assert_eq!(e.status, 2, "{e:?}");
    assert!(e.stderr.contains("not valid UTF-8"), "{e:?}");
    let t = TempDir::new("hostile");
    for (path, needle) in [
        (
            t.join("missing.img").to_str().unwrap().to_string(),
            "a path that does not exist",
        ),
        (t.path().to_str().unwrap().to_string(), "a directory"),
        ("/dev/null".to_string(), "a character device"),
    ] {
        let e = h.admin(&["explain", &path, "--json"]);
        assert_eq!(e.status, 2, "{e:?}");
        assert!(e.stderr.contains(needle), "{path}: {e:?}");
        assert!(e.json()["error"].as_str().unwrap().contains(needle));
    }
    // Bad arguments are clap's usage errors, also 2.
    assert_eq!(h.admin(&["explain", "/x", "--mode", "rw"]).status, 2);
    assert_eq!(h.admin(&["status", "--frontend", "1"]).status, 2);
    // No daemon.
    let mut c = h.command(&["status".as_ref()]);
    c.env("XENSTORED_PATH", "/nonexistent/socket");
    let s = out(c.output().unwrap());
    assert_eq!(s.status, 2, "{s:?}");
    assert!(s.stderr.contains("cannot connect to xenstore"), "{s:?}");
}

#[test]
fn readers_and_one_vm_s_own_domains_are_no_problem() {
    let h = Host::new();
    let t = TempDir::new("noproblem");
    // Two guests reading one disk.
    let ro = Loop::attach(&image(&t, "ro.img", 8), false);
    h.connected(&ro.path, "r");
    h.connected(&ro.path, "r");
    // A guest and its stub domain (`target`) writing one disk: one VM.
    let rw = Loop::attach(&image(&t, "rw.img", 8), false);
    let guest = h.connected(&rw.path, "w");
    let stub = h.connected(&rw.path, "w");
    h.xs.write(
        &format!("/local/domain/{}/target", stub.fe),
        &guest.fe.to_string(),
    );
    let s = h.status();
    assert_eq!(s.status, 0, "{s:?}");
    assert_eq!(s.json()["backends"].as_array().unwrap().len(), 4);
    // A third, unrelated guest reading the written disk is a problem.
    let third = h.connected(&rw.path, "r");
    let j = h.status().json();
    assert_eq!(kinds(&j), ["shared-writable"], "{j}");
    assert!(j["problems"][0].to_string().contains(&third.path), "{j}");
}

#[test]
fn explain_names_a_dom0_mount_with_its_access() {
    let h = Host::new();
    let t = TempDir::new("explainmnt");
    let lo = Loop::attach(&image(&t, "m.img", 8), false);
    let m = Mounted::new(&lo.path, true);
    let e = h.admin(&["explain", &lo.path, "--json"]);
    assert_eq!(e.status, 1, "{e:?}");
    let v = e.json();
    let holder = &v["holders"][0];
    assert_eq!(holder["kind"], "mount");
    assert_eq!(holder["access"], "ro");
    assert_eq!(holder["mount_point"], m.dir.path().to_str().unwrap());
    assert_eq!(holder["device"], dev_hex(&lo.path));
    // A read-only mount does not stop a read-only guest.
    let e = h.admin(&["explain", &lo.path, "--mode", "r"]);
    assert_eq!(e.status, 0, "{e:?}");
    let e = h.admin(&["explain", &lo.path]);
    assert!(
        e.stdout.contains("mounted read-only in this domain at"),
        "{}",
        e.stdout
    );
}

#[test]
fn an_orphan_a_qemu_backend_names_is_left_alone() {
    let h = Host::new();
    let t = TempDir::new("orphanqdisk");
    let img = image(&t, "disk.img", 8);
    let _c = Cleanup(img.clone());
    let v = h.guest(img.to_str().unwrap(), "w");
    h.block(&v, "add");
    let node = h.xs.read(&v.node("node")).unwrap();
    h.xs.rm(&v.path);
    // qemu opens what params names itself: no physical-device is ever written.
    let q = format!("backend/qdisk/{}/768", v.fe);
    h.xs.write(&format!("{q}/params"), &format!("aio:{node}"));
    h.xs.write(&format!("{q}/mode"), "w");
    let s = h.admin(&["sweep", "--apply"]);
    assert_eq!(s.status, 1, "{s:?}");
    assert!(
        squash(&s.stdout).contains(&format!("is not touched: the live backend {q} uses it")),
        "{}",
        s.stdout
    );
    assert!(is_bound(&node) && h.record(&v).exists());
    h.xs.rm(&q);
    assert_eq!(h.admin(&["sweep", "--apply"]).status, 0);
    assert!(loops_of(&img).is_empty());
}
