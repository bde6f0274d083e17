//! Our `block` lock and Debian's real `/etc/xen/scripts/locking.sh` exclude each other,
//! in both directions, on the real `/var/run/xen-hotplug/block`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use xen_block_hotplug::lock::Lock;

const LOCKING_SH: &str = "/etc/xen/scripts/locking.sh";

/// A bash process that takes the lock through locking.sh, writes `held` to `marker`, waits
/// for `release` to exist, releases, and writes `released`.
fn shell_holder(marker: &Path, release: &Path) -> Child {
    let script = format!(
        ". {LOCKING_SH}; claim_lock block; echo held > {m}; \
         while [ ! -e {r} ]; do sleep 0.05; done; release_lock block; echo released > {m}",
        m = marker.display(),
        r = release.display()
    );
    Command::new("bash").arg("-c").arg(script).spawn().unwrap()
}

fn wait_for(p: &Path, content: &str, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if std::fs::read_to_string(p)
            .map(|s| s.trim() == content)
            .unwrap_or(false)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn both_directions() {
    assert!(
        Path::new(LOCKING_SH).exists(),
        "make test installs xen-utils-common"
    );
    let t = TempDir::new("lockio");

    // 1. The shell holds it: our claim waits until the shell releases.
    let marker = t.join("m1");
    let release = t.join("r1");
    let mut sh = shell_holder(&marker, &release);
    assert!(wait_for(&marker, "held", Duration::from_secs(10)));
    let releaser = {
        let release = release.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            std::fs::write(&release, b"").unwrap();
            Instant::now()
        })
    };
    let lock = Lock::claim("block").unwrap();
    let got = Instant::now();
    let released_at = releaser.join().unwrap();
    assert!(
        got >= released_at,
        "we got the lock while the shell still held it"
    );
    assert!(sh.wait().unwrap().success());
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "released");

    // 2. We hold it: the shell's claim_lock waits until we release.
    let marker2 = t.join("m2");
    let release2 = t.join("r2");
    std::fs::write(&release2, b"").unwrap();
    let mut sh2 = shell_holder(&marker2, &release2);
    std::thread::sleep(Duration::from_millis(700));
    assert!(!marker2.exists(), "the shell got the lock while we held it");
    drop(lock);
    assert!(wait_for(&marker2, "released", Duration::from_secs(10)));
    assert!(sh2.wait().unwrap().success());
}

#[test]
fn the_binary_waits_for_a_shell_holder() {
    let xs = Xenstored::start();
    let t = TempDir::new("lockbin");
    let lo = Loop::attach(&image(&t, "a.img", 8), false);
    let fe = domid();
    let v = xs.vbd(fe, 51712, &lo.path, "r");
    let marker = t.join("m");
    let release = t.join("r");
    let mut sh = shell_holder(&marker, &release);
    assert!(wait_for(&marker, "held", Duration::from_secs(10)));
    let releaser = {
        let release = release.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            std::fs::write(&release, b"").unwrap();
            Instant::now()
        })
    };
    let r = xs.run("block", &v, "add");
    let done = Instant::now();
    assert_eq!(r.status, 0, "{r:?}");
    assert!(
        done >= releaser.join().unwrap(),
        "add finished while the shell held the lock"
    );
    assert!(sh.wait().unwrap().success());
    assert_eq!(
        xs.read(&v.node("hotplug-status")).as_deref(),
        Some("connected")
    );
}
