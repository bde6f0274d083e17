//! Transactions, watches and the backend primitives of `xs::txn` (issue 11 points 3, 4, 5)
//! against a private, real oxenstored (`common::Xenstored`).

use std::fs::File;
use std::ops::Deref;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use xen_block_hotplug::xs::txn::{Finish, MAX_ATTEMPTS, Report, WaitError, XsTxn};

use crate::common::Xenstored;

/// The test's daemon, with connections of `xs::txn` to it.
struct Daemon(Xenstored);

impl Deref for Daemon {
    type Target = Xenstored;
    fn deref(&self) -> &Xenstored {
        &self.0
    }
}

impl Daemon {
    fn start() -> Daemon {
        Daemon(Xenstored::start())
    }

    /// A backend directory at `path` (absolute) in `state`.
    fn backend(&self, path: &str, state: &str) {
        for (k, v) in [("params", "/x.img"), ("mode", "w"), ("state", state)] {
            self.write(&format!("{path}/{k}"), v);
        }
    }

    fn txn(&self) -> XsTxn {
        XsTxn::connect(&self.socket).unwrap()
    }

    /// The same daemon through the device code path: a plain file descriptor spoken to
    /// with read(2)/write(2), as the xenbus device is.
    fn txn_as_device(&self) -> XsTxn {
        let s = UnixStream::connect(&self.socket).unwrap();
        XsTxn::from_device(File::from(OwnedFd::from(s)))
    }
}

#[test]
fn a_conflicting_commit_gets_eagain_and_the_retry_succeeds() {
    let d = Daemon::start();
    d.write("/t/x", "1");
    for xs in [d.txn(), d.txn_as_device()] {
        let mut attempts = 0;
        let got = xs
            .transaction(|tx| {
                attempts += 1;
                let x: u32 = tx.read("/t/x")?.unwrap().parse()?;
                if attempts == 1 {
                    // Another client changes what this transaction read: its commit
                    // must fail with EAGAIN, and the body run again on the new value.
                    d.write("/t/x", &(x + 10).to_string());
                }
                tx.write("/t/y", &(x + 1).to_string())?;
                Ok(Finish::Commit(x))
            })
            .unwrap();
        assert_eq!(attempts, 2);
        assert_eq!(d.read("/t/y").unwrap(), (got + 1).to_string());
        assert_eq!(d.read("/t/x").unwrap(), got.to_string());
    }
}

#[test]
fn a_transaction_that_always_conflicts_gives_up_with_eagain() {
    let d = Daemon::start();
    d.write("/t/x", "0");
    let xs = d.txn();
    let mut attempts = 0;
    let err = xs
        .transaction(|tx| {
            attempts += 1;
            tx.read("/t/x")?;
            d.write("/t/x", &attempts.to_string());
            tx.write("/t/z", "never")?;
            Ok(Finish::Commit(()))
        })
        .unwrap_err();
    assert_eq!(attempts, MAX_ATTEMPTS);
    assert!(format!("{err:#}").contains("EAGAIN"), "{err:#}");
    assert_eq!(d.read("/t/z"), None);
    // An aborted transaction writes nothing, and the connection stays usable.
    let v = xs
        .transaction(|tx| {
            tx.write("/t/aborted", "x")?;
            Ok(Finish::Abort(7))
        })
        .unwrap();
    assert_eq!(v, 7);
    assert_eq!(d.read("/t/aborted"), None);
}

#[test]
fn a_removed_backend_stays_absent() {
    let d = Daemon::start();
    for xs in [d.txn(), d.txn_as_device()] {
        // Nothing under backend/vbd/5: the report must not recreate it.
        let r = xs
            .report_into_existing(
                "backend/vbd/5/51712",
                &[("hotplug-error", "gone"), ("hotplug-status", "error")],
            )
            .unwrap();
        assert_eq!(r, Report::Vanished);
        assert_eq!(d.read("/local/domain/0/backend/vbd/5"), None);
        assert_eq!(d.read("/local/domain/0/backend/vbd"), None);
        let r = xs
            .report_into_existing(
                "backend/vbd/5/51712",
                &[("physical-device", "7:0"), ("hotplug-status", "connected")],
            )
            .unwrap();
        assert_eq!(r, Report::Vanished);
        assert_eq!(d.read("/local/domain/0/backend/vbd/5"), None);
    }
}

