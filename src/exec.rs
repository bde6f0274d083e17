//! Running the external storage tools (`iscsiadm`, `multipath`, `nbd-client`, `drbdadm`).
//!
//! * An argument vector, never a shell: nothing in `params` is ever parsed by `sh`.
//! * Found on upstream's search path (`xen-hotplug-common.sh`): the system directories
//!   first, then the absolute entries of the inherited `PATH`. A missing tool is an error
//!   that names it and where it was looked for.
//! * `LANG=C`, `LC_ALL=C` (upstream forces `LANG=POSIX`), so output is parsed in one locale.
//! * stdin is `/dev/null`; stdout and stderr go to anonymous temporary files, not pipes: a
//!   tool that leaves a daemon behind (`nbd-client` in ioctl mode) keeps the pipe open and a
//!   reader waiting for end-of-file would hang.
//! * Every run has a deadline (`deadline::Deadline`). On expiry the tool's whole process
//!   group (it gets its own) is killed and the error says what timed out and after how
//!   long.
//! * Secret arguments (CHAP passwords) are shown as `***` in every log line and error.
//!
//! Test-only: `XEN_BLOCK_HOTPLUG_TEST_ROOT=<dir>` makes tools come from `<dir>/bin` only
//! (so tests never depend on whether real tools are installed) and re-roots the system
//! paths the helpers watch (`/dev/disk/by-path`, `/dev/mapper`, `/sys/block`, `/dev/nbdN`)
//! under `<dir>`. It exists for the fakes in `tests/fakes`; never set it on a real dom0.
//! It is ignored unless `<dir>` is an absolute directory owned by the running user and not
//! writable by group or others.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use crate::deadline::{Deadline, timed_out};
use crate::log;

/// Test-only: the directory that stands in for the tool directories and `/dev`, `/sys`.
pub const TEST_ROOT_ENV: &str = "XEN_BLOCK_HOTPLUG_TEST_ROOT";

/// Upstream's order (`PATH=${bindir}:${sbindir}:...:/sbin:/bin:/usr/bin:/usr/sbin:$PATH`).
pub const SYSTEM_DIRS: &[&str] = &[
    "/sbin",
    "/bin",
    "/usr/bin",
    "/usr/sbin",
    "/usr/local/sbin",
    "/usr/local/bin",
];

/// The test root, when the test-only variable names an absolute directory owned by us
/// and writable by nobody else (a stray value cannot hand the tools to another user).
pub fn test_root() -> Option<PathBuf> {
    crate::paths::override_dir(TEST_ROOT_ENV)
}

/// A system path (`/dev/disk/by-path`, `/sys/block`, ...), re-rooted under the test root
/// when one is set.
pub fn sys_path(path: &str) -> PathBuf {
    match test_root() {
        Some(root) => root.join(path.trim_start_matches('/')),
        None => PathBuf::from(path),
    }
}

/// The directories searched for tools, in order.
pub fn search_dirs() -> Vec<PathBuf> {
    if let Some(root) = test_root() {
        return vec![root.join("bin")];
    }
    let mut dirs: Vec<PathBuf> = SYSTEM_DIRS.iter().map(PathBuf::from).collect();
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            // Relative entries would make the tool depend on libxl's working directory.
            if d.is_absolute() && !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    dirs
}

/// The tool's path: the first executable regular file of that name on the search path.
pub fn find(name: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dirs = search_dirs();
    for d in &dirs {
        let p = d.join(name);
        if let Ok(m) = std::fs::metadata(&p)
            && m.is_file()
            && m.permissions().mode() & 0o111 != 0
        {
            return Ok(p);
        }
    }
    let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(anyhow!(
        "{name} not found (looked in {}): install it, or fix PATH",
        list.join(":")
    ))
}

#[derive(Clone, Debug)]
struct Arg {
    value: OsString,
    secret: bool,
}

/// One tool invocation being built.
#[derive(Clone, Debug)]
pub struct Cmd {
    tool: String,
    args: Vec<Arg>,
}

/// What a tool did: its exit code (`None` when killed by a signal) and its output.
#[derive(Clone, Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The last non-empty stderr lines, for an error message.
    pub fn stderr_tail(&self) -> String {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let start = lines.len().saturating_sub(4);
        lines.get(start..).unwrap_or_default().join("; ")
    }
}

