//! The test root the binary is pointed at with `XEN_BLOCK_HOTPLUG_TEST_ROOT` (test-only):
//! `bin/` holds the fakes of this directory, `state/` their state, `dev/` and `sys/` the
//! stand-ins for `/dev/disk/by-path`, `/dev/mapper`, `/dev/nbdN` and `/sys/block`.
//! Dropping it detaches every loop device the fakes attached (only those).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{REPO, Run, TempDir, Vbd, Xenstored};

pub struct FakeRoot {
    pub dir: TempDir,
}

impl FakeRoot {
    /// A root whose `bin/` has exactly these fakes.
    pub fn new(tools: &[&str]) -> FakeRoot {
        let dir = TempDir::new("fakes");
        // The binary honours the root only when nobody else may write it.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        for d in [
            "bin",
            "state",
            "dev/disk/by-path",
            "dev/mapper",
            "sys/block",
        ] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        for t in tools {
            symlink(format!("{REPO}/tests/fakes/{t}"), dir.join("bin").join(t)).unwrap();
        }
        FakeRoot { dir }
    }

    pub fn root(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    pub fn append(&self, rel: &str, line: &str) {
        let p = self.dir.join(rel);
        let mut t = fs::read_to_string(&p).unwrap_or_default();
        t.push_str(line);
        t.push('\n');
        self.write(rel, &t);
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.dir.join(rel)).unwrap_or_default()
    }

    /// Every fake invocation so far, one a line (`iscsiadm -m session`).
    pub fn calls(&self) -> String {
        self.read("calls.log")
    }

    /// Runs a fake directly, as an administrator (or another program) would.
    pub fn tool(&self, tool: &str, args: &[&str]) -> std::process::Output {
        Command::new(self.dir.join("bin").join(tool))
            .args(args)
            .env("XEN_BLOCK_HOTPLUG_TEST_ROOT", self.root())
            .output()
            .unwrap()
    }

    /// Runs the binary as `script` on `vbd` with this root, the way libxl does, and how
    /// long it took. `wait` sets `XEN_BLOCK_HOTPLUG_WAIT`.
    pub fn run(
        &self,
        xs: &Xenstored,
        script: &str,
        vbd: &Vbd,
        action: &str,
        wait: Option<&str>,
    ) -> (Run, Duration) {
        let mut env = vec![
            ("XENBUS_PATH", vbd.path.as_str()),
            ("XEN_BLOCK_HOTPLUG_TEST_ROOT", self.root()),
        ];
        if let Some(w) = wait {
            env.push(("XEN_BLOCK_HOTPLUG_WAIT", w));
        }
        let t = Instant::now();
        let r = xs.run_with(script, &[action], &env);
        (r, t.elapsed())
    }
}

impl Drop for FakeRoot {
    fn drop(&mut self) {
        let _ = Command::new(format!("{REPO}/tests/fakes/cleanup"))
            .arg(self.dir.path())
            .status();
    }
}

/// The loop device a path resolves to and its backing file.
pub fn backing_file_of(dev: &str) -> Option<String> {
    let real = fs::canonicalize(dev).ok()?;
    let name = real.file_name()?.to_str()?.to_string();
    if name.starts_with("loop") {
        return crate::common::backing_of(&name);
    }
    None
}

/// The loop device a node in the test root stands for (same device number).
pub fn loop_of_node(path: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let rdev = fs::metadata(path).ok()?.rdev();
    let (ma, mi) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    if ma != 7 {
        return None;
    }
    Some(format!("/dev/loop{mi}"))
}

/// What every helper test starts from: a private oxenstored, a fake root holding `tools`,
/// and a directory for images.
pub struct Env {
    pub xs: Xenstored,
    pub root: FakeRoot,
    pub imgs: TempDir,
}

impl Env {
    pub fn new(root: FakeRoot, tag: &str) -> Env {
        Env {
            xs: Xenstored::start(),
            root,
            imgs: TempDir::new(tag),
        }
    }

    /// A new guest (with its own `vm`) asking for `params` in `mode`.
    pub fn vbd(&self, params: &str, mode: &str) -> Vbd {
        let fe = crate::common::domid();
        self.xs.set_vm(fe, &format!("vm-{fe}"));
        self.xs.vbd(fe, 51712, params, mode)
    }

    /// Runs `script add` for a new guest asking for `params` (mode w), which must fail
    /// with `want` in `hotplug-error`; returns the error.
    pub fn add_must_fail(&self, script: &str, params: &str, want: &str) -> String {
        let vbd = self.vbd(params, "w");
        let (r, _) = self.root.run(&self.xs, script, &vbd, "add", None);
        assert_eq!(r.status, 1, "{params}");
        let err = self.xs.read(&vbd.node("hotplug-error")).unwrap();
        assert!(err.contains(want), "{params}: {err}");
        err
    }
}
