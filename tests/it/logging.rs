//! syslog as the scripts' `logger -p daemon.<level>` calls: facility daemon, levels err
//! and debug, text prefixed with the invoked path. The binary runs in a private mount
//! namespace whose /dev/log is this test's socket.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use xen_block_hotplug::paths;

#[test]
fn syslog_facility_levels_and_prefix() {
    let xs = Xenstored::start();
    let t = TempDir::new("syslog");
    let sock_path = t.join("log.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let fe = domid();
    let v = xs.vbd(fe, 51712, "/nonexistent-xbh", "w");
    let scripts = t.join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    std::os::unix::fs::symlink(BIN, scripts.join("block")).unwrap();
    let invoked = scripts.join("block");
    let st = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(
            "mount -t tmpfs none /dev && touch /dev/log && mount --bind \"$SOCK\" /dev/log \
             && exec \"$SCRIPT\" add",
        )
        .env(paths::LOCK_DIR_ENV, &xs.locks)
        .env(paths::RECORD_DIR_ENV, &xs.records)
        .env("SOCK", &sock_path)
        .env("SCRIPT", &invoked)
        .env("XENBUS_PATH", &v.path)
        .env("XENSTORED_PATH", &xs.socket)
        .env("XEN_LOG_DIR", t.join("log"))
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(1));
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        if got.last().unwrap().contains("hotplug-status") {
            break;
        }
    }
    let prefix = format!("root: {}: ", invoked.display());
    // daemon.debug = 3*8+7 = 31, daemon.err = 3*8+3 = 27.
    assert!(
        got.contains(&format!("<31>{prefix}add XENBUS_PATH={}", v.path)),
        "{got:#?}"
    );
    assert!(
        got.iter().any(|m| m.starts_with(&format!(
            "<27>{prefix}params \"/nonexistent-xbh\" is a path that does not exist"
        ))),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|m| m.starts_with(&format!("<31>{prefix}Writing {}/hotplug-error ", v.path))),
        "{got:#?}"
    );
    assert!(
        got.contains(&format!(
            "<31>{prefix}Writing {}/hotplug-status error to xenstore.",
            v.path
        )),
        "{got:#?}"
    );
    // Errors also reach the hotplug log file (stderr), debug lines do not when syslog works.
    let file = std::fs::read_to_string(t.join("log/xen-hotplug.log")).unwrap();
    assert!(file.contains("is a path that does not exist"), "{file}");
    assert!(!file.contains("Writing"), "{file}");
}
