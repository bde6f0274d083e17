//! Test harness shared by the integration tests: a private real oxenstored per test,
//! the built binary run under its script names, and real images, loop devices and mounts
//! that each test creates and removes itself.
//!
//! Hermetic: each `Xenstored` also carries the test's own stand-in for `/var/run`, with the
//! lock directory and the remove-record directory in it, and the path of a syslog socket.
//! Every run of the binary is pointed at them with the test-only variables of
//! `xen_block_hotplug::paths` (`XEN_BLOCK_HOTPLUG_LOCK_DIR`, `..._RECORD_DIR`,
//! `..._SYSLOG`); Debian's scripts, which cannot be told, run in a private mount namespace
//! whose `/run` is that stand-in (`rel::spawn`, `ShellLockHolder`).

use std::fs;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use xen_block_hotplug::invocation::BackendPath;
use xen_block_hotplug::paths;

pub const BIN: &str = env!("CARGO_BIN_EXE_xen-block-hotplug");
pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique number per call in this test process (scratch directory names).
pub fn unique() -> u32 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// The frontend domain ids handed out, wrapping: above the ids tests write literally
/// (0..1000), below Xen's reserved ids (`DOMID_FIRST_RESERVED`, 0x7ff0).
pub const DOMIDS: std::ops::Range<u32> = 1000..32000;

/// The allocator's state, shared with the bats tests (`tests/bats/lib.bash`
/// `next_domid`): the next free id, in decimal, in a file locked with flock(2) around
/// each allocation, so concurrent test processes of any kind never get the same id until
/// the range wraps (31000 ids later). Each test has its own daemon and record directory,
/// so ids only need to differ within one test; being unique across processes keeps the
/// logs of concurrent runs apart.
pub fn domid_file() -> PathBuf {
    std::env::temp_dir().join("xen-block-hotplug-tests.domid")
}

/// `n` consecutive frontend domain ids no other test holds.
pub fn domids(n: u32) -> std::ops::Range<u32> {
    use fs2::FileExt;
    assert!(n > 0 && n <= DOMIDS.len() as u32);
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(domid_file())
        .unwrap();
    f.lock_exclusive().unwrap();
    let mut text = String::new();
    f.read_to_string(&mut text).unwrap();
    let mut first = text.trim().parse().unwrap_or(DOMIDS.start);
    if !DOMIDS.contains(&first) || first + n > DOMIDS.end {
        first = DOMIDS.start;
    }
    f.rewind().unwrap();
    f.set_len(0).unwrap();
    f.write_all(format!("{}\n", first + n).as_bytes()).unwrap();
    // The flock goes with the file.
    first..first + n
}

