//! Hostile and bad input, as a table: garbage argv and environment, `XENBUS_PATH` outside
//! the backend tree, `params` that is empty, huge, not UTF-8, a directory, a FIFO, a
//! character device, a symbolic link loop, a path under `/proc`; garbage `mode`,
//! `frontend-id`, `state`, `type` in our backend; garbage in *other* backends (which must
//! lead to the safe decision); values at the daemon's size limits; corrupt remove records.
//!
//! Every case runs the real binary against a private real oxenstored and then checks the
//! same invariants: the expected exit status (never a panic's 101), `hotplug-error` and
//! `hotplug-status` when a backend path is known (and nothing written when it is not), no
//! remove record and no loop device left by a failed add, the test's own loop device still
//! bound, and no `panicked` in the log. `RELIABILITY.md` holds the same table
//! (`XBH_HOSTILE_TABLE=<file>` writes it from here).
//!
//! Every case must hold: the defects this table found were fixed, and their rows assert
//! the fixed behaviour (RELIABILITY.md, "Bugs found").

use std::cell::RefCell;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;

use crate::common::*;
use xen_block_hotplug::platform::linux::loopdev;

/// The outcome a case must end in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// Exit 1 and nothing written to xenstore (no valid backend path); the log says why.
    Usage(&'static str),
    /// Exit 1, `hotplug-status=error`, `hotplug-error` containing the text.
    Error(&'static str),
    /// Exit 1, `hotplug-status=busy`, `hotplug-error` containing the text.
    Busy(&'static str),
    /// Exit 1 with no xenstore to report to; the log says why.
    NoStore(&'static str),
    /// Exit 0 and `connected`: the garbage does not concern this request, and granting is
    /// the safe decision (or upstream's documented one).
    Granted,
    /// Exit 0 and nothing written or attached (`physical-device` already there: libxl
    /// called twice).
    Untouched,
    /// A `remove`: exit 0, and the test's loop device is still bound.
    KeptLoop,
    /// A `remove` that refuses: exit 1, `hotplug-error` containing the text, the test's
    /// loop device still bound.
    RemoveError(&'static str),
}

impl Want {
    fn describe(self) -> String {
        match self {
            Want::Usage(s) => format!("exit 1, nothing written, log: `{s}`"),
            Want::Error(s) => format!("exit 1, `error`: `{s}`"),
            Want::Busy(s) => format!("exit 1, `busy`: `{s}`"),
            Want::NoStore(s) => format!("exit 1, log: `{s}`"),
            Want::Granted => "exit 0, `connected` (safe decision)".into(),
            Want::Untouched => "exit 0, nothing written (called twice)".into(),
            Want::KeptLoop => "exit 0, loop not detached".into(),
            Want::RemoveError(s) => format!("exit 1, `error`: `{s}`, loop not detached"),
        }
    }
}

/// How the binary is run for one case (defaults: `block add`, libxl's environment).
#[derive(Default)]
struct Inv {
    action: Option<&'static str>,
    args: Option<Vec<OsString>>,
    env: Vec<(&'static str, OsString)>,
    unset: Vec<&'static str>,
}

fn env(k: &'static str, v: impl AsRef<OsStr>) -> Inv {
    Inv {
        env: vec![(k, v.as_ref().to_owned())],
        ..Inv::default()
    }
}

type Setup = Box<dyn Fn(&Fx, &Vbd) -> Inv>;

struct Case {
    group: &'static str,
    what: String,
    want: Want,
    setup: Setup,
}

/// The shared fixture: a daemon, a scratch directory, a block device (a loop of the test's
/// own), an image file, and what the current case created.
/// Fields drop in order: the loop devices before the directory holding their images.
struct Fx {
    xs: Xenstored,
    dev: Loop,
    extra_loops: RefCell<Vec<Loop>>,
    fifo_writer: RefCell<Option<(std::path::PathBuf, JoinHandle<()>)>>,
    domains: RefCell<Vec<u32>>,
    file: std::path::PathBuf,
    other_img: std::path::PathBuf,
    t: TempDir,
}

impl Fx {
    fn new() -> Fx {
        let xs = Xenstored::start();
        let t = TempDir::new("hostile");
        let dev = Loop::attach(&image(&t, "dev.img", 8), false);
        let file = image(&t, "file.img", 8);
        let other_img = image(&t, "other.img", 8);
        Fx {
            xs,
            t,
            dev,
            file,
            other_img,
            domains: RefCell::new(Vec::new()),
            fifo_writer: RefCell::new(None),
            extra_loops: RefCell::new(Vec::new()),
        }
    }

    fn dom(&self) -> u32 {
        let d = domid();
        self.domains.borrow_mut().push(d);
        d
    }

    /// Our backend: a guest with its own `vm`, the nodes libxl writes, params = the
    /// block device, mode w.
    fn me(&self) -> Vbd {
        let fe = self.dom();
        self.xs.set_vm(fe, &format!("me-{fe}"));
        self.xs.vbd(fe, 51712, &self.dev.path, "w")
    }

    /// Another guest's backend holding the block device the way `block` leaves it.
    fn other(&self) -> Vbd {
        let fe = self.dom();
        self.xs.set_vm(fe, &format!("other-{fe}"));
        let v = self.xs.vbd(fe, 51712, &self.dev.path, "w");
        self.xs.write(&v.node("physical-device"), &self.dev.hex());
        self.xs
            .write(&v.node("physical-device-path"), &self.dev.path);
        self.xs.write(&v.node("hotplug-status"), "connected");
        v
    }

    fn file_str(&self) -> &str {
        self.file.to_str().unwrap()
    }

    /// Writes raw bytes (not UTF-8, NUL) that the harness's `&str` writer cannot.
    fn write_raw(&self, path: &str, value: &[u8]) {
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        p.extend_from_slice(value);
        self.xs
            .request(11, &p)
            .unwrap_or_else(|e| panic!("write {path}: {e}"));
    }

    fn clean_case(&self) {
        for d in self.domains.borrow_mut().drain(..) {
            self.xs.rm(&format!("backend/vbd/{d}"));
            self.xs.rm(&format!("/local/domain/{d}"));
        }
        self.xs.rm("backend/vbd/notanumber");
        if let Some((fifo, h)) = self.fifo_writer.borrow_mut().take() {
            // Release the writer ourselves: a read end held open until it has finished, so
            // a writer that reaches open(2) only now (a loaded machine) finds it too.
            let reader = fs::OpenOptions::new()
                .read(true)
                .custom_flags_nonblock()
                .open(&fifo);
            h.join().unwrap();
            drop(reader);
        }
        self.extra_loops.borrow_mut().clear();
    }
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(nix::libc::O_NONBLOCK)
    }
}

struct Outcome {
    status: i32,
    log: String,
}

/// Runs the binary as `block` for `vbd` with the case's changes to argv and environment.
fn run(fx: &Fx, vbd: &Vbd, inv: &Inv) -> Outcome {
    let dir = fx.xs.dir.join("scripts");
    fs::create_dir_all(&dir).unwrap();
    let link = dir.join("block");
    if !link.exists() {
        symlink(BIN, &link).unwrap();
    }
    let logdir = fx.xs.dir.join("log");
    let before = fs::read_to_string(logdir.join("xen-hotplug.log"))
        .unwrap_or_default()
        .len();
    let mut cmd = Command::new(&link);
    match &inv.args {
        Some(a) => {
            cmd.args(a);
        }
        None => {
            cmd.arg(inv.action.unwrap_or("add"));
        }
    }
    fx.xs
        .hermetic(&mut cmd)
        .env("XENSTORED_PATH", &fx.xs.socket)
        .env("XEN_LOG_DIR", &logdir)
        .env("XENBUS_TYPE", "vbd")
        .env("XENBUS_BASE_PATH", "backend")
        .env("XENBUS_PATH", &vbd.path)
        .env("XEN_BLOCK_HOTPLUG_TIMEOUT", "10")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in &inv.env {
        cmd.env(k, v);
    }
    for k in &inv.unset {
        cmd.env_remove(k);
    }
    let st = cmd.status().unwrap();
    let log = fs::read_to_string(logdir.join("xen-hotplug.log")).unwrap_or_default();
    Outcome {
        status: st.code().unwrap_or(-1),
        log: log.get(before..).unwrap_or_default().to_string(),
    }
}

/// Checks one case; returns the failures (empty when it held).
fn check(fx: &Fx, case: &Case) -> Vec<String> {
    let xs = &fx.xs;
    let vbd = fx.me();
    let inv = (case.setup)(fx, &vbd);
    let backend_count = xs.ls("backend/vbd").len();
    let pd_before = xs.read(&vbd.node("physical-device"));
    let out = run(fx, &vbd, &inv);
    let mut bad = Vec::new();
    let mut fail = |m: String| bad.push(m);
    if out.log.contains("panicked") || out.log.contains("internal error (panic)") {
        fail(format!("panic in the log: {}", out.log));
    }
    let want_status = match case.want {
        Want::Granted | Want::Untouched | Want::KeptLoop => 0,
        _ => 1,
    };
    if out.status != want_status {
        fail(format!(
            "exit {} (want {want_status}); log: {}",
            out.status, out.log
        ));
    }
    let status = xs.read(&vbd.node("hotplug-status"));
    let error = xs.read(&vbd.node("hotplug-error"));
    if std::env::var_os("XBH_HOSTILE_VERBOSE").is_some() {
        let e: String = error
            .clone()
            .unwrap_or_default()
            .chars()
            .take(160)
            .collect();
        eprintln!(
            "case {}: exit {} status {status:?} error {e:?}",
            case.what, out.status
        );
    }
    match case.want {
        Want::Usage(needle) | Want::NoStore(needle) => {
            if !out.log.contains(needle) {
                fail(format!("log lacks {needle:?}: {}", out.log));
            }
            if status.is_some() || error.is_some() {
                fail(format!("wrote hotplug-status {status:?} / error {error:?}"));
            }
            if matches!(case.want, Want::Usage(_)) && xs.ls("backend/vbd").len() != backend_count {
                fail("created a backend directory".into());
            }
        }
        Want::Error(needle) | Want::Busy(needle) | Want::RemoveError(needle) => {
            let want = if matches!(case.want, Want::Busy(_)) {
                "busy"
            } else {
                "error"
            };
            if status.as_deref() != Some(want) {
                fail(format!("hotplug-status {status:?}, want {want}"));
            }
            match &error {
                Some(e) if e.contains(needle) && e.len() <= 2048 => {}
                other => fail(format!("hotplug-error {other:?} lacks {needle:?}")),
            }
            if !matches!(case.want, Want::RemoveError(_))
                && xs.read(&vbd.node("physical-device")) != pd_before
            {
                fail("physical-device written by a failed add".into());
            }
        }
        Want::Granted => {
            if status.as_deref() != Some("connected") {
                fail(format!("hotplug-status {status:?} error {error:?}"));
            }
            let r = run(
                fx,
                &vbd,
                &Inv {
                    action: Some("remove"),
                    ..Inv::default()
                },
            );
            if r.status != 0 {
                fail(format!("remove after grant exited {}", r.status));
            }
        }
        Want::Untouched => {
            if status.is_some() || error.is_some() {
                fail(format!("wrote hotplug-status {status:?} / error {error:?}"));
            }
            if xs.read(&vbd.node("physical-device")) != pd_before {
                fail("physical-device changed".into());
            }
        }
        Want::KeptLoop => {}
    }
    // A case that was granted against expectation (a bug) must not leak what it attached.
    if !matches!(case.want, Want::Granted | Want::Untouched)
        && status.as_deref() == Some("connected")
    {
        let r = run(
            fx,
            &vbd,
            &Inv {
                action: Some("remove"),
                ..Inv::default()
            },
        );
        if r.status != 0 {
            fail(format!(
                "remove after an unexpected grant exited {}",
                r.status
            ));
        }
    }
    if !matches!(
        case.want,
        Want::Granted | Want::KeptLoop | Want::RemoveError(_)
    ) && record_path(&vbd).exists()
    {
        fail("remove record left behind".into());
        let _ = fs::remove_file(record_path(&vbd));
    }
    if backing_of(&fx.dev.path).as_deref() != Some(fx.dev.image.to_str().unwrap()) {
        fail(format!("{} was detached", fx.dev.path));
    }
    for l in fx.extra_loops.borrow().iter() {
        if backing_of(&l.path).as_deref() != Some(l.image.to_str().unwrap()) {
            fail(format!("{} was detached", l.path));
        }
    }
    for img in [&fx.file, &fx.other_img] {
        let mut loops = loops_of(img);
        loops.retain(|l| !fx.extra_loops.borrow().iter().any(|x| &x.path == l));
        if !loops.is_empty() {
            fail(format!("loops left on {}: {loops:?}", img.display()));
            for l in loops {
                let _ = Command::new("losetup").arg("-d").arg(&l).status();
            }
        }
    }
    if let Some((_, h)) = fx.fifo_writer.borrow().as_ref()
        && h.is_finished()
    {
        fail("the FIFO was opened".into());
    }
    let _ = fs::remove_file(record_path(&vbd));
    fx.clean_case();
    bad
}

fn nonutf8(prefix: &[u8]) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.extend_from_slice(b"\xff\xfe");
    v
}

#[allow(clippy::too_many_lines)]
fn cases() -> Vec<Case> {
    let mut c: Vec<Case> = Vec::new();
    let mut add = |group: &'static str, what: &str, want: Want, setup: Setup| {
        c.push(Case {
            group,
            what: what.to_string(),
            want,
            setup,
        })
    };

    // ---------------------------------------------------------------- argv, environment
    let g = "argv/env";
    add(
        g,
        "no argument at all",
        Want::Error("missing command"),
        Box::new(|_, _| Inv {
            args: Some(vec![]),
            ..Inv::default()
        }),
    );
    for a in ["online", "ADD", "--help", "add\n", "", "-"] {
        add(
            g,
            &format!("command {a:?}"),
            Want::Error("invalid command"),
            Box::new(move |_, _| Inv {
                args: Some(vec![a.into()]),
                ..Inv::default()
            }),
        );
    }
    add(
        g,
        "command not UTF-8 (`add\\xff`)",
        Want::Error("not valid UTF-8"),
        // A bug this row found, fixed: cli::run returns before the backend path is parsed: no hotplug-error
        Box::new(|_, _| Inv {
            args: Some(vec![OsStr::from_bytes(b"add\xff").to_owned()]),
            ..Inv::default()
        }),
    );
    add(
        g,
        "XENBUS_PATH unset",
        Want::Usage("XENBUS_PATH is not set"),
        Box::new(|_, _| Inv {
            unset: vec!["XENBUS_PATH"],
            ..Inv::default()
        }),
    );
    let bad_paths: &[(&str, &str)] = &[
        ("", "XENBUS_PATH is not set"),
        ("/", "is not of the form"),
        ("backend", "is not of the form"),
        ("backend/vbd/1/2/../../../../etc", "is not of the form"),
        ("backend/vbd/../vbd/1/2", "is not of the form"),
        ("backend/vbd/1/2//", "is not of the form"),
        ("backend/vbd/1/2\n", "bad device id"),
        ("backend/vbd/+1/2", "bad frontend domain id"),
        ("backend/vbd/4294967296/2", "bad frontend domain id"),
        ("backend/vbd/1/\u{662}", "bad device id"),
        ("backend/vbd/01/2", "bad frontend domain id"),
        ("/local/domain/0/../0/backend/vbd/1/2", "is not of the form"),
        (
            "/local/domain/0/backend/vbd/1/2/params",
            "is not of the form",
        ),
        ("/local/domain//backend/vbd/1/2", "bad domain id"),
        ("frontend/vbd/1/2", "is not of the form"),
        ("/local/domain/1/device/vbd/51712", "is not of the form"),
        ("backend/vif/1/0", "is not of the form"),
        ("/etc/passwd", "is not under /local/domain"),
    ];
    for &(p, needle) in bad_paths {
        add(
            g,
            &format!("XENBUS_PATH={p:?}"),
            Want::Usage(needle),
            Box::new(move |_, _| env("XENBUS_PATH", p)),
        );
    }
    add(
        g,
        "XENBUS_PATH=../x as a KEY=VALUE argument over a valid environment",
        Want::Usage("bad frontend domain id"),
        Box::new(|_, _| Inv {
            args: Some(vec!["XENBUS_PATH=backend/vbd/../x".into(), "add".into()]),
            ..Inv::default()
        }),
    );
    add(
        g,
        "XENBUS_PATH not UTF-8",
        Want::Usage("XENBUS_PATH is not set"),
        Box::new(|_, v| {
            let mut p = v.path.as_bytes().to_vec();
            p.push(0xff);
            env("XENBUS_PATH", OsStr::from_bytes(&p))
        }),
    );
    for (t, needle) in [
        ("../vbd", "invalid XENBUS_TYPE"),
        ("vbd/x", "invalid XENBUS_TYPE"),
        ("vif", "is not of the form"),
    ] {
        add(
            g,
            &format!("XENBUS_TYPE={t:?}"),
            Want::Usage(needle),
            Box::new(move |_, _| env("XENBUS_TYPE", t)),
        );
    }
    for b in ["/backend", "backend/..", "back end"] {
        add(
            g,
            &format!("XENBUS_BASE_PATH={b:?}"),
            Want::Usage("invalid XENBUS_BASE_PATH"),
            Box::new(move |_, _| env("XENBUS_BASE_PATH", b)),
        );
    }
    add(
        g,
        "XENSTORED_PATH names nothing",
        Want::NoStore("cannot connect to xenstore"),
        Box::new(|_, _| env("XENSTORED_PATH", "/nonexistent/xbh/socket")),
    );
    add(
        g,
        "XENSTORED_PATH is a regular file",
        Want::NoStore("cannot connect to xenstore"),
        Box::new(|fx, _| env("XENSTORED_PATH", &fx.file)),
    );
    add(
        g,
        "XENSTORED_PATH is 300 bytes (over sun_path)",
        Want::NoStore("cannot connect to xenstore"),
        Box::new(|_, _| env("XENSTORED_PATH", format!("/{}", "s".repeat(299)))),
    );
    add(
        g,
        "XENSTORED_PATH is a socket nobody accepts on",
        Want::NoStore("xenstore"),
        Box::new(|fx, _| {
            let p = fx.t.join("dead.sock");
            let _ = fs::remove_file(&p);
            drop(UnixListener::bind(&p).unwrap());
            env("XENSTORED_PATH", p)
        }),
    );
    add(
        g,
        "XEN_LOG_DIR is a regular file (log unwritable)",
        Want::Granted,
        Box::new(|fx, _| env("XEN_LOG_DIR", &fx.file)),
    );
    add(
        g,
        "XEN_BLOCK_HOTPLUG_TIMEOUT=garbage (default used)",
        Want::Granted,
        Box::new(|_, _| env("XEN_BLOCK_HOTPLUG_TIMEOUT", "-1e99")),
    );

    // ---------------------------------------------------------------- our params
    let g = "params";
    add(
        g,
        "missing",
        Want::Error("params is missing"),
        Box::new(|fx, v| {
            fx.xs.rm(&v.node("params"));
            Inv::default()
        }),
    );
    add(
        g,
        "empty",
        Want::Error("params is empty"),
        Box::new(|fx, v| {
            fx.xs.write(&v.node("params"), "");
            Inv::default()
        }),
    );
    add(
        g,
        "2048 bytes, the daemon's value limit",
        Want::Error("cannot open params"),
        Box::new(|fx, v| {
            fx.xs
                .write(&v.node("params"), &format!("/{}", "a".repeat(2047)));
            Inv::default()
        }),
    );
    add(
        g,
        "a 300-byte file name",
        Want::Error("cannot open params"),
        Box::new(|fx, v| {
            fx.xs.write(
                &v.node("params"),
                &format!("{}/{}", fx.t.path().display(), "n".repeat(300)),
            );
            Inv::default()
        }),
    );
    add(
        g,
        "not UTF-8",
        Want::Error("not valid UTF-8"),
        Box::new(|fx, v| {
            fx.write_raw(&v.node("params"), &nonutf8(b"/dev/"));
            Inv::default()
        }),
    );
    add(
        g,
        "an embedded NUL",
        Want::Error("NUL"),
        Box::new(|fx, v| {
            fx.write_raw(
                &v.node("params"),
                format!("{}\0/etc/passwd", fx.dev.path).as_bytes(),
            );
            Inv::default()
        }),
    );
    add(
        g,
        "a directory",
        Want::Error("is a directory"),
        Box::new(|fx, v| {
            fx.xs
                .write(&v.node("params"), fx.t.path().to_str().unwrap());
            Inv::default()
        }),
    );
    add(
        g,
        "`..` (relative: /dev/.., the root directory)",
        Want::Error("is a directory"),
        Box::new(|fx, v| {
            fx.xs.write(&v.node("params"), "..");
            Inv::default()
        }),
    );
    add(
        g,
        "a FIFO with a writer waiting (never opened)",
        Want::Error("is a FIFO"),
        Box::new(|fx, v| {
            let fifo = fx.t.join(&format!("fifo{}", unique()));
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            let f2 = fifo.clone();
            let h = std::thread::spawn(move || {
                let _ = fs::OpenOptions::new().write(true).open(&f2);
            });
            // Let the writer block in open(2) before the run.
            std::thread::sleep(std::time::Duration::from_millis(20));
            *fx.fifo_writer.borrow_mut() = Some((fifo.clone(), h));
            fx.xs.write(&v.node("params"), fifo.to_str().unwrap());
            Inv::default()
        }),
    );
    add(
        g,
        "a unix socket",
        Want::Error("is a socket"),
        Box::new(|fx, v| {
            let p = fx.t.join(&format!("sock{}", unique()));
            drop(UnixListener::bind(&p).unwrap());
            fx.xs.write(&v.node("params"), p.to_str().unwrap());
            Inv::default()
        }),
    );
    for dev in ["/dev/null", "/dev/zero", "/dev/loop-control", "null"] {
        add(
            g,
            &format!("character device {dev}"),
            Want::Error("is a character device"),
            Box::new(move |fx, v| {
                fx.xs.write(&v.node("params"), dev);
                Inv::default()
            }),
        );
    }
    add(
        g,
        "a symbolic link loop",
        Want::Error("symbolic link loop"),
        Box::new(|fx, v| {
            let a = fx.t.join(&format!("la{}", unique()));
            let b = fx.t.join(&format!("lb{}", unique()));
            symlink(&b, &a).unwrap();
            symlink(&a, &b).unwrap();
            fx.xs.write(&v.node("params"), a.to_str().unwrap());
            Inv::default()
        }),
    );
    add(
        g,
        "a dangling symbolic link",
        Want::Error("does not exist"),
        Box::new(|fx, v| {
            let a = fx.t.join(&format!("dangle{}", unique()));
            symlink("/nonexistent/xbh", &a).unwrap();
            fx.xs.write(&v.node("params"), a.to_str().unwrap());
            Inv::default()
        }),
    );
    add(
        g,
        "a path through a regular file",
        Want::Error("not a directory"),
        Box::new(|fx, v| {
            fx.xs
                .write(&v.node("params"), &format!("{}/x", fx.file_str()));
            Inv::default()
        }),
    );
    add(
        g,
        "/proc/self/fd/0 (our stdin, /dev/null)",
        Want::Error("is a character device"),
        Box::new(|fx, v| {
            fx.xs.write(&v.node("params"), "/proc/self/fd/0");
            Inv::default()
        }),
    );
    add(
        g,
        "/proc/self/status, mode r (a procfs regular file)",
        Want::Error("is a file on a kernel pseudo file system"),
        Box::new(|fx, v| {
            fx.xs.write(&v.node("params"), "/proc/self/status");
            fx.xs.write(&v.node("mode"), "r");
            Inv::default()
        }),
    );
    add(
        g,
        "/proc/self/status, mode w (a procfs regular file)",
        Want::Error("is a file on a kernel pseudo file system"),
        Box::new(|fx, v| {
            fx.xs.write(&v.node("params"), "/proc/self/status");
            Inv::default()
        }),
    );
    add(
        g,
        "/sys/kernel/notes, mode r (a sysfs regular file)",
        Want::Error("/sys"),
        // A bug this row found, fixed: a sysfs file is a regular file to stat: it is attached to a loop device
        Box::new(|fx, v| {
            fx.xs.write(&v.node("params"), "/sys/kernel/notes");
            fx.xs.write(&v.node("mode"), "r");
            Inv::default()
        }),
    );
    add(
        g,
        "an image whose name holds a newline (cannot be recorded)",
        Want::Error("cannot be stored"),
        Box::new(|fx, v| {
            let p = fx.t.join("new\nline.img");
            fs::hard_link(&fx.file, &p).unwrap();
            fx.xs.write(&v.node("params"), p.to_str().unwrap());
            Inv::default()
        }),
    );
    add(
        g,
        "a file with no write permission, mode w",
        Want::Busy("is read-only"),
        Box::new(|fx, v| {
            use std::os::unix::fs::PermissionsExt;
            let p = fx.t.join(&format!("ro{}.img", unique()));
            fs::write(&p, b"").unwrap();
            fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(1 << 20)
                .unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o444)).unwrap();
            fx.xs.write(&v.node("params"), p.to_str().unwrap());
            Inv::default()
        }),
    );

    // ---------------------------------------------------------------- our other nodes
    let g = "our nodes";
    add(
        g,
        "mode missing",
        Want::Error("mode is missing"),
        Box::new(|fx, v| {
            fx.xs.rm(&v.node("mode"));
            Inv::default()
        }),
    );
    add(
        g,
        "mode empty",
        Want::Error("mode is empty"),
        Box::new(|fx, v| {
            fx.xs.write(&v.node("mode"), "");
            Inv::default()
        }),
    );
    for m in ["x", "W", "rw ", "r\n", "w!!", "read", "wr", "!"] {
        add(
            g,
            &format!("mode {m:?}"),
            Want::Error("invalid mode"),
            Box::new(move |fx, v| {
                fx.xs.write(&v.node("mode"), m);
                Inv::default()
            }),
        );
    }
    add(
        g,
        "mode of 2048 bytes",
        Want::Error("invalid mode"),
        Box::new(|fx, v| {
            fx.xs.write(&v.node("mode"), &"w".repeat(2048));
            Inv::default()
        }),
    );
    add(
        g,
        "mode not UTF-8",
        Want::Error("not valid UTF-8"),
        Box::new(|fx, v| {
            fx.write_raw(&v.node("mode"), &nonutf8(b"w"));
            Inv::default()
        }),
    );
    add(
        g,
        "frontend-id missing",
        Want::Error("frontend-id is missing"),
        Box::new(|fx, v| {
            fx.xs.rm(&v.node("frontend-id"));
            Inv::default()
        }),
    );
    for f in ["abc", "-1", "4294967296", " 5", "0x5", "1/../0"] {
        add(
            g,
            &format!("frontend-id {f:?}"),
            Want::Error("not a domain id"),
            Box::new(move |fx, v| {
                fx.xs.write(&v.node("frontend-id"), f);
                Inv::default()
            }),
        );
    }
    add(
        g,
        "frontend-id names the guest that holds the device (not the path's frontend)",
        Want::Error("frontend-id"),
        // A bug this row found, fixed: frontend-id is trusted over XENBUS_PATH: same_vm then passes and the device is granted twice
        Box::new(|fx, v| {
            let o = fx.other();
            fx.xs.write(&v.node("frontend-id"), &o.fe.to_string());
            Inv::default()
        }),
    );
    for s in ["", "5", "02", "2 ", "InitWait"] {
        add(
            g,
            &format!("state {s:?} (file)"),
            Want::Error("Path closed or removed during hotplug add"),
            Box::new(move |fx, v| {
                fx.xs.write(&v.node("params"), fx.file_str());
                fx.xs.write(&v.node("state"), s);
                Inv::default()
            }),
        );
    }
    add(
        g,
        "state missing (file)",
        Want::Error("state: unknown"),
        Box::new(|fx, v| {
            fx.xs.write(&v.node("params"), fx.file_str());
            fx.xs.rm(&v.node("state"));
            Inv::default()
        }),
    );
    add(
        g,
        "type ../../bin/sh with params that is no device",
        Want::Error("not a block device or a regular file"),
        Box::new(|fx, v| {
            fx.xs.write(&v.node("type"), "../../bin/sh");
            fx.xs.write(&v.node("params"), "/nonexistent/xbh");
            Inv::default()
        }),
    );
    add(
        g,
        "type of 2048 bytes",
        Want::Error("not a block device or a regular file"),
        Box::new(|fx, v| {
            fx.xs.write(&v.node("type"), &"t".repeat(2048));
            fx.xs.write(&v.node("params"), "/nonexistent/xbh");
            Inv::default()
        }),
    );
    add(
        g,
        "type not UTF-8",
        Want::Error("not valid UTF-8"),
        Box::new(|fx, v| {
            fx.write_raw(&v.node("type"), &nonutf8(b"phy"));
            Inv::default()
        }),
    );
    add(
        g,
        "physical-device already there, garbage (libxl called twice)",
        Want::Untouched,
        Box::new(|fx, v| {
            fx.xs.write(&v.node("physical-device"), "garbage");
            Inv::default()
        }),
    );

    // ---------------------------------------------------------------- other backends
    let g = "other backends";
    add(
        g,
        "physical-device 0x-prefixed and zero-padded (blkback reads it)",
        Want::Busy("guest domain"),
        Box::new(|fx, _| {
            let o = fx.other();
            fx.xs.rm(&o.node("physical-device-path"));
            let (ma, mi) = fx
                .dev
                .hex()
                .split_once(':')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .unwrap();
            fx.xs.write(
                &o.node("physical-device"),
                &format!("0x{ma:0>4}:0X{}", mi.to_uppercase()),
            );
            Inv::default()
        }),
    );
    add(
        g,
        "physical-device with trailing garbage (blkback's %x:%x reads it)",
        Want::Busy("guest domain"),
        // A bug this row found, fixed: DevNum::parse_linux_hex rejects what blkback's sscanf accepts: the holder is missed
        Box::new(|fx, _| {
            let o = fx.other();
            fx.xs.rm(&o.node("physical-device-path"));
            fx.xs.write(
                &o.node("physical-device"),
                &format!("{}\ngarbage", fx.dev.hex()),
            );
            Inv::default()
        }),
    );
    add(
        g,
        "physical-device with leading blanks (blkback's %x skips them)",
        Want::Busy("guest domain"),
        // A bug this row found, fixed: DevNum::parse_linux_hex rejects what blkback's sscanf accepts: the holder is missed
        Box::new(|fx, _| {
            let o = fx.other();
            fx.xs.rm(&o.node("physical-device-path"));
            fx.xs
                .write(&o.node("physical-device"), &format!(" {}", fx.dev.hex()));
            Inv::default()
        }),
    );
    for (what, spell) in [
        (
            "a minor of 20+ bits that blkback's MKDEV folds into the major",
            0u8,
        ),
        (
            "a major of 12+ bits that blkback's 32-bit dev_t truncates",
            1,
        ),
        ("a major over 32 bits that blkback's %x truncates", 2),
    ] {
        add(
            g,
            &format!("physical-device with {what}"),
            Want::Busy("guest domain"),
            // A bug this row found, fixed: DevNum::parse_linux_hex is not blkback's %x:%x + MKDEV: the holder is missed
            Box::new(move |fx, _| {
                let o = fx.other();
                fx.xs.rm(&o.node("physical-device-path"));
                let (ma, mi) = fx
                    .dev
                    .hex()
                    .split_once(':')
                    .map(|(a, b)| {
                        (
                            u64::from_str_radix(a, 16).unwrap(),
                            u64::from_str_radix(b, 16).unwrap(),
                        )
                    })
                    .unwrap();
                let v = match spell {
                    0 => format!("0:{:x}", (ma << 20) | mi),
                    1 => format!("{:x}:{mi:x}", ma | 0x1000),
                    _ => format!("{:x}:{mi:x}", ma | 0x1_0000_0000),
                };
                fx.xs.write(&o.node("physical-device"), &v);
                Inv::default()
            }),
        );
    }
    add(
        g,
        "physical-device garbage, physical-device-path names the device",
        Want::Busy("guest domain"),
        Box::new(|fx, _| {
            let o = fx.other();
            fx.xs.write(&o.node("physical-device"), "zz:zz");
            Inv::default()
        }),
    );
    add(
        g,
        "physical-device-path garbage, physical-device names the device",
        Want::Busy("guest domain"),
        Box::new(|fx, _| {
            let o = fx.other();
            fx.xs.write(&o.node("physical-device-path"), "not/a/path");
            Inv::default()
        }),
    );
    add(
        g,
        "physical-device-path a symlink loop, physical-device names the device",
        Want::Busy("guest domain"),
        Box::new(|fx, _| {
            let o = fx.other();
            let a = fx.t.join(&format!("ola{}", unique()));
            let b = fx.t.join(&format!("olb{}", unique()));
            symlink(&b, &a).unwrap();
            symlink(&a, &b).unwrap();
            fx.xs
                .write(&o.node("physical-device-path"), a.to_str().unwrap());
            Inv::default()
        }),
    );
    add(
        g,
        "physical-device-path a FIFO with a writer waiting (never opened)",
        Want::Busy("guest domain"),
        Box::new(|fx, _| {
            let o = fx.other();
            let fifo = fx.t.join(&format!("ofifo{}", unique()));
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            let f2 = fifo.clone();
            let h = std::thread::spawn(move || {
                let _ = fs::OpenOptions::new().write(true).open(&f2);
            });
            // Let the writer block in open(2) before the run.
            std::thread::sleep(std::time::Duration::from_millis(20));
            *fx.fifo_writer.borrow_mut() = Some((fifo.clone(), h));
            fx.xs
                .write(&o.node("physical-device-path"), fifo.to_str().unwrap());
            Inv::default()
        }),
    );
    add(
        g,
        "physical-device-path of 2048 bytes, physical-device names the device",
        Want::Busy("guest domain"),
        Box::new(|fx, _| {
            let o = fx.other();
            fx.xs.write(
                &o.node("physical-device-path"),
                &format!("/{}", "p".repeat(2047)),
            );
            Inv::default()
        }),
    );
    add(
        g,
        "physical-device-path relative, physical-device garbage (no device: blkback opens nothing)",
        Want::Granted,
        Box::new(|fx, _| {
            let o = fx.other();
            fx.xs.write(&o.node("physical-device-path"), fx.dev.name());
            fx.xs.write(&o.node("physical-device"), "garbage");
            Inv::default()
        }),
    );
    add(
        g,
        "physical-device over 64 bits, no path (no such device)",
        Want::Granted,
        Box::new(|fx, _| {
            let o = fx.other();
            fx.xs.rm(&o.node("physical-device-path"));
            fx.xs
                .write(&o.node("physical-device"), "1ffffffffffffffff:0");
            Inv::default()
        }),
    );
    add(
        g,
        "physical-device of 2048 bytes, no path",
        Want::Granted,
        Box::new(|fx, _| {
            let o = fx.other();
            fx.xs.rm(&o.node("physical-device-path"));
            fx.xs.write(&o.node("physical-device"), &"7".repeat(2048));
            Inv::default()
        }),
    );
    add(
        g,
        "physical-device not UTF-8 (refused: cannot be read)",
        Want::Error("not valid UTF-8"),
        Box::new(|fx, _| {
            let o = fx.other();
            fx.xs.rm(&o.node("physical-device-path"));
            fx.write_raw(&o.node("physical-device"), &nonutf8(b"7:"));
            Inv::default()
        }),
    );
    for m in ["", "garbage", "W"] {
        add(
            g,
            &format!("mode {m:?}, we ask r (unknown counts as writable)"),
            Want::Busy("read-write in a guest domain"),
            Box::new(move |fx, v| {
                fx.xs.write(&v.node("mode"), "r");
                let o = fx.other();
                fx.xs.write(&o.node("mode"), m);
                Inv::default()
            }),
        );
    }
    add(
        g,
        "mode \"rw!x\", we ask r (has w and !: upstream's force, the administrator's word)",
        Want::Granted,
        Box::new(|fx, v| {
            fx.xs.write(&v.node("mode"), "r");
            let o = fx.other();
            fx.xs.write(&o.node("mode"), "rw!x");
            Inv::default()
        }),
    );
    add(
        g,
        "mode missing, we ask r",
        Want::Busy("read-write in a guest domain"),
        Box::new(|fx, v| {
            fx.xs.write(&v.node("mode"), "r");
            let o = fx.other();
            fx.xs.rm(&o.node("mode"));
            Inv::default()
        }),
    );
    add(
        g,
        "mode not UTF-8, we ask r (refused)",
        Want::Error("not valid UTF-8"),
        Box::new(|fx, v| {
            fx.xs.write(&v.node("mode"), "r");
            let o = fx.other();
            fx.write_raw(&o.node("mode"), &nonutf8(b"r"));
            Inv::default()
        }),
    );
    add(
        g,
        "frontend-id garbage (not read)",
        Want::Busy("guest domain"),
        Box::new(|fx, _| {
            let o = fx.other();
            fx.xs.write(&o.node("frontend-id"), "../../0");
            Inv::default()
        }),
    );
    add(
        g,
        "state garbage (not read)",
        Want::Busy("guest domain"),
        Box::new(|fx, _| {
            let o = fx.other();
            fx.xs.write(&o.node("state"), "\u{1b}[2J");
            Inv::default()
        }),
    );
    add(
        g,
        "its domain's vm not UTF-8 (refused)",
        Want::Error("not valid UTF-8"),
        Box::new(|fx, _| {
            let o = fx.other();
            fx.write_raw(&format!("/local/domain/{}/vm", o.fe), &nonutf8(b"/vm/"));
            Inv::default()
        }),
    );
    add(
        g,
        "its domain's target is `../..` (refused: the daemon rejects the path)",
        Want::Error("EINVAL"),
        Box::new(|fx, _| {
            let o = fx.other();
            fx.xs
                .write(&format!("/local/domain/{}/target", o.fe), "../..");
            Inv::default()
        }),
    );
    add(
        g,
        "its domain's target is 2048 bytes (refused: the path is over the daemon's limit)",
        Want::Error("cannot read xenstore node"),
        Box::new(|fx, _| {
            let o = fx.other();
            fx.xs
                .write(&format!("/local/domain/{}/target", o.fe), &"9".repeat(2048));
            Inv::default()
        }),
    );
    add(
        g,
        "its domain exists without a vm (unknown: another VM; upstream said the same VM)",
        Want::Busy("is unknown"),
        Box::new(|fx, _| {
            let o = fx.other();
            fx.xs.rm(&format!("/local/domain/{}/vm", o.fe));
            Inv::default()
        }),
    );
    add(
        g,
        "its domain is gone entirely (dead: its leftover backend holds nothing)",
        Want::Granted,
        Box::new(|fx, _| {
            let o = fx.other();
            fx.xs.rm(&format!("/local/domain/{}", o.fe));
            Inv::default()
        }),
    );
    add(
        g,
        "a non-numeric domain directory holding the device (no such domain: dead, no holder)",
        Want::Granted,
        Box::new(|fx, _| {
            fx.xs
                .write("backend/vbd/notanumber/xyz/physical-device", &fx.dev.hex());
            Inv::default()
        }),
    );
    add(
        g,
        "a holder among 50 garbage backends",
        Want::Busy("guest domain"),
        Box::new(|fx, _| {
            for i in 0..50 {
                let d = fx.dom();
                let p = format!("backend/vbd/{d}/{i}");
                fx.xs
                    .write(&format!("{p}/physical-device"), &format!("{i}:{i}:{i}"));
                fx.xs.write(&format!("{p}/physical-device-path"), "\u{0}");
                fx.xs.write(&format!("{p}/mode"), "?");
            }
            fx.other();
            Inv::default()
        }),
    );

    // ---------------------------------------------------------------- remove
    let g = "remove";
    add(
        g,
        "corrupt remove record",
        Want::RemoveError("corrupt remove record"),
        Box::new(|fx, v| {
            fs::write(record_path(v), format!("garbage\nnode={}\n", fx.dev.path)).unwrap();
            Inv {
                action: Some("remove"),
                ..Inv::default()
            }
        }),
    );
    add(
        g,
        "record naming a loop bound to another file",
        Want::KeptLoop,
        Box::new(|fx, v| {
            let l = Loop::attach(&fx.other_img, false);
            let rec = format!(
                "backing=fe:1:12345\nkind=loop\nnode={}\nrdev={}\n",
                l.path,
                l.hex()
            );
            fx.extra_loops.borrow_mut().push(l);
            fs::write(record_path(v), rec).unwrap();
            Inv {
                action: Some("remove"),
                ..Inv::default()
            }
        }),
    );
    add(
        g,
        "record naming the right loop with another device number",
        Want::KeptLoop,
        Box::new(|fx, v| {
            use std::os::unix::fs::MetadataExt;
            let m = fs::metadata(&fx.dev.image).unwrap();
            let rec = format!(
                "backing={:x}:{:x}:{}\nkind=loop\nnode={}\nrdev=7:fffff\n",
                nix::sys::stat::major(m.dev()),
                nix::sys::stat::minor(m.dev()),
                m.ino(),
                fx.dev.path
            );
            fs::write(record_path(v), rec).unwrap();
            Inv {
                action: Some("remove"),
                ..Inv::default()
            }
        }),
    );
    add(
        g,
        "record naming /dev/null",
        Want::KeptLoop,
        Box::new(|_, v| {
            fs::write(
                record_path(v),
                "backing=fe:1:1\nkind=loop\nnode=/dev/null\nrdev=1:3\n",
            )
            .unwrap();
            Inv {
                action: Some("remove"),
                ..Inv::default()
            }
        }),
    );
    add(
        g,
        "no record; node names a loop of another file (shell-script layout)",
        Want::KeptLoop,
        Box::new(|fx, v| {
            let l = Loop::attach(&fx.other_img, false);
            fx.xs.write(&v.node("params"), fx.file_str());
            fx.xs.write(&v.node("node"), &l.path);
            fx.xs.write(&v.node("physical-device"), &l.hex());
            fx.extra_loops.borrow_mut().push(l);
            Inv {
                action: Some("remove"),
                ..Inv::default()
            }
        }),
    );
    add(
        g,
        "no record; node names the test's block device, params a file",
        Want::KeptLoop,
        Box::new(|fx, v| {
            fx.xs.write(&v.node("params"), fx.file_str());
            fx.xs.write(&v.node("node"), &fx.dev.path);
            Inv {
                action: Some("remove"),
                ..Inv::default()
            }
        }),
    );
    add(
        g,
        "no record; params NUL bytes (refused, nothing detached)",
        Want::RemoveError("NUL"),
        Box::new(|fx, v| {
            fx.write_raw(&v.node("params"), b"\0\0\0");
            Inv {
                action: Some("remove"),
                ..Inv::default()
            }
        }),
    );
    c
}

