//! Test harness shared by the integration tests: a private real oxenstored per test,
//! the built binary run under its script names, and real images, loop devices and mounts
//! that each test creates and removes itself.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_xen-block-hotplug");
pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique number per call in this test process.
pub fn unique() -> u32 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// A frontend domain id no other test of this run uses (records under /run are keyed by
/// backend path, and tests share the host).
pub fn domid() -> u32 {
    1000 + (std::process::id() % 1000) * 20 + unique()
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

/// A private, real oxenstored (Debian's, unmodified), stopped by PID on drop.
pub struct Xenstored {
    child: Child,
    pub dir: TempDir,
    pub socket: PathBuf,
}

impl Xenstored {
    pub fn start() -> Xenstored {
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
        let xs = Xenstored { child, dir, socket };
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
        Vbd { path, fe, devid }
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
        cmd.args(args)
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

pub struct Vbd {
    pub path: String,
    pub fe: u32,
    pub devid: u32,
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
        let mut cmd = Command::new("losetup");
        cmd.arg("-f").arg("--show");
        if read_only {
            cmd.arg("-r");
        }
        let out = cmd.arg(image).output().unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
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
/// Such pending detaches are waited for (up to 3 s), not reported; nothing here sets
/// autoclear otherwise.
pub fn loops_of(image: &Path) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(3);
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
                .unwrap_or(false)
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

/// The remove record the binary keeps for a backend.
pub fn record_path(vbd: &Vbd) -> PathBuf {
    PathBuf::from("/run/xen-hotplug/xen-block-hotplug").join(vbd.path.replace('/', "-"))
}

/// A bash process holding the `block` lock through Debian's real `locking.sh` until
/// `release()` (or drop).
pub struct ShellLockHolder {
    child: Child,
    dir: TempDir,
}

impl ShellLockHolder {
    /// Starts the shell and returns once it holds the lock.
    pub fn start() -> ShellLockHolder {
        let h = Self::spawn(false);
        assert!(
            h.wait_marker("held", Duration::from_secs(10)),
            "shell never got the lock"
        );
        h
    }

    /// Starts the shell without waiting: it may be queued behind another holder, and
    /// releases as soon as it gets the lock.
    pub fn start_queued() -> ShellLockHolder {
        Self::spawn(true)
    }

    fn spawn(release_at_once: bool) -> ShellLockHolder {
        let dir = TempDir::new("shlock");
        let (m, r) = (dir.join("marker"), dir.join("release"));
        if release_at_once {
            fs::write(&r, b"").unwrap();
        }
        let child = Command::new("bash")
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