impl Cmd {
    pub fn new(tool: &str) -> Cmd {
        Cmd {
            tool: tool.to_string(),
            args: Vec::new(),
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Cmd {
        self.args.push(Arg {
            value: a.as_ref().to_os_string(),
            secret: false,
        });
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    /// An argument never shown in logs or errors.
    pub fn secret(mut self, a: impl AsRef<OsStr>) -> Cmd {
        self.args.push(Arg {
            value: a.as_ref().to_os_string(),
            secret: true,
        });
        self
    }

    /// The command line as logs show it, secrets masked.
    pub fn display(&self) -> String {
        let mut s = self.tool.clone();
        for a in &self.args {
            s.push(' ');
            if a.secret {
                s.push_str("***");
            } else {
                let v = a.value.to_string_lossy();
                if v.is_empty() || v.contains(char::is_whitespace) {
                    s.push_str(&format!("{v:?}"));
                } else {
                    s.push_str(&v);
                }
            }
        }
        s
    }

    /// Runs the tool to completion or until the deadline. A non-zero exit is not an
    /// error here (callers decide what "no sessions" means); see `run_ok`.
    pub fn run(&self, deadline: &Deadline) -> Result<Output> {
        let path = find(&self.tool)?;
        let shown = self.display();
        log::debug(&format!("running {shown}"));
        let out = capture_file().context("cannot create a file for tool output")?;
        let err = capture_file().context("cannot create a file for tool output")?;
        let mut cmd = Command::new(&path);
        cmd.args(self.args.iter().map(|a| &a.value))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(err.try_clone()?)
            .env("LANG", "C")
            .env("LC_ALL", "C")
            .env_remove("LANGUAGE")
            .env("PATH", std::env::join_paths(child_path())?)
            .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", path.display()))?;
        drop(cmd);
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) => {}
                Err(e) => return Err(e).context(format!("cannot wait for {shown}")),
            }
            if deadline.expired() {
                let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                return Err(timed_out(
                    &format!("waiting for `{shown}` (killed it)"),
                    deadline.limit(),
                ));
            }
            std::thread::sleep(Duration::from_millis(2).min(deadline.remaining()));
        };
        let output = Output {
            code: exit_code(status),
            stdout: read_all(out)?,
            stderr: read_all(err)?,
        };
        log::debug(&format!(
            "{shown}: exit {}",
            output
                .code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "by signal".into())
        ));
        Ok(output)
    }

    /// Runs the tool and requires exit status 0; the error names the command (secrets
    /// masked), the status and the tool's last stderr lines.
    pub fn run_ok(&self, deadline: &Deadline) -> Result<Output> {
        let out = self.run(deadline)?;
        if out.success() {
            return Ok(out);
        }
        Err(self.failed(&out))
    }

    /// The error for a run that did not succeed.
    pub fn failed(&self, out: &Output) -> anyhow::Error {
        let status = match out.code {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".to_string(),
        };
        let tail = out.stderr_tail();
        if tail.is_empty() {
            anyhow!("`{}` failed ({status})", self.display())
        } else {
            anyhow!("`{}` failed ({status}): {tail}", self.display())
        }
    }
}

fn exit_code(s: ExitStatus) -> Option<i32> {
    s.code()
}

/// The children's `PATH`: where we looked for tools, then the system directories (tools
/// run other tools: `iscsiadm` starts `iscsid`, the fakes need coreutils).
fn child_path() -> Vec<PathBuf> {
    let mut dirs = search_dirs();
    for d in SYSTEM_DIRS {
        let d = PathBuf::from(d);
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

/// `O_TMPFILE` where the OS has it (Linux). Elsewhere no flag: opening the directory for
/// writing then fails (EISDIR) and the named fallback is used.
#[cfg(target_os = "linux")]
const O_TMPFILE: i32 = nix::libc::O_TMPFILE;
#[cfg(not(target_os = "linux"))]
const O_TMPFILE: i32 = 0;

/// An unnamed temporary file (`O_TMPFILE`), or a named one unlinked at once where the
/// file system or OS lacks `O_TMPFILE`.
fn capture_file() -> io::Result<File> {
    let dir = std::env::temp_dir();
    let dir = if dir.is_absolute() {
        dir
    } else {
        PathBuf::from("/tmp")
    };
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(O_TMPFILE)
        .open(&dir)
    {
        Ok(f) => Ok(f),
        Err(_) => named_capture_file(&dir),
    }
}

fn named_capture_file(dir: &Path) -> io::Result<File> {
    for n in 0..100u32 {
        let p = dir.join(format!(".xen-block-hotplug.{}.{n}", std::process::id()));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
        {
            Ok(f) => {
                let _ = std::fs::remove_file(&p);
                return Ok(f);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free temporary file name"))
}

/// At most this much of a tool's output is kept (a runaway tool cannot exhaust memory).
const MAX_OUTPUT: u64 = 1 << 20;

fn read_all(mut f: File) -> Result<String> {
    f.seek(SeekFrom::Start(0))?;
    let mut buf = Vec::new();
    f.take(MAX_OUTPUT).read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deadline::TimedOut;
    use std::time::Instant;

    #[test]
    fn secrets_are_masked() {
        let c = Cmd::new("iscsiadm")
            .args(["-m", "node", "-v"])
            .secret("hunter2")
            .arg("two words");
        assert_eq!(c.display(), "iscsiadm -m node -v *** \"two words\"");
        let out = Output {
            code: Some(8),
            stdout: String::new(),
            stderr: "a\n\nb\n".into(),
        };
        let e = c.failed(&out).to_string();
        assert!(!e.contains("hunter2"));
        assert!(e.contains("exit status 8") && e.ends_with(": a; b"), "{e}");
    }

    #[test]
    fn runs_with_deadline_and_captures() {
        let d = Deadline::after(Duration::from_secs(10));
        let out = Cmd::new("sh")
            .args(["-c", "echo out; echo err >&2; echo $LANG; exit 3"])
            .run(&d)
            .unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, "out\nC\n");
        assert_eq!(out.stderr, "err\n");
        let t = Instant::now();
        let e = Cmd::new("sh")
            .args(["-c", "sleep 5 & sleep 5"])
            .run(&Deadline::after(Duration::from_millis(200)))
            .unwrap_err();
        assert!(e.downcast_ref::<TimedOut>().is_some(), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3));
        // A daemonised grandchild holding stdout does not make us wait.
        let t = Instant::now();
        let out = Cmd::new("sh")
            .args(["-c", "(sleep 3 &) ; echo done"])
            .run(&d)
            .unwrap();
        assert_eq!(out.stdout, "done\n");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn missing_tool_is_named() {
        let e = find("no-such-tool-xbh").unwrap_err().to_string();
        assert!(
            e.starts_with("no-such-tool-xbh not found (looked in /sbin:"),
            "{e}"
        );
    }
}
