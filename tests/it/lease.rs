//! Cluster disk leases (issue 15) with real sanlock daemons: several simulated hosts on
//! this machine, each with its own sanlock daemon (`SANLOCK_RUN_DIR`, unprivileged, no
//! watchdog), its own private oxenstored and its own configuration file, all sharing one
//! `LEASE_DIR` on an ext4 file system on a loop device (sanlock needs O_DIRECT, which
//! tmpfs lacks). Every daemon is stopped by its PID; the mount and loop are removed after.
//! Each host's lock and record directories, and so its local lease state
//! (`<lock dir>/xen-block-hotplug-lease`), are its oxenstored's hermetic ones.
//!
//! Timings are printed as `lease: ...` lines (`cargo test --test it lease -- --nocapture`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// The shared lease storage: an ext4 image on a loop device, mounted; one lockspace.
struct Pool {
    lockspace: String,
    leases: PathBuf,
    _mount: Mount,
    _lo: Loop,
    dir: TempDir,
}

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

impl Pool {
    fn new() -> Pool {
        let dir = TempDir::new("lease-pool");
        let img = image(&dir, "shared.ext4", 64);
        let lo = Loop::attach(&img, false);
        let st = Command::new("mkfs.ext4")
            .args(["-q", "-F", &lo.path])
            .status()
            .unwrap();
        assert!(st.success(), "mkfs.ext4");
        let mnt = dir.join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let st = Command::new("mount")
            .arg(&lo.path)
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(st.success(), "mount");
        let mount = Mount(mnt.clone());
        let leases = mnt.join("leases");
        fs::create_dir_all(&leases).unwrap();
        let lockspace = format!("t{}x{}", std::process::id(), unique());
        Pool {
            lockspace,
            leases,
            _mount: mount,
            _lo: lo,
            dir,
        }
    }

    /// A simulated host: its daemon started, its configuration written (`extra` lines
    /// appended), not yet joined.
    fn host(&self, id: u64, extra: &str) -> Host {
        let run = self.dir.join(&format!("run{id}"));
        fs::create_dir_all(&run).unwrap();
        let conf = self.dir.join(&format!("host{id}.conf"));
        fs::write(
            &conf,
            format!(
                "# simulated host {id}\nLEASES=sanlock\nLEASE_LOCKSPACE={}\nLEASE_DIR={}\n\
                 LEASE_HOST_ID={id}\nLEASE_IO_TIMEOUT=1\n{extra}",
                self.lockspace,
                self.leases.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&conf, fs::Permissions::from_mode(0o644)).unwrap();
        let mut h = Host {
            id,
            run,
            conf,
            daemon: None,
            xs: Xenstored::start(),
            lockspace: self.lockspace.clone(),
        };
        h.start_daemon();
        h
    }

    /// Host 1 initialises the pool; every host joins (in parallel, as hosts boot).
    fn hosts(&self, n: u64) -> Vec<Host> {
        let hosts: Vec<Host> = (1..=n).map(|i| self.host(i, "")).collect();
        let r = hosts[0].lease(&["init"]);
        assert_eq!(r.0, 0, "lease init: {r:?}");
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for h in &hosts {
                s.spawn(move || {
                    let r = h.lease(&["join"]);
                    assert_eq!(r.0, 0, "lease join on host {}: {r:?}", h.id);
                });
            }
        });
        eprintln!(
            "lease: {n} hosts joined in {:.1} s (io timeout 1 s)",
            t0.elapsed().as_secs_f64()
        );
        hosts
    }

    fn lease_files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.leases)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.len() == 64)
            .collect();
        v.sort();
        v
    }
}

struct Host {
    id: u64,
    run: PathBuf,
    conf: PathBuf,
    daemon: Option<Child>,
    xs: Xenstored,
    lockspace: String,
}

