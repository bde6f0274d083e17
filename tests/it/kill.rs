//! SIGKILL at random points: of our `block add` and `block remove` (what libxl does at its
//! 40 s timeout, and what an OOM kill or a crash of the host's tooling looks like), and of
//! the xenstore daemon under a running add.
//!
//! After every kill of ours: the `block` lock is not wedged (a claim succeeds at once), no
//! loop device of the image is attached without a remove record naming it, and repeating
//! the interrupted action (or going on with the next one, as libxl does) converges: one
//! loop while attached, none and no record after the remove.
//!
//! After every kill of the daemon: our add ends on its own (well before its deadline), with
//! exit 0 or 1, never a panic; a failed add leaves no loop and no record; a successful one
//! leaves a record that a remove against a fresh daemon (no backend nodes at all) uses to
//! detach the loop.
//!
//! Sizes: `XBH_KILL_TRIALS` (default 60) and `XBH_XSKILL_TRIALS` (default 12); seed
//! `XBH_SEED`. Figures are printed as `kill: ...` lines and recorded in RELIABILITY.md.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::rel::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use xen_block_hotplug::lock::Lock;

/// How long our add and remove of a file take here (medians of 7), to spread the kills
/// over them.
fn calibrate(xs: &Xenstored, img: &str) -> (Duration, Duration) {
    let (mut add, mut rm) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let v = guest(xs, img, "w");
        let t0 = Instant::now();
        let mut k = spawn(xs, Side::Ours, &v, "add", &[]);
        assert_eq!(wait_limit(&mut k, Duration::from_secs(30)), Some(0));
        add.push(t0.elapsed());
        let t0 = Instant::now();
        let mut k = spawn(xs, Side::Ours, &v, "remove", &[]);
        assert_eq!(wait_limit(&mut k, Duration::from_secs(30)), Some(0));
        rm.push(t0.elapsed());
        forget(xs, &v);
    }
    add.sort();
    rm.sort();
    (add[3], rm[3])
}

/// The test's `block` lock can be taken now (within 10 s).
fn lock_not_wedged(xs: &Xenstored) {
    let (tx, rx) = mpsc::channel();
    let locks = xs.locks.clone();
    std::thread::spawn(move || {
        let l = Lock::claim_in(&locks, "block");
        let _ = tx.send(l.is_ok());
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)),
        Ok(true),
        "the block lock is wedged"
    );
}

/// Every loop of `img` is named by `vbd`'s remove record.
fn loops_are_recorded(img: &std::path::Path, vbd: &Vbd, when: &str) {
    let loops = loops_of(img);
    if loops.is_empty() {
        return;
    }
    let rec = std::fs::read_to_string(record_path(vbd))
        .unwrap_or_else(|_| panic!("{when}: loops {loops:?} attached without a remove record"));
    for l in &loops {
        assert!(
            rec.lines().any(|line| line == format!("node={l}")),
            "{when}: {l} is not named by the record:\n{rec}"
        );
    }
    assert_eq!(loops.len(), 1, "{when}: more than one loop: {loops:?}");
}

/// Spawns our `action`, kills it after `delay` (if still running), and says whether the
/// kill landed (false: it had finished first).
fn run_and_kill(xs: &Xenstored, v: &Vbd, action: &str, delay: Duration) -> bool {
    let mut k = spawn(xs, Side::Ours, v, action, &[]);
    std::thread::sleep(delay);
    // The child is not reaped yet, so its PID cannot have been reused.
    let landed = k.try_wait().unwrap().is_none();
    if landed {
        kill(Pid::from_raw(k.id() as i32), Signal::SIGKILL).unwrap();
    }
    let st = k.wait().unwrap();
    landed && st.code().is_none()
}

fn ours(xs: &Xenstored, v: &Vbd, action: &str) -> i32 {
    let mut k = spawn(xs, Side::Ours, v, action, &[]);
    wait_limit(&mut k, Duration::from_secs(40)).expect("ran past its deadline")
}