/// A frontend domain id no other test holds (see `domids`).
pub fn domid() -> u32 {
    domids(1).start
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("xbh-{tag}-{}-{}", std::process::id(), unique()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, s: &str) -> PathBuf {
        self.0.join(s)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A private, real oxenstored (Debian's, unmodified), stopped by PID on drop, and the
/// test's own lock and record directories.
pub struct Xenstored {
    child: Child,
    pub dir: TempDir,
    pub socket: PathBuf,
    /// The test's stand-in for `/var/run`: `xen-hotplug/` in it is the lock directory,
    /// `xen-hotplug/xen-block-hotplug/` the record directory, as on a dom0. Shared by the
    /// daemons of one test that stand for one dom0 (`start_on_same_host`).
    run_dir: Arc<TempDir>,
    pub run: PathBuf,
    pub locks: PathBuf,
    pub records: PathBuf,
    /// The syslog socket runs are pointed at. Nothing listens unless the test binds it
    /// (`syslog_sink`): then syslog is down for the binary and every line, debug ones
    /// too, goes to the hotplug log, on every host alike.
    pub syslog: PathBuf,
}

impl Xenstored {
    pub fn start() -> Xenstored {
        Self::start_on(Arc::new(TempDir::new("run")))
    }

    /// Another daemon for the same dom0 (a restarted xenstored): same lock and record
    /// directories.
    pub fn start_on_same_host(&self) -> Xenstored {
        Self::start_on(self.run_dir.clone())
    }

    fn start_on(run_dir: Arc<TempDir>) -> Xenstored {
        let dir = TempDir::new("xsd");
        let log = fs::File::create(dir.join("daemon.log")).unwrap();
        let child = Command::new(format!("{REPO}/tests/support/xenstored-run"))
            .arg(dir.join("d"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let socket = dir.join("d/run/socket");
        let run = run_dir.path().to_path_buf();
        let locks = run.join("xen-hotplug");
        let records = locks.join("xen-block-hotplug");
        let syslog = dir.join("syslog/socket");
        for d in [dir.path(), &run, &locks, &records, syslog.parent().unwrap()] {
            fs::create_dir_all(d).unwrap();
            // Whatever the umask: the binary honours only directories nobody else may write.
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
            assert!(paths::trusted_dir(d), "{} would be ignored", d.display());
        }
        let xs = Xenstored {
            child,
            dir,
            socket,
            run_dir,
            run,
            locks,
            records,
            syslog,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if xs.socket.exists() && xs.try_read("/tool/xenstored").is_ok() {
                return xs;
            }
            if Instant::now() > deadline {
                let log = fs::read_to_string(xs.dir.join("daemon.log")).unwrap_or_default();
                panic!("oxenstored did not start: {log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Points a run of our binary at this test's lock directory, record directory and
    /// syslog socket.
    pub fn hermetic<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env(paths::LOCK_DIR_ENV, &self.locks)
            .env(paths::RECORD_DIR_ENV, &self.records)
            .env(paths::SYSLOG_ENV, &self.syslog)
    }

    /// Listens on this test's syslog socket: from now on the binary's syslog lines come
    /// here, and only errors and children's stderr reach the hotplug log.
    pub fn syslog_sink(&self) -> Syslog {
        let sock = UnixDatagram::bind(&self.syslog).unwrap();
        sock.set_nonblocking(true).unwrap();
        Syslog(sock)
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// One raw request (xs_wire.h type, payload) on a connection of its own.
    pub fn request(&self, ty: u32, payload: &[u8]) -> Result<Vec<u8>, String> {
        let mut s = UnixStream::connect(&self.socket).map_err(|e| e.to_string())?;
        let mut msg = Vec::new();
        for v in [ty, 1, 0, payload.len() as u32] {
            msg.extend_from_slice(&v.to_le_bytes());
        }
        msg.extend_from_slice(payload);
        s.write_all(&msg).map_err(|e| e.to_string())?;
        let mut hdr = [0u8; 16];
        s.read_exact(&mut hdr).map_err(|e| e.to_string())?;
        let rty = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
        let len = u32::from_le_bytes(hdr[12..16].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).map_err(|e| e.to_string())?;
        if rty == 16 {
            return Err(String::from_utf8_lossy(&body)
                .trim_end_matches('\0')
                .to_string());
        }
        Ok(body)
    }

    fn try_read(&self, path: &str) -> Result<String, String> {
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        let b = self.request(2, &p)?;
        Ok(String::from_utf8(b).unwrap())
    }

    /// Reads a node; `None` when it does not exist.
    pub fn read(&self, path: &str) -> Option<String> {
        match self.try_read(path) {
            Ok(v) => Some(v),
            Err(e) if e == "ENOENT" => None,
            Err(e) => panic!("read {path}: {e}"),
        }
    }

    pub fn write(&self, path: &str, value: &str) {
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        p.extend_from_slice(value.as_bytes());
        self.request(11, &p)
            .unwrap_or_else(|e| panic!("write {path}: {e}"));
    }

    pub fn ls(&self, path: &str) -> Vec<String> {
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        match self.request(1, &p) {
            Ok(b) => b
                .split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect(),
            Err(e) if e == "ENOENT" => vec![],
            Err(e) => panic!("ls {path}: {e}"),
        }
    }

    pub fn rm(&self, path: &str) {
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        match self.request(13, &p) {
            Ok(_) => {}
            Err(e) if e == "ENOENT" => {}
            Err(e) => panic!("rm {path}: {e}"),
        }
    }

    /// A domain's `vm` node, as libxl writes it.
    pub fn set_vm(&self, dom: u32, uuid: &str) {
        self.write(&format!("/local/domain/{dom}/vm"), &format!("/vm/{uuid}"));
    }

    /// A backend directory as libxl writes it before running the script (state 2).
    pub fn vbd(&self, fe: u32, devid: u32, params: &str, mode: &str) -> Vbd {
        let path = format!("backend/vbd/{fe}/{devid}");
        for (k, v) in [
            ("params", params),
            ("mode", mode),
            ("frontend-id", &fe.to_string()),
            ("state", "2"),
            ("type", "phy"),
            ("online", "1"),
        ] {
            self.write(&format!("{path}/{k}"), v);
        }
        Vbd {
            path,
            fe,
            records: self.records.clone(),
        }
    }

    /// Runs the binary as `script` (`block`, ...) the way libxl does on Linux.
    pub fn run(&self, script: &str, vbd: &Vbd, action: &str) -> Run {
        self.run_with(script, &[action], &[("XENBUS_PATH", &vbd.path)])
    }

    pub fn run_with(&self, script: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        let dir = self.dir.join("scripts");
        fs::create_dir_all(&dir).unwrap();
        let link = dir.join(script);
        match symlink(BIN, &link) {
            Ok(()) => {}
            // Another thread of this test made it first.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("symlink {}: {e}", link.display()),
        }
        let logdir = self.dir.join("log");
        let mut cmd = Command::new(&link);
        self.hermetic(&mut cmd)
            .args(args)
            .env("XENSTORED_PATH", &self.socket)
            .env("XEN_LOG_DIR", &logdir)
            .env("XENBUS_TYPE", "vbd")
            .env("XENBUS_BASE_PATH", "backend")
            .env_remove("XENBUS_PATH")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out: Output = cmd.output().unwrap();
        Run {
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            log: fs::read_to_string(logdir.join("xen-hotplug.log")).unwrap_or_default(),
        }
    }
}

impl Drop for Xenstored {
    fn drop(&mut self) {
        // By PID: the process we started exec'd into the daemon.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

#[derive(Clone)]
pub struct Vbd {
    pub path: String,
    pub fe: u32,
    /// The record directory of the test's daemon.
    pub records: PathBuf,
}

impl Vbd {
    pub fn node(&self, n: &str) -> String {
        format!("{}/{}", self.path, n)
    }
}

#[derive(Debug)]
pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub log: String,
}

/// A sparse image file.
pub fn image(dir: &TempDir, name: &str, mib: u64) -> PathBuf {
    let p = dir.join(name);
    let f = fs::File::create(&p).unwrap();
    f.set_len(mib << 20).unwrap();
    p
}

/// A loop device a test attached itself (with util-linux), detached on drop only if it
/// is still bound to the same image.
pub struct Loop {
    pub path: String,
    pub image: PathBuf,
}

impl Loop {
    pub fn attach(image: &Path, read_only: bool) -> Loop {
        // `losetup -f` takes the free loop the kernel names, then opens it: a loop another
        // process is detaching meanwhile refuses the open (ENXIO), and util-linux does not
        // retry that. With many tests attaching and detaching at once, try again.
        let mut tries = 0;
        let out = loop {
            let mut cmd = Command::new("losetup");
            cmd.arg("-f").arg("--show");
            if read_only {
                cmd.arg("-r");
            }
            let out = cmd.arg(image).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            tries += 1;
            if out.status.success() || !err.contains("No such device or address") || tries == 10 {
                break out;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            out.status.success(),
            "losetup ({tries} tries): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Loop {
            path,
            image: image.to_path_buf(),
        }
    }

    pub fn name(&self) -> &str {
        self.path.trim_start_matches("/dev/")
    }

    /// `major:minor` in the hex spelling of `physical-device`.
    pub fn hex(&self) -> String {
        dev_hex(&self.path)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        if backing_of(&self.path).as_deref() == Some(self.image.to_str().unwrap()) {
            let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
        }
    }
}

pub fn dev_hex(path: &str) -> String {
    use std::os::unix::fs::MetadataExt;
    let rdev = fs::metadata(path).unwrap().rdev();
    format!(
        "{:x}:{:x}",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    )
}

/// The backing file of a loop device per sysfs, `None` when unbound.
pub fn backing_of(loopdev: &str) -> Option<String> {
    let name = loopdev.trim_start_matches("/dev/");
    fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The loop devices currently bound to `image` (util-linux's view, for cross-checking).
/// A detach of a loop that another process has open for a moment (a concurrent test
/// scanning loop devices) completes at that close: the kernel marks it autoclear meanwhile.
/// Such pending detaches are waited for (up to 30 s: with every integration test in one
/// process, concurrent tests open loop devices often), not reported; nothing here sets
/// autoclear otherwise.
pub fn loops_of(image: &Path) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("losetup")
            .arg("-n")
            .arg("-O")
            .arg("NAME")
            .arg("-j")
            .arg(image)
            .output()
            .unwrap();
        let loops: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        let pending = loops.iter().any(|l| {
            let name = l.trim_start_matches("/dev/");
            fs::read_to_string(format!("/sys/block/{name}/loop/autoclear"))
                .map(|v| v.trim() == "1")
                // No `loop/` directory: the kernel is tearing it down right now.
                .unwrap_or(true)
        });
        if !pending || Instant::now() > deadline {
            return loops;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Detaches every loop bound to `image` (test clean-up after a failed assertion).
pub struct Cleanup(pub PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for l in loops_of(&self.0) {
            let _ = Command::new("losetup").arg("-d").arg(&l).status();
        }
    }
}

/// An ext2 file system on `dev`, mounted on a private directory; unmounted on drop.
pub struct Mounted {
    pub dir: TempDir,
}

impl Mounted {
    pub fn new(dev: &str, read_only: bool) -> Mounted {
        let st = Command::new("mkfs.ext2")
            .args(["-q", "-F", dev])
            .status()
            .unwrap();
        assert!(st.success());
        let dir = TempDir::new("mnt");
        let mut cmd = Command::new("mount");
        if read_only {
            cmd.args(["-o", "ro"]);
        }
        let st = cmd.arg(dev).arg(dir.path()).status().unwrap();
        assert!(st.success(), "mount {dev}");
        Mounted { dir }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// The remove record the binary keeps for a backend: named by the library's key, in the
/// test's record directory.
pub fn record_path(vbd: &Vbd) -> PathBuf {
    let be = BackendPath::parse(&vbd.path, "backend", "vbd").unwrap();
    vbd.records.join(be.record_key())
}

/// The syslog socket of one test (`Xenstored::syslog_sink`). Holds the lines until read;
/// the kernel queues a few hundred datagrams, plenty for the runs of one test.
pub struct Syslog(UnixDatagram);

impl Syslog {
    /// The lines received since the last call, in order (`<priority>tag: text`).
    pub fn drain(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = self.0.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }
}

/// `prog args...` in a private mount namespace whose `/var/run` is `run`: how Debian's
/// scripts, whose lock directory is fixed (`locking.sh`'s `LOCK_BASEDIR`), take the lock in
/// the test's lock directory (`<run>/xen-hotplug`), unmodified, without touching the
/// host's. The command execs, so its PID is the script's.
pub fn in_private_run(run: &Path, prog: &Path) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$0\" /var/run && exec \"$@\"")
        .arg(run)
        .arg(prog);
    cmd
}

/// A bash process holding the `block` lock through Debian's real `locking.sh`, in the
/// lock directory under `run` (a `Xenstored::run`), until `release()` (or drop).
pub struct ShellLockHolder {
    child: Child,
    dir: TempDir,
}

impl ShellLockHolder {
    /// Starts the shell and returns once it holds the lock.
    pub fn start(run: &Path) -> ShellLockHolder {
        let h = Self::spawn(run, false);
        assert!(
            h.wait_marker("held", Duration::from_secs(10)),
            "shell never got the lock"
        );
        h
    }

    /// Starts the shell without waiting: it may be queued behind another holder, and
    /// releases as soon as it gets the lock.
    pub fn start_queued(run: &Path) -> ShellLockHolder {
        Self::spawn(run, true)
    }

    fn spawn(run: &Path, release_at_once: bool) -> ShellLockHolder {
        let dir = TempDir::new("shlock");
        let (m, r) = (dir.join("marker"), dir.join("release"));
        if release_at_once {
            fs::write(&r, b"").unwrap();
        }
        let child = in_private_run(run, Path::new("bash"))
            .arg("-c")
            .arg(format!(
                ". /etc/xen/scripts/locking.sh; claim_lock block; echo held > {m}; \
                 while [ ! -e {r} ]; do sleep 0.05; done; release_lock block; \
                 echo released > {m}",
                m = m.display(),
                r = r.display()
            ))
            .spawn()
            .unwrap();
        ShellLockHolder { child, dir }
    }
    pub fn has_held(&self) -> bool {
        self.dir.join("marker").exists()
    }

    /// The shell's pid (`unshare` and `sh` exec into it): a process with the lock file open.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn wait_marker(&self, content: &str, limit: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < limit {
            if fs::read_to_string(self.dir.join("marker"))
                .map(|s| s.trim() == content)
                .unwrap_or(false)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Releases after `delay` from another thread; the handle yields the release time.
    pub fn release_after(&self, delay: Duration) -> std::thread::JoinHandle<Instant> {
        let r = self.dir.join("release");
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            fs::write(&r, b"").unwrap();
            Instant::now()
        })
    }

    /// Waits for the shell to release and exit; true if it exited successfully.
    pub fn finish(mut self) -> bool {
        fs::write(self.dir.join("release"), b"").unwrap();
        let ok = self.child.wait().unwrap().success();
        ok && self.wait_marker("released", Duration::from_secs(5))
    }
}

impl Drop for ShellLockHolder {
    fn drop(&mut self) {
        let _ = fs::write(self.dir.join("release"), b"");
        let _ = self.child.wait();
    }
}