#[test]
fn a_backend_removed_during_the_report_is_not_resurrected() {
    let d = Daemon::start();
    let be = "/local/domain/0/backend/vbd/5/51712";
    d.backend(be, "2");
    let xs = d.txn();
    let mut attempts = 0;
    let r = xs
        .transaction(|tx| {
            attempts += 1;
            let r = tx.write_into_existing(be, &[("hotplug-status", "error")]);
            if attempts == 1 {
                // libxl removes the backend after our check, before our commit.
                d.rm("/local/domain/0/backend/vbd/5");
            }
            r
        })
        .unwrap();
    assert_eq!(attempts, 2);
    assert_eq!(r, Report::Vanished);
    assert_eq!(d.read("/local/domain/0/backend/vbd/5"), None);
}

#[test]
fn a_report_into_an_existing_backend_lands_whole() {
    let d = Daemon::start();
    let be = "backend/vbd/6/51712";
    let abs = "/local/domain/0/backend/vbd/6/51712";
    d.backend(abs, "2");
    let r = d
        .txn_as_device()
        .report_into_existing(
            be,
            &[
                ("hotplug-error", "no such file"),
                ("hotplug-status", "error"),
            ],
        )
        .unwrap();
    assert_eq!(r, Report::Written);
    assert_eq!(
        d.read(&format!("{abs}/hotplug-error")).unwrap(),
        "no such file"
    );
    assert_eq!(d.read(&format!("{abs}/hotplug-status")).unwrap(), "error");
    // A name with a slash would write outside the directory.
    assert!(d.txn().report_into_existing(be, &[("../x", "v")]).is_err());
}

/// Readers in transactions, while a writer keeps the directory busy, never see part of a
/// publication: `physical-device` without `hotplug-status` or the reverse.
#[test]
fn a_publication_is_seen_whole_or_not_at_all() {
    let d = Arc::new(Daemon::start());
    let abs = "/local/domain/0/backend/vbd/7/51712";
    let nodes = [
        "node",
        "physical-device-path",
        "diskseq",
        "physical-device",
        "hotplug-status",
    ];
    let rounds = 30;
    for round in 0..rounds {
        d.backend(abs, "2");
        let stop = Arc::new(AtomicBool::new(false));
        let start = Arc::new(Barrier::new(3));
        let reader = {
            let (d, stop, start) = (d.clone(), stop.clone(), start.clone());
            std::thread::spawn(move || {
                let xs = d.txn();
                start.wait();
                let mut seen = 0;
                while !stop.load(Ordering::SeqCst) {
                    let got: Vec<bool> = xs
                        .transaction(|tx| {
                            let mut v = Vec::new();
                            for n in nodes {
                                v.push(tx.read(&format!("{abs}/{n}"))?.is_some());
                            }
                            Ok(Finish::Abort(v))
                        })
                        .unwrap();
                    assert!(
                        got.iter().all(|b| *b) || got.iter().all(|b| !*b),
                        "round {round}: saw part of a publication: {got:?}"
                    );
                    seen += 1;
                }
                seen
            })
        };
        let writer = {
            let (d, stop, start) = (d.clone(), stop.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    d.write(&format!("{abs}/other"), &i.to_string());
                    i += 1;
                }
            })
        };
        start.wait();
        let r = d
            .txn()
            .report_into_existing(
                "backend/vbd/7/51712",
                &[
                    ("node", "/dev/loop7"),
                    ("physical-device-path", "/dev/loop7"),
                    ("diskseq", "2a"),
                    ("physical-device", "7:7"),
                    ("hotplug-status", "connected"),
                ],
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        assert!(reader.join().unwrap() > 0);
        assert_eq!(r, Report::Written);
        assert_eq!(d.read(&format!("{abs}/physical-device")).unwrap(), "7:7");
        assert_eq!(
            d.read(&format!("{abs}/hotplug-status")).unwrap(),
            "connected"
        );
        d.rm(abs);
    }
}

