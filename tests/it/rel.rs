//! Helpers shared by the reliability tests (`storm`, `kill`, `exhaust`, `hostile`): running
//! the binary and Debian's upstream script as child processes we can race and kill, a small
//! seeded random generator, and sizes that `make stress` can raise.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{BIN, Vbd, Xenstored, domid, in_private_run};

/// A size from the environment (`make stress` raises them), else `default`.
pub fn size(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: small, seeded, reproducible (`XBH_SEED`).
pub struct Rng(u64);

impl Rng {
    pub fn from_env(tag: &str) -> Rng {
        let seed = std::env::var("XBH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    ^ u64::from(std::process::id())
            });
        eprintln!("{tag}: XBH_SEED={seed}");
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Debian's unmodified upstream `block` script: `/etc/xen/scripts/block` unless that is
/// our own link (after `make install`), then the copy `make install` saved.
pub fn upstream_block() -> PathBuf {
    for p in ["/etc/xen/scripts/block", "/etc/xen/scripts/block.upstream"] {
        let p = PathBuf::from(p);
        if let Ok(m) = fs::symlink_metadata(&p)
            && m.file_type().is_file()
        {
            return p;
        }
    }
    panic!("Debian's upstream /etc/xen/scripts/block is not installed (make test-deps)");
}

/// Which implementation runs a script.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Ours,
    Upstream,
}

/// Our binary as `<daemon dir>/scripts/block`, the way libxl names a script.
pub fn our_block(xs: &Xenstored) -> PathBuf {
    let dir = xs.dir.join("scripts");
    fs::create_dir_all(&dir).unwrap();
    let link = dir.join("block");
    match symlink(BIN, &link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("symlink {}: {e}", link.display()),
    }
    link
}

/// Starts `side`'s `block <action>` for `vbd` on `xs`'s daemon, without waiting. Both
/// sides take the `block` lock in the test's lock directory.
pub fn spawn(xs: &Xenstored, side: Side, vbd: &Vbd, action: &str, extra: &[(&str, &str)]) -> Child {
    let script = match side {
        Side::Ours => our_block(xs),
        Side::Upstream => {
            // The upstream scripts append to this fixed log.
            fs::create_dir_all("/var/log/xen").unwrap();
            upstream_block()
        }
    };
    let mut cmd = match side {
        Side::Ours => Command::new(script),
        // Its lock directory is fixed: give it the test's in a namespace of its own.
        Side::Upstream => in_private_run(&xs.run, &script),
    };
    cmd.env_clear();
    if side == Side::Ours {
        xs.hermetic(&mut cmd);
    }
    cmd.arg(action)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("XENSTORED_PATH", &xs.socket)
        .env("XEN_LOG_DIR", xs.dir.join("log"))
        .env("XENBUS_TYPE", "vbd")
        .env("XENBUS_BASE_PATH", "backend")
        .env("XENBUS_PATH", &vbd.path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// Waits for `child` at most `limit`; kills it (by its PID) if it runs longer.
/// `None` when it had to be killed.
pub fn wait_limit(child: &mut Child, limit: Duration) -> Option<i32> {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st.code().unwrap_or(-1));
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A guest with its own `vm` and a backend for `params` in `mode`, as libxl writes it.
pub fn guest(xs: &Xenstored, params: &str, mode: &str) -> Vbd {
    let fe = domid();
    xs.set_vm(fe, &format!("guest-{fe}"));
    xs.vbd(fe, 51712, params, mode)
}

/// Removes a guest's backend and domain directories.
pub fn forget(xs: &Xenstored, v: &Vbd) {
    xs.rm(&format!("backend/vbd/{}", v.fe));
    xs.rm(&format!("/local/domain/{}", v.fe));
}

/// A loop device's disk sequence number (sysfs `diskseq`): it grows with every attach, so
/// it orders the grants of a storm.
pub fn loop_diskseq(dev: &str) -> Option<u64> {
    let name = dev.trim_start_matches("/dev/");
    fs::read_to_string(format!("/sys/block/{name}/diskseq"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}