fn table_markdown(cases: &[Case]) -> String {
    let mut s = String::from("| # | group | bad input | expected outcome |\n|---|---|---|---|\n");
    for (i, c) in cases.iter().enumerate() {
        let what = c.what.replace('|', "\\|").replace('\n', "\\n");
        let want = c.want.describe().replace('|', "\\|");
        s.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            i + 1,
            c.group,
            what,
            want
        ));
    }
    s
}

#[test]
fn hostile_input_table() {
    let fx = Fx::new();
    let cases = cases();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    if let Ok(p) = std::env::var("XBH_HOSTILE_TABLE") {
        fs::write(p, table_markdown(&cases)).unwrap();
    }
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        for f in check(&fx, case) {
            failures.push(format!("#{} {} / {}: {f}", i + 1, case.group, case.what));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!("hostile: {} cases held", cases.len());
}

/// `params` is a path that flips between an image file and a symbolic link to another
/// image that a guest already holds read-write, while adds run: whatever is attached must
/// be what was checked. An add that checked the free image but attached the held one would
/// hand the held image to a second guest.
#[test]
fn params_swapped_for_a_symlink_between_checks() {
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    let xs = Xenstored::start();
    let t = TempDir::new("swap");
    let free = image(&t, "free.img", 4);
    let held = image(&t, "held.img", 4);
    let _c1 = Cleanup(free.clone());
    let _c2 = Cleanup(held.clone());
    // A guest holds `held` read-write, attached by the binary itself.
    let h = domid();
    xs.set_vm(h, &format!("holder-{h}"));
    let hv = xs.vbd(h, 51712, held.to_str().unwrap(), "w");
    assert_eq!(xs.run("block", &hv, "add").status, 0);
    let held_ino = fs::metadata(&held).unwrap().ino();
    let free_ino = fs::metadata(&free).unwrap().ino();
    let p = t.join("params");
    // `params` exists before the first add: from then on every rename replaces it
    // atomically, so it always names one of the two images.
    fs::hard_link(&free, &p).unwrap();
    let stop = AtomicBool::new(false);
    let (mut granted_free, mut busy, mut other) = (0, 0, Vec::new());
    std::thread::scope(|s| {
        s.spawn(|| {
            let (tmp1, tmp2) = (t.join("p.lnk"), t.join("p.file"));
            while !stop.load(Ordering::Relaxed) {
                let _ = fs::remove_file(&tmp1);
                symlink(&held, &tmp1).unwrap();
                fs::rename(&tmp1, &p).unwrap();
                let _ = fs::remove_file(&tmp2);
                fs::hard_link(&free, &tmp2).unwrap();
                fs::rename(&tmp2, &p).unwrap();
            }
        });
        // A failed assertion must still stop the flipper, or the scope never ends.
        let body = std::panic::AssertUnwindSafe(|| {
            let rounds: u32 = std::env::var("XBH_SWAP_ROUNDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(60);
            // At least `rounds`, and on until both outcomes were seen (about one add in
            // ten finds the link), so the race is shown exercised both ways.
            for n in 0.. {
                if n >= rounds && granted_free > 0 && busy > 0 || n >= rounds * 20 {
                    break;
                }
                let fe = domid();
                xs.set_vm(fe, &format!("me-{fe}"));
                let v = xs.vbd(fe, 51712, p.to_str().unwrap(), "w");
                let r = xs.run("block", &v, "add");
                match xs.read(&v.node("hotplug-status")).as_deref() {
                    Some("connected") => {
                        assert_eq!(r.status, 0);
                        let node = xs.read(&v.node("node")).unwrap();
                        let lf = fs::File::open(&node).unwrap();
                        let ino = loopdev::backing_of(&lf).unwrap().map(|b| b.1).unwrap_or(0);
                        assert_ne!(ino, held_ino, "the held image was granted a second time");
                        assert_eq!(ino, free_ino, "{node} backed by an unexpected inode");
                        granted_free += 1;
                        assert_eq!(xs.run("block", &v, "remove").status, 0);
                    }
                    Some("busy") => {
                        assert_eq!(r.status, 1);
                        busy += 1;
                    }
                    st => other.push(format!(
                        "exit {}, hotplug-status {st:?}, hotplug-error {:?}",
                        r.status,
                        xs.read(&v.node("hotplug-error"))
                    )),
                }
                assert!(!record_path(&v).exists() || xs.read(&v.node("node")).is_some());
                xs.rm(&v.path);
            }
        });
        let result = std::panic::catch_unwind(body);
        stop.store(true, Ordering::Relaxed);
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    });
    assert_eq!(loops_of(&free).len(), 0, "no loop left on the free image");
    assert_eq!(
        loops_of(&held).len(),
        1,
        "only the holder's loop on the held image"
    );
    eprintln!(
        "swap: granted the free image {granted_free}, busy {busy}, other {}",
        other.len()
    );
    // Every rename is atomic: `params` always names one of the two images, so each add
    // either gets the free one or is refused as busy; anything else is a defect.
    assert!(other.is_empty(), "{other:#?}");
    assert!(granted_free > 0, "no add found the free image");
    assert!(busy > 0, "no add found the held image");
    assert_eq!(xs.run("block", &hv, "remove").status, 0);
}
