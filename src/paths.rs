//! Where the `block` lock, the remove records and syslog live, and the test-only override
//! that moves them.
//!
//! On a dom0 these are fixed: the lock directory is Xen's `locking.sh` `LOCK_BASEDIR`
//! (`/var/run/xen-hotplug`, interface doc §6), the remove records sit in our own directory
//! under it, and syslog is `/dev/log` (Linux) or `/var/run/log` (NetBSD, FreeBSD).
//!
//! Test-only: the integration tests run many adds at once on a shared host, so each test
//! points these at directories of its own with `XEN_BLOCK_HOTPLUG_LOCK_DIR`,
//! `XEN_BLOCK_HOTPLUG_RECORD_DIR` and `XEN_BLOCK_HOTPLUG_SYSLOG` and never touches the
//! host's `/var/run/xen-hotplug`. Never set them on a real dom0. A value is honoured only
//! under the rule `XEN_BLOCK_HOTPLUG_TEST_ROOT` (`tool.rs`) uses: an absolute path to an
//! existing directory owned by the running user (root, on a dom0) and writable by neither
//! group nor others; for the syslog socket that rule applies to its directory. Anything
//! else is ignored and the fixed path is used, so a stray value can neither hand the lock
//! or the records to another user nor break a real attach.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The lock directory of Xen's `locking.sh` (`LOCK_BASEDIR`), shared with the shell scripts.
pub const LOCK_DIR: &str = "/var/run/xen-hotplug";
/// The remove records (`state.rs`). Under `/var/run` (on Linux a link to `/run`), which
/// every Xen dom0 OS has and clears at boot, like the records themselves should be.
pub const RECORD_DIR: &str = "/var/run/xen-hotplug/xen-block-hotplug";
/// Where syslogd listens: Linux `/dev/log`; NetBSD and FreeBSD `/var/run/log`.
pub const SYSLOG_SOCKETS: [&str; 2] = ["/dev/log", "/var/run/log"];

/// Test-only: the directory that stands in for [`LOCK_DIR`].
pub const LOCK_DIR_ENV: &str = "XEN_BLOCK_HOTPLUG_LOCK_DIR";
/// Test-only: the directory that stands in for [`RECORD_DIR`].
pub const RECORD_DIR_ENV: &str = "XEN_BLOCK_HOTPLUG_RECORD_DIR";
/// Test-only: the datagram socket that stands in for [`SYSLOG_SOCKETS`]. When it does not
/// exist, syslog counts as down (lines go to the hotplug log), whatever the host has.
pub const SYSLOG_ENV: &str = "XEN_BLOCK_HOTPLUG_SYSLOG";

/// Whether `dir` may stand in for a system directory: absolute, an existing directory,
/// owned by the effective user, writable by neither group nor others (symlinks followed).
pub fn trusted_dir(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return false;
    };
    dir.is_absolute()
        && meta.is_dir()
        && meta.uid() == nix::unistd::geteuid().as_raw()
        && meta.mode() & 0o022 == 0
}

/// The value of the test-only variable `var` when it names a [`trusted_dir`].
pub fn override_dir(var: &str) -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os(var)?);
    trusted_dir(&p).then_some(p)
}

/// Where the lock files live: [`LOCK_DIR`] unless `XEN_BLOCK_HOTPLUG_LOCK_DIR` overrides it.
pub fn lock_dir() -> PathBuf {
    override_dir(LOCK_DIR_ENV).unwrap_or_else(|| PathBuf::from(LOCK_DIR))
}

/// Where the remove records live: [`RECORD_DIR`] unless `XEN_BLOCK_HOTPLUG_RECORD_DIR`
/// overrides it.
pub fn record_dir() -> PathBuf {
    override_dir(RECORD_DIR_ENV).unwrap_or_else(|| PathBuf::from(RECORD_DIR))
}

/// The syslog sockets to try, in order: [`SYSLOG_SOCKETS`], or only the socket
/// `XEN_BLOCK_HOTPLUG_SYSLOG` names when its directory is a [`trusted_dir`].
pub fn syslog_sockets() -> Vec<PathBuf> {
    if let Some(v) = std::env::var_os(SYSLOG_ENV) {
        let p = PathBuf::from(v);
        if p.file_name().is_some_and(|n| n != OsStr::new(".."))
            && p.parent().is_some_and(trusted_dir)
        {
            return vec![p];
        }
    }
    SYSLOG_SOCKETS.iter().map(PathBuf::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_private_absolute_directories_are_trusted() {
        let d = std::env::temp_dir().join(format!("xbh-paths-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(trusted_dir(&d));
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(!trusted_dir(&d), "group-writable");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o757)).unwrap();
        assert!(!trusted_dir(&d), "world-writable");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(trusted_dir(&d));
        std::fs::write(d.join("f"), b"").unwrap();
        assert!(!trusted_dir(&d.join("f")), "a file");
        assert!(!trusted_dir(&d.join("missing")), "missing");
        assert!(!trusted_dir(Path::new("relative")), "relative");
        // /tmp itself is sticky and world-writable.
        assert!(!trusted_dir(Path::new("/tmp")));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