impl Host {
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SANLOCK_RUN_DIR", self.run.display().to_string()),
            ("XEN_BLOCK_HOTPLUG_CONF", self.conf.display().to_string()),
        ]
    }

    fn start_daemon(&mut self) {
        let log = fs::File::create(self.run.join("daemon.log")).unwrap();
        let child = Command::new("sanlock")
            .args([
                "daemon", "-D", "-w", "0", "-l", "0", "-h", "0", "-U", "root", "-G", "root",
            ])
            .env("SANLOCK_RUN_DIR", &self.run)
            .env("SANLOCK_PRIVILEGED", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let sock = self.run.join("sanlock.sock");
        let t0 = Instant::now();
        // Connectable, not merely present (a stopped daemon leaves its socket file).
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "sanlock daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.daemon = Some(child);
    }

    /// Stops this host's daemon: `sanlock shutdown -f 1`, then SIGKILL by PID.
    fn stop_daemon(&mut self) {
        let Some(mut child) = self.daemon.take() else {
            return;
        };
        let _ = Command::new("sanlock")
            .args(["shutdown", "-f", "1"])
            .env("SANLOCK_RUN_DIR", &self.run)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The host dies: its daemon is SIGKILLed, so its delta lease stops being renewed.
    fn kill_daemon(&mut self) {
        let mut child = self.daemon.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn lease(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::new(BIN);
        let out = self
            .xs
            .hermetic(&mut cmd)
            .arg("lease")
            .args(args)
            .envs(self.env())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn status_json(&self) -> String {
        let r = self.lease(&["status", "--json"]);
        assert_eq!(r.0, 0, "{r:?}");
        r.1
    }

    /// A backend for a new guest `vm` on this host.
    fn vbd(&self, params: &str, mode: &str, vm: &str) -> Vbd {
        let fe = domid();
        self.xs.set_vm(fe, vm);
        self.xs.vbd(fe, 51712, params, mode)
    }

    fn run(&self, v: &Vbd, action: &str) -> Run {
        let env = self.env();
        let mut e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        e.push(("XENBUS_PATH", &v.path));
        self.xs.run_with("block", &[action], &e)
    }

    fn status(&self, v: &Vbd) -> Option<String> {
        self.xs.read(&v.node("hotplug-status"))
    }

    fn error(&self, v: &Vbd) -> String {
        self.xs.read(&v.node("hotplug-error")).unwrap_or_default()
    }

    fn add_ok(&self, v: &Vbd) -> Duration {
        let t0 = Instant::now();
        let r = self.run(v, "add");
        let took = t0.elapsed();
        assert_eq!(
            r.status,
            0,
            "host {} add: {r:?} error {:?}",
            self.id,
            self.error(v)
        );
        assert_eq!(self.status(v).as_deref(), Some("connected"));
        took
    }

    /// An add that must be refused as `busy`, leaving nothing behind; returns the error.
    fn add_busy(&self, v: &Vbd, image: &Path) -> String {
        let before = loops_of(image).len();
        let r = self.run(v, "add");
        assert_eq!(r.status, 1, "host {} add should be refused: {r:?}", self.id);
        assert_eq!(self.status(v).as_deref(), Some("busy"), "{}", self.error(v));
        assert_eq!(self.xs.read(&v.node("physical-device")), None);
        assert!(!record_path(v).exists(), "no remove record after a refusal");
        assert_eq!(loops_of(image).len(), before, "no loop left behind");
        self.error(v)
    }

    fn remove_ok(&self, v: &Vbd) {
        let r = self.run(v, "remove");
        assert_eq!(r.status, 0, "host {} remove: {r:?}", self.id);
        assert!(!record_path(v).exists(), "record deleted by remove");
        // libxl deletes the backend directory after the remove.
        self.xs.rm(&v.path);
    }

    fn local_state(&self) -> Vec<String> {
        let d = self
            .xs
            .locks
            .join("xen-block-hotplug-lease")
            .join(format!("{}.{}", self.lockspace, self.id));
        let mut v: Vec<String> = fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.len() == 64)
            .collect();
        v.sort();
        v
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop_daemon();
    }
}

fn disk_image(t: &TempDir, name: &str) -> PathBuf {
    image(t, name, 8)
}

#[test]
fn exclusive_across_hosts() {
    let pool = Pool::new();
    let hosts = pool.hosts(2);
    let (h1, h2) = (&hosts[0], &hosts[1]);
    let t = TempDir::new("lease-ex");
    let img = disk_image(&t, "disk.img");
    let _c = Cleanup(img.clone());
    let p = img.to_str().unwrap();

    // Two hosts attach the same new disk read-write at the same moment: the lease file is
    // created once, exactly one add wins, the other is refused naming the winner.
    let (v1, v2) = (h1.vbd(p, "w", "vm-a"), h2.vbd(p, "w", "vm-b"));
    let (r1, r2) = std::thread::scope(|s| {
        let a = s.spawn(|| h1.run(&v1, "add"));
        let b = s.spawn(|| h2.run(&v2, "add"));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(pool.lease_files().len(), 1, "{:?}", pool.lease_files());
    assert_eq!(
        [r1.status, r2.status].iter().filter(|s| **s == 0).count(),
        1,
        "exactly one add wins: {r1:?} {r2:?}"
    );
    let (win, winv, lose, losev, winvm) = if r1.status == 0 {
        (h1, &v1, h2, &v2, "vm-a")
    } else {
        (h2, &v2, h1, &v1, "vm-b")
    };
    assert_eq!(lose.status(losev).as_deref(), Some("busy"));
    let err = lose.error(losev);
    assert!(
        err.contains(&format!("host id {}", win.id)) && err.contains(winvm),
        "{err}"
    );
    assert_eq!(win.local_state(), pool.lease_files());
    assert!(lose.local_state().is_empty());

    // Refused again while held; granted once the holder's remove released it.
    lose.add_busy(losev, &img);
    win.remove_ok(winv);
    assert!(win.local_state().is_empty());
    let took = lose.add_ok(losev);
    eprintln!(
        "lease: add with an exclusive lease took {} ms",
        took.as_millis()
    );
    let st = lose.status_json();
    assert!(
        st.contains("\"kind\":\"exclusive\"") && st.contains("\"phase\":\"held\""),
        "{st}"
    );
    let v3 = win.vbd(p, "r", "vm-c");
    let err = win.add_busy(&v3, &img);
    assert!(err.contains(&format!("host id {}", lose.id)), "{err}");
    lose.remove_ok(losev);
    win.add_ok(&v3);
    win.remove_ok(&v3);
    // Free again: no holders, no leftovers of this host.
    let st = win.lease(&["status", "--json", p]);
    assert!(st.1.contains("\"holders\":[]"), "{st:?}");
    assert!(win.local_state().is_empty() && lose.local_state().is_empty());
}

#[test]
fn shared_readers_across_hosts_refuse_a_writer() {
    let pool = Pool::new();
    let hosts = pool.hosts(3);
    let t = TempDir::new("lease-sh");
    let img = disk_image(&t, "disk.img");
    let _c = Cleanup(img.clone());
    let p = img.to_str().unwrap();
    let r1 = hosts[0].vbd(p, "r", "vm-r1");
    let r2 = hosts[1].vbd(p, "r", "vm-r2");
    hosts[0].add_ok(&r1);
    hosts[1].add_ok(&r2);
    // A second local reader of the same disk shares host 1's lease.
    let r1b = hosts[0].vbd(p, "r", "vm-r1b");
    hosts[0].add_ok(&r1b);
    let w = hosts[2].vbd(p, "w", "vm-w");
    let err = hosts[2].add_busy(&w, &img);
    assert!(
        err.contains("host id 1") && err.contains("host id 2"),
        "{err}"
    );
    assert!(err.contains("vm-r2"), "{err}");
    // The disk's holders, as `lease status DISK` shows them.
    let st = hosts[2].lease(&["status", "--json", p]);
    assert!(
        st.1.contains("\"host_id\":1,") && st.1.contains("\"host_id\":2,"),
        "{st:?}"
    );
    hosts[0].remove_ok(&r1);
    hosts[2].add_busy(&w, &img);
    hosts[0].remove_ok(&r1b);
    hosts[2].add_busy(&w, &img);
    hosts[1].remove_ok(&r2);
    hosts[2].add_ok(&w);
    // And now a reader is refused while the writer holds it.
    let r3 = hosts[0].vbd(p, "r", "vm-r3");
    let err = hosts[0].add_busy(&r3, &img);
    assert!(err.contains("host id 3") && err.contains("vm-w"), "{err}");
    hosts[2].remove_ok(&w);
}

/// Polls `status --json` until the host holds the lease (not a handover any more).
fn wait_held(h: &Host, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let st = h.status_json();
        if st.contains("\"phase\":\"held\"") {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < limit, "handover not done: {st}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn acquirer_pid(st: &str) -> i32 {
    let i = st.find("\"acquirer\":").unwrap() + "\"acquirer\":".len();
    st[i..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn migration_hands_over_to_the_same_vm() {
    let pool = Pool::new();
    let hosts = pool.hosts(3);
    let (src, dst, third) = (&hosts[0], &hosts[1], &hosts[2]);
    let t = TempDir::new("lease-mig");
    let img = disk_image(&t, "disk.img");
    let _c = Cleanup(img.clone());
    let p = img.to_str().unwrap();
    let vs = src.vbd(p, "w", "vm-mig");
    src.add_ok(&vs);
    // xl migrate: the destination's add runs while the source still holds the disk.
    let vd = dst.vbd(p, "w", "vm-mig");
    dst.add_ok(&vd);
    let st = dst.status_json();
    assert!(st.contains("\"phase\":\"handover\""), "{st}");
    // A third VM is refused while both exist...
    let vt = third.vbd(p, "w", "vm-other");
    let err = third.add_busy(&vt, &img);
    assert!(err.contains("host id 1") && err.contains("vm-mig"), "{err}");
    // ... the source's remove releases, and the destination's host takes the lease.
    let t0 = Instant::now();
    src.remove_ok(&vs);
    let took = wait_held(dst, Duration::from_secs(10));
    eprintln!(
        "lease: handover completed {} ms after the source's remove returned ({} ms incl. remove)",
        took.as_millis(),
        t0.elapsed().as_millis()
    );
    let err = third.add_busy(&vt, &img);
    assert!(err.contains("host id 2") && err.contains("vm-mig"), "{err}");
    dst.remove_ok(&vd);
    third.add_ok(&vt);
    third.remove_ok(&vt);
}

/// Kills the acquirer this test froze if the test fails before it exits by itself.
struct Reaper(nix::unistd::Pid);

impl Drop for Reaper {
    fn drop(&mut self) {
        let still = fs::read(format!("/proc/{}/cmdline", self.0))
            .map(|c| String::from_utf8_lossy(&c).contains("handover"))
            .unwrap_or(false);
        if still {
            let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

#[test]
fn handover_guard_refuses_a_third_vm_in_the_gap() {
    let pool = Pool::new();
    let hosts = pool.hosts(3);
    let (src, dst, third) = (&hosts[0], &hosts[1], &hosts[2]);
    let t = TempDir::new("lease-gap");
    let img = disk_image(&t, "disk.img");
    let _c = Cleanup(img.clone());
    let p = img.to_str().unwrap();
    let vs = src.vbd(p, "w", "vm-mig");
    src.add_ok(&vs);
    let vd = dst.vbd(p, "w", "vm-mig");
    dst.add_ok(&vd);
    // Freeze the destination between the source's release and its own acquire: stop its
    // acquirer between two polls (not while it holds its own per-lease lock, which it
    // takes for each attempt), so the gap stays open as long as we like.
    let pid = nix::unistd::Pid::from_raw(acquirer_pid(&dst.status_json()));
    let fds = || -> Vec<(i32, String)> {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .map(|e| {
                let fd = e.file_name().to_str().unwrap().parse().unwrap();
                let target = fs::read_link(e.path()).map(|t| t.to_string_lossy().into_owned());
                (fd, target.unwrap_or_default())
            })
            .collect()
    };
    let _reaper = Reaper(pid);
    let t0 = Instant::now();
    loop {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        if !fds().iter().any(|(_, t)| t.ends_with(".lock")) {
            break;
        }
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "acquirer always locked"
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    // The acquirer inherited no lock fd and no sanlock connection of the add: beyond its
    // stdio (/dev/null) it has its own sanlock socket only.
    for (fd, target) in fds() {
        if fd <= 2 {
            assert_eq!(target, "/dev/null");
        } else {
            assert!(
                target.starts_with("socket:"),
                "acquirer fd {fd} -> {target}"
            );
        }
    }
    src.remove_ok(&vs);
    let vt = third.vbd(p, "w", "vm-other");
    let err = third.add_busy(&vt, &img);
    assert!(
        err.contains("handed over") && err.contains("host id 2") && err.contains("vm-mig"),
        "{err}"
    );
    let vr = third.vbd(p, "r", "vm-reader");
    third.add_busy(&vr, &img);
    // Those refused adds had the disk lease for a moment and gave it back: nobody holds it.
    let st = third.lease(&["status", "--json", p]);
    assert!(st.1.contains("\"holders\":[]"), "{st:?}");
    assert!(st.1.contains("\"handover_to\":[{\"host_id\":2,"), "{st:?}");
    assert!(third.local_state().is_empty());
    // The migration is abandoned: the destination's remove cancels the handover.
    dst.remove_ok(&vd);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
    third.add_ok(&vt);
    third.remove_ok(&vt);
    // The acquirer noticed and exited (it is not our child: poll /proc).
    let t0 = Instant::now();
    while Path::new(&format!("/proc/{pid}/cmdline")).exists()
        && fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains("handover"))
            .unwrap_or(false)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "acquirer {pid} still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn remove_releases_with_the_backend_nodes_gone() {
    let pool = Pool::new();
    let hosts = pool.hosts(2);
    let t = TempDir::new("lease-gone");
    let img = disk_image(&t, "disk.img");
    let _c = Cleanup(img.clone());
    // A phy backend (a loop device this test attached) and a file backend.
    let lo = Loop::attach(&img, false);
    let img2 = disk_image(&t, "disk2.img");
    let _c2 = Cleanup(img2.clone());
    let p2 = img2.to_str().unwrap();
    for (params, image, kind) in [(lo.path.as_str(), &img, "phy"), (p2, &img2, "loop")] {
        let v = hosts[0].vbd(params, "w", "vm-a");
        hosts[0].add_ok(&v);
        let rec = fs::read_to_string(record_path(&v)).unwrap();
        assert!(
            rec.contains("lease-hash=") && rec.contains(&format!("kind={kind}\n")),
            "the remove record names the lease: {rec}"
        );
        let other = hosts[1].vbd(params, "w", "vm-b");
        hosts[1].add_busy(&other, image);
        hosts[0].xs.rm(&v.path);
        hosts[0].remove_ok(&v);
        assert!(hosts[0].local_state().is_empty());
        hosts[1].add_ok(&other);
        hosts[1].remove_ok(&other);
    }
    assert!(loops_of(&img2).is_empty());

    // An add killed (libxl's timeout) after it took the lease but before it saved its
    // remove record, simulated by deleting the record: nobody will remove that backend.
    // The host's next add of the disk drops the dead holder, and its remove releases.
    let v = hosts[0].vbd(&lo.path, "w", "vm-k");
    hosts[0].add_ok(&v);
    fs::remove_file(record_path(&v)).unwrap();
    hosts[0].xs.rm(&v.path);
    let v2 = hosts[0].vbd(&lo.path, "w", "vm-k2");
    hosts[0].add_ok(&v2);
    let st = hosts[0].status_json();
    assert!(!st.contains(&v.path.replace('/', "-")), "{st}");
    hosts[0].remove_ok(&v2);
    assert!(hosts[0].local_state().is_empty());
    let other = hosts[1].vbd(&lo.path, "w", "vm-b");
    hosts[1].add_ok(&other);
    hosts[1].remove_ok(&other);
}

#[test]
fn sanlock_unavailable_is_an_error_and_attaches_nothing() {
    let pool = Pool::new();
    let mut hosts = pool.hosts(1);
    let t = TempDir::new("lease-down");
    let img = disk_image(&t, "disk.img");
    let _c = Cleanup(img.clone());
    let p = img.to_str().unwrap();
    let h = &mut hosts[0];

    let check = |h: &Host, needle: &str| {
        let v = h.vbd(p, "w", "vm-a");
        let r = h.run(&v, "add");
        assert_eq!(r.status, 1, "{r:?}");
        assert_eq!(h.status(&v).as_deref(), Some("error"));
        let err = h.error(&v);
        assert!(err.contains(needle), "{err:?} should contain {needle:?}");
        assert_eq!(h.xs.read(&v.node("physical-device")), None);
        assert!(!record_path(&v).exists());
        assert!(loops_of(&img).is_empty(), "nothing attached");
    };
    // Joined, then left: not in the lockspace.
    let r = h.lease(&["leave"]);
    assert_eq!(r.0, 0, "{r:?}");
    check(h, "has not joined lockspace");
    // The daemon is down.
    h.stop_daemon();
    check(h, "cannot reach the sanlock daemon");
    // ... and the commands say so instead of "not joined" or a disk being "free".
    for args in [&["status"][..], &["status", "--json", p], &["join"]] {
        let r = h.lease(args);
        assert_eq!(r.0, 1, "{args:?}: {r:?}");
        assert!(
            r.2.contains("sanlock daemon is not running"),
            "{args:?}: {r:?}"
        );
    }
    // Lease storage that cannot be used: the disk's lease file is not a lease.
    h.start_daemon();
    let r = h.lease(&["join"]);
    assert_eq!(r.0, 0, "{r:?}");
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(p.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    fs::create_dir(pool.leases.join(&hash)).unwrap();
    check(h, "cannot acquire the lease");
    fs::remove_dir(pool.leases.join(&hash)).unwrap();
    // And with all in order the same add goes through.
    let v = h.vbd(p, "w", "vm-a");
    h.add_ok(&v);
    // sanlock restarted under the held lease: the host's record of it is stale, and the
    // same VM's second disk backend takes a real lease instead of counting itself in.
    h.stop_daemon();
    h.start_daemon();
    let t0 = Instant::now();
    let r = h.lease(&["join"]);
    assert_eq!(r.0, 0, "{r:?}");
    // The stopped daemon held orphans and did not leave the lockspace cleanly: the host id
    // is free again only once its delta lease expired.
    eprintln!(
        "lease: re-join after a daemon stop with orphans took {:.0} s (io timeout 1 s)",
        t0.elapsed().as_secs_f64()
    );
    let v2 = h.vbd(p, "w", "vm-a");
    h.add_ok(&v2);
    let st = h.lease(&["status", "--json", p]);
    assert!(st.1.contains("\"holders\":[{\"host_id\":1,"), "{st:?}");
    h.remove_ok(&v);
    h.remove_ok(&v2);
    let st = h.lease(&["status", "--json", p]);
    assert!(st.1.contains("\"holders\":[]"), "{st:?}");
}

#[test]
fn host_death_frees_its_leases_after_expiry() {
    let pool = Pool::new();
    let mut hosts = pool.hosts(2);
    let t = TempDir::new("lease-death");
    let img = disk_image(&t, "disk.img");
    let _c = Cleanup(img.clone());
    let p = img.to_str().unwrap();
    let v1 = hosts[0].vbd(p, "w", "vm-dead");
    hosts[0].add_ok(&v1);
    let v2 = hosts[1].vbd(p, "w", "vm-new");
    hosts[1].add_busy(&v2, &img);
    // Host 1 dies (its daemon stops renewing; its loop stays, as a dead host's would).
    hosts[0].kill_daemon();
    let t0 = Instant::now();
    loop {
        let r = hosts[1].run(&v2, "add");
        if r.status == 0 {
            break;
        }
        assert_eq!(
            hosts[1].status(&v2).as_deref(),
            Some("busy"),
            "{}",
            hosts[1].error(&v2)
        );
        assert!(
            t0.elapsed() < Duration::from_secs(150),
            "never freed: {}",
            hosts[1].error(&v2)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    eprintln!(
        "lease: a dead host's lease was taken over {:.0} s after its daemon died (io timeout 1 s)",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(hosts[1].status(&v2).as_deref(), Some("connected"));
    hosts[1].remove_ok(&v2);
    // The dead host's own loop (no sanlock to release through any more).
    let r = hosts[0].run(&v1, "remove");
    assert_eq!(
        r.status, 1,
        "its lease cannot be released without its daemon: {r:?}"
    );
    for l in loops_of(&img) {
        let _ = Command::new("losetup").arg("-d").arg(&l).status();
    }
    let _ = fs::remove_file(record_path(&v1));
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let pool = Pool::new();
    let t = TempDir::new("lease-conf");
    let img = disk_image(&t, "disk.img");
    let _c = Cleanup(img.clone());
    let p = img.to_str().unwrap();
    let h = pool.host(1, "");
    for (text, needle) in [
        (
            "LEASES=sanlock\nLEASE_LOCKSPACE=x\nLEASE_DIR=/srv\nLEASE_HOST_ID=1\nLEASE_COLOUR=red\n",
            "unknown key \"LEASE_COLOUR\"",
        ),
        (
            "LEASES=sanlock\nLEASE_LOCKSPACE=x\nLEASE_DIR=/srv\nLEASE_HOST_ID=2001\n",
            "LEASE_HOST_ID must be 1..2000",
        ),
        (
            "LEASES=sanlock\nLEASE_LOCKSPACE=x\nLEASE_DIR=/srv\nLEASE_HOST_ID=0\n",
            "LEASE_HOST_ID must be 1..2000",
        ),
        (
            "LEASES=sanlock\nLEASE_LOCKSPACE=x\nLEASE_DIR=srv/leases\nLEASE_HOST_ID=1\n",
            "LEASE_DIR must be an absolute path",
        ),
    ] {
        fs::write(&h.conf, text).unwrap();
        let v = h.vbd(p, "w", "vm-a");
        let r = h.run(&v, "add");
        assert_eq!(r.status, 1, "{r:?}");
        assert_eq!(h.status(&v).as_deref(), Some("error"));
        let err = h.error(&v);
        assert!(
            err.contains(needle) && err.contains(h.conf.to_str().unwrap()),
            "{err:?}"
        );
        assert!(loops_of(&img).is_empty() && !record_path(&v).exists());
        let r = h.lease(&["status"]);
        assert_eq!(r.0, 1);
        assert!(r.2.contains(needle), "{r:?}");
    }
    // A configuration others may write is not trusted.
    fs::write(&h.conf, "LEASES=none\n").unwrap();
    fs::set_permissions(&h.conf, fs::Permissions::from_mode(0o666)).unwrap();
    let v = h.vbd(p, "w", "vm-a");
    assert_eq!(h.run(&v, "add").status, 1);
    assert!(
        h.error(&v).contains("writable by group or others"),
        "{}",
        h.error(&v)
    );
    // LEASES=none: today's behaviour, no sanlock involved (its socket is not even there).
    fs::set_permissions(&h.conf, fs::Permissions::from_mode(0o644)).unwrap();
    let v = h.vbd(p, "w", "vm-a");
    let env = [
        ("SANLOCK_RUN_DIR", "/nonexistent"),
        ("XEN_BLOCK_HOTPLUG_CONF", h.conf.to_str().unwrap()),
        ("XENBUS_PATH", v.path.as_str()),
    ];
    let r = h.xs.run_with("block", &["add"], &env);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(
        !fs::read_to_string(record_path(&v))
            .unwrap()
            .contains("lease-hash=")
    );
    let r = h.xs.run_with("block", &["remove"], &env);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(pool.lease_files().is_empty());
}

#[test]
fn sweep_releases_the_lease_of_an_orphan_loop() {
    let pool = Pool::new();
    let hosts = pool.hosts(2);
    let t = TempDir::new("lease-sweep");
    let img = disk_image(&t, "disk.img");
    let _c = Cleanup(img.clone());
    let p = img.to_str().unwrap();
    let v = hosts[0].vbd(p, "w", "vm-a");
    hosts[0].add_ok(&v);
    // The backend vanished without a remove: its loop and record stay, and so does the
    // lease, until the operator's sweep mends it.
    hosts[0].xs.rm(&v.path);
    let other = hosts[1].vbd(p, "w", "vm-b");
    hosts[1].add_busy(&other, &img);
    let mut cmd = Command::new(BIN);
    let out = hosts[0]
        .xs
        .hermetic(&mut cmd)
        .args(["sweep", "--apply"])
        .envs(hosts[0].env())
        .env("XENSTORED_PATH", &hosts[0].xs.socket)
        .env("XEN_LOG_DIR", hosts[0].xs.dir.join("log"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout} {out:?}");
    assert!(stdout.contains("detached"), "{stdout}");
    assert!(!record_path(&v).exists() && loops_of(&img).is_empty());
    assert!(
        hosts[0].local_state().is_empty(),
        "the lease went with the record"
    );
    hosts[1].add_ok(&other);
    hosts[1].remove_ok(&other);
}