#[test]
fn sigkill_of_add_and_remove_at_random_points() {
    let xs = Xenstored::start();
    let t = TempDir::new("kill");
    let img = image(&t, "file.img", 8);
    let _c = Cleanup(img.clone());
    let dev = Loop::attach(&image(&t, "dev.img", 8), false);
    let p = img.to_str().unwrap().to_string();
    let (t_add, t_rm) = calibrate(&xs, &p);
    let trials = size("XBH_KILL_TRIALS", 60);
    let mut rng = Rng::from_env("kill");
    // What the kill left, per action: (landed, what was left) -> count.
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut note = |k: String| *seen.entry(k).or_default() += 1;
    for trial in 0..trials {
        let phy = trial % 5 == 4;
        let target = if phy { dev.path.clone() } else { p.clone() };
        let v = guest(&xs, &target, "w");
        let kill_remove = trial % 3 == 2;
        if kill_remove {
            assert_eq!(ours(&xs, &v, "add"), 0, "trial {trial}");
            let d = Duration::from_micros(rng.below(t_rm.as_micros() as u64 * 6 / 5 + 1));
            let landed = run_and_kill(&xs, &v, "remove", d);
            lock_not_wedged(&xs);
            let when = format!("trial {trial}: remove killed after {d:?}");
            if !phy {
                loops_are_recorded(&img, &v, &when);
            }
            let left = match (loops_of(&img).len(), record_path(&v).exists()) {
                (0, false) => "nothing",
                (0, true) => "a record, no loop",
                (_, true) => "loop + record",
                (_, false) => "a loop without record",
            };
            note(format!(
                "remove {}: {} {left}",
                if phy { "phy" } else { "file" },
                if landed { "killed," } else { "finished," }
            ));
            // Converges: remove again.
            assert_eq!(ours(&xs, &v, "remove"), 0, "{when}: second remove");
        } else {
            let d = Duration::from_micros(rng.below(t_add.as_micros() as u64 * 6 / 5 + 1));
            let landed = run_and_kill(&xs, &v, "add", d);
            lock_not_wedged(&xs);
            let when = format!("trial {trial}: add killed after {d:?}");
            if !phy {
                loops_are_recorded(&img, &v, &when);
            }
            let status = xs.read(&v.node("hotplug-status"));
            let pd = xs.read(&v.node("physical-device")).is_some();
            let left = match (
                loops_of(&img).len(),
                record_path(&v).exists(),
                pd,
                status.as_deref(),
            ) {
                (_, _, true, Some("connected")) => "published".to_string(),
                (_, _, true, _) => "physical-device, not connected".to_string(),
                (0, false, false, _) => "nothing".to_string(),
                (0, true, false, _) => "a record, no loop".to_string(),
                (_, true, false, _) => "loop + record, unpublished".to_string(),
                (_, false, false, _) => "a loop without record".to_string(),
            };
            note(format!(
                "add {}: {} {left}",
                if phy { "phy" } else { "file" },
                if landed { "killed," } else { "finished," }
            ));
            if trial.is_multiple_of(2) {
                // libxl's way after a failed add: remove.
                assert_eq!(ours(&xs, &v, "remove"), 0, "{when}: remove");
            } else {
                // Repeating the add converges: attached once, then removed.
                assert_eq!(ours(&xs, &v, "add"), 0, "{when}: add again");
                if !phy {
                    assert_eq!(loops_of(&img).len(), 1, "{when}: add again");
                    loops_are_recorded(&img, &v, &when);
                }
                assert_eq!(ours(&xs, &v, "remove"), 0, "{when}: remove");
            }
        }
        assert!(loops_of(&img).is_empty(), "trial {trial}: loops left");
        assert!(!record_path(&v).exists(), "trial {trial}: record left");
        forget(&xs, &v);
    }
    assert_eq!(
        backing_of(&dev.path).as_deref(),
        Some(dev.image.to_str().unwrap())
    );
    eprintln!(
        "kill: {trials} trials (add {:?}, remove {:?} calibrated), 0 wedged locks, 0 \
         unrecorded loops, all converged",
        t_add, t_rm
    );
    for (k, n) in &seen {
        eprintln!("kill:   {n:4}  {k}");
    }
}

#[test]
fn xenstored_killed_under_a_running_add() {
    let t = TempDir::new("xskill");
    let img = image(&t, "file.img", 8);
    let _c = Cleanup(img.clone());
    let p = img.to_str().unwrap().to_string();
    let trials = size("XBH_XSKILL_TRIALS", 12);
    let mut rng = Rng::from_env("xskill");
    let (mut ok, mut failed, mut max) = (0, 0, Duration::ZERO);
    for trial in 0..trials {
        let xs = Xenstored::start();
        let v = guest(&xs, &p, "w");
        let mut k = spawn(
            &xs,
            Side::Ours,
            &v,
            "add",
            &[("XEN_BLOCK_HOTPLUG_TIMEOUT", "5")],
        );
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_micros(rng.below(8000)));
        kill(xs.pid(), Signal::SIGKILL).unwrap();
        let code = wait_limit(&mut k, Duration::from_secs(20));
        let took = t0.elapsed();
        max = max.max(took);
        assert!(
            took < Duration::from_secs(7),
            "trial {trial}: took {took:?} with the daemon dead"
        );
        match code {
            Some(0) => {
                ok += 1;
                loops_are_recorded(&img, &v, &format!("trial {trial}"));
                assert_eq!(loops_of(&img).len(), 1);
                // A fresh daemon without any of the backend's nodes: the record is enough.
                let xs2 = xs.start_on_same_host();
                drop(xs);
                assert_eq!(ours(&xs2, &v, "remove"), 0, "trial {trial}: remove");
            }
            Some(1) => {
                failed += 1;
                assert!(
                    loops_of(&img).is_empty(),
                    "trial {trial}: failed add left a loop"
                );
                assert!(
                    !record_path(&v).exists(),
                    "trial {trial}: failed add left a record"
                );
            }
            other => panic!("trial {trial}: exit {other:?} (a panic or a signal)"),
        }
        assert!(loops_of(&img).is_empty(), "trial {trial}");
        assert!(!record_path(&v).exists(), "trial {trial}");
    }
    eprintln!(
        "kill: xenstored killed under {trials} adds: {ok} finished first, {failed} failed \
         cleanly, slowest {max:?}, 0 hangs, 0 leaks"
    );
}