#[test]
fn initialising_then_initwait_after_300ms_is_seen() {
    let d = Arc::new(Daemon::start());
    for (i, device) in [false, true].into_iter().enumerate() {
        let abs = format!("/local/domain/0/backend/vbd/8/{}", 51712 + i);
        d.backend(&abs, "1");
        let flip = {
            let (d, abs) = (d.clone(), abs.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                d.write(&format!("{abs}/other"), "noise");
                std::thread::sleep(Duration::from_millis(20));
                d.write(&format!("{abs}/state"), "2");
            })
        };
        let xs = if device { d.txn_as_device() } else { d.txn() };
        let rel = abs.trim_start_matches("/local/domain/0/");
        let got = xs.wait_for_state(rel, 2, Instant::now() + Duration::from_secs(20));
        flip.join().unwrap();
        assert_eq!(got.unwrap(), 2);
        // The connection stays usable after the watch is gone.
        assert_eq!(
            xs.report_into_existing(rel, &[("hotplug-status", "connected")])
                .unwrap(),
            Report::Written
        );
        // A backend already past InitWait (and before Closing) is reached at once.
        d.write(&format!("{abs}/state"), "4");
        assert_eq!(
            xs.wait_for_state(rel, 2, Instant::now() + Duration::from_secs(20))
                .unwrap(),
            4
        );
    }
}

#[test]
fn closing_or_removal_is_gone_and_a_stuck_backend_times_out() {
    let d = Arc::new(Daemon::start());
    let xs = d.txn_as_device();
    let far = || Instant::now() + Duration::from_secs(20);
    // Closing (5) and Closed (6) at the start.
    for s in ["5", "6"] {
        let abs = "/local/domain/0/backend/vbd/9/51712";
        d.backend(abs, s);
        match xs.wait_for_state(abs, 2, far()) {
            Err(WaitError::Gone(g)) => assert_eq!(g.state, Some(s.parse().unwrap())),
            other => panic!("state {s}: {other:?}"),
        }
        d.rm(abs);
    }
    // Absent from the start.
    match xs.wait_for_state("backend/vbd/5/51712", 2, far()) {
        Err(WaitError::Gone(g)) => assert_eq!(g.state, None),
        other => panic!("absent: {other:?}"),
    }
    // Initialising, then Closing, then removed (parent and all) while waiting.
    for end in ["closing", "removed"] {
        let abs = "/local/domain/0/backend/vbd/10/51712";
        d.backend(abs, "1");
        let t = {
            let d = d.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                if end == "closing" {
                    d.write(&format!("{abs}/state"), "5");
                } else {
                    d.rm("/local/domain/0/backend/vbd/10");
                }
            })
        };
        let r = d.txn().wait_for_state(abs, 2, far());
        t.join().unwrap();
        match (end, r) {
            ("closing", Err(WaitError::Gone(g))) => assert_eq!(g.state, Some(5)),
            ("removed", Err(WaitError::Gone(g))) => assert_eq!(g.state, None),
            (_, other) => panic!("{end}: {other:?}"),
        }
        d.rm("/local/domain/0/backend/vbd/10");
    }
    // Stuck at Initialising: the deadline ends the wait, with the state seen.
    let abs = "/local/domain/0/backend/vbd/11/51712";
    d.backend(abs, "1");
    for xs in [d.txn(), d.txn_as_device()] {
        match xs.wait_for_state(abs, 2, Instant::now() + Duration::from_millis(300)) {
            Err(WaitError::Deadline { last, .. }) => assert_eq!(last, Some(1)),
            other => panic!("deadline: {other:?}"),
        }
    }
    // A state that is not a number is an error, not a wait.
    d.write(&format!("{abs}/state"), "two");
    assert!(matches!(
        xs.wait_for_state(abs, 2, far()),
        Err(WaitError::Xenstore(_))
    ));
}
