//! Logging as the shell scripts do it (interface doc §7).
//!
//! * syslog facility `daemon`, levels `err` and `debug`, message text prefixed with the
//!   invoked path (`/etc/xen/scripts/block: ...`), tag `root` as util-linux `logger` would
//!   use for root. Sent straight to `/dev/log`, so no `logger` process is forked.
//! * stderr (ours and any child's) appended to `$XEN_LOG_DIR/xen-hotplug.log`
//!   (`/var/log/xen` unless the environment says otherwise), the directory created if
//!   missing. When that fails the run goes on: logging never decides an outcome.

use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;

const LOG_DAEMON: u8 = 3 << 3;
const LOG_ERR: u8 = 3;
const LOG_DEBUG: u8 = 7;

static PREFIX: OnceLock<String> = OnceLock::new();

/// Sets the message prefix (the invoked path). Later calls are ignored.
pub fn init(invoked: &str) {
    let _ = PREFIX.set(invoked.to_string());
}

fn prefix() -> &'static str {
    PREFIX
        .get()
        .map(String::as_str)
        .unwrap_or("xen-block-hotplug")
}

pub fn log_dir() -> String {
    std::env::var("XEN_LOG_DIR")
        .ok()
        .filter(|d| d.starts_with('/'))
        .unwrap_or_else(|| "/var/log/xen".to_string())
}

/// Points fd 2 at the hotplug log file, as `exec 2>>$XEN_LOG_DIR/xen-hotplug.log` does.
pub fn redirect_stderr() {
    let dir = log_dir();
    let _ = fs::create_dir_all(&dir);
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(format!("{dir}/xen-hotplug.log"));
    if let Ok(f) = file {
        // SAFETY: dup2 onto fd 2 only replaces our stderr; `f` stays valid for the call.
        unsafe {
            nix::libc::dup2(f.as_raw_fd(), 2);
        }
    }
}

/// Connected once per run to the socket that listens; `None` inside when none does, so
/// later lines go to stderr without trying again.
static SYSLOG: OnceLock<Option<UnixDatagram>> = OnceLock::new();

fn syslog(level: u8, msg: &str) -> bool {
    let line = format!("<{}>root: {}: {}", LOG_DAEMON | level, prefix(), msg);
    let sock = SYSLOG.get_or_init(|| {
        // Where syslogd listens (`paths::syslog_sockets`: /dev/log, /var/run/log).
        crate::paths::syslog_sockets().iter().find_map(|p| {
            let s = UnixDatagram::unbound().ok()?;
            s.connect(p).ok()?;
            Some(s)
        })
    });
    match sock {
        Some(s) => s.send(line.as_bytes()).is_ok(),
        None => false,
    }
}

/// One line to stderr in one `write`, so concurrent scripts' lines do not interleave.
fn to_stderr(msg: &str) {
    use std::io::Write;
    let line = format!("{}: {}\n", prefix(), msg);
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// An error: to syslog and to the hotplug log (stderr).
pub fn err(msg: &str) {
    syslog(LOG_ERR, msg);
    to_stderr(msg);
}

/// A debug line: syslog only, like the scripts' `log debug`; stderr when syslog is down.
pub fn debug(msg: &str) {
    if !syslog(LOG_DEBUG, msg) {
        to_stderr(msg);
    }
}
