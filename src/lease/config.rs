//! `/etc/xen/xen-block-hotplug.conf`: whether and how disks take cluster leases (issue 15).
//!
//! `KEY=VALUE` lines, `#` starts a comment, blank lines are ignored. A missing file means
//! `LEASES=none`: today's behaviour, and libsanlock is never loaded. `XEN_BLOCK_HOTPLUG_CONF`
//! names another file, honoured only when it is root-owned and not writable by group or
//! others (the scripts run as root: a file anyone can write would let anyone turn leases
//! off). Every mistake is an error naming the file and line, never a silent default.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

/// The default configuration file.
pub const DEFAULT_PATH: &str = "/etc/xen/xen-block-hotplug.conf";
/// The environment variable naming another configuration file.
pub const ENV_VAR: &str = "XEN_BLOCK_HOTPLUG_CONF";

/// sanlock's host id range (sanlock.8: "host_id 1-2000"; 2000 with 1 MiB alignment and
/// 512-byte sectors, which is what `lease init` writes).
pub const MAX_HOST_ID: u64 = 2000;
/// `SANLK_NAME_LEN` (sanlock.h) is 48 bytes; a name may use all of them.
pub const MAX_NAME_LEN: usize = 48;

/// The lease manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leases {
    /// No leases: the sharing check covers this host only.
    None,
    /// sanlock disk-paxos leases in a shared directory.
    Sanlock,
}

/// A complete lease configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub leases: Leases,
    /// The sanlock lockspace name, the same on every host of the pool.
    pub lockspace: String,
    /// Storage every host sees at this same absolute path (NFS, a cluster file system).
    pub dir: PathBuf,
    /// This host's id in the lockspace, 1..=2000, unique in the pool.
    pub host_id: u64,
    /// sanlock's io timeout in seconds (default 10, sanlock's own). It sets every other
    /// timing: a dead host's leases are free about 8 × io_timeout + 60 s after its last
    /// renewal (README "Host death").
    pub io_timeout: u32,
    /// How long, in seconds, a migration destination waits for the source to release the
    /// disk before giving up (default 3600: the source's `remove` comes only after the
    /// whole memory transfer).
    pub handover_timeout: u32,
}

impl Config {
    /// The configuration with leases off.
    pub fn none() -> Config {
        Config {
            leases: Leases::None,
            lockspace: String::new(),
            dir: PathBuf::new(),
            host_id: 0,
            io_timeout: 10,
            handover_timeout: 3600,
        }
    }

    /// Reads the configuration this process should use: `XEN_BLOCK_HOTPLUG_CONF` if set
    /// (it must exist then), else [`DEFAULT_PATH`] (missing means leases off).
    pub fn load() -> Result<Config> {
        match std::env::var_os(ENV_VAR) {
            Some(p) if !p.is_empty() => {
                let p = PathBuf::from(p);
                check_trusted(&p)?;
                Config::read(&p)
            }
            _ => {
                let p = Path::new(DEFAULT_PATH);
                if !p.exists() {
                    return Ok(Config::none());
                }
                Config::read(p)
            }
        }
    }

    fn read(path: &Path) -> Result<Config> {
        let text =
            fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("bad configuration in {}", path.display()))
    }

    /// Parses the file's text. Errors name the line.
    pub fn parse(text: &str) -> Result<Config> {
        let mut c = Config::none();
        let (mut ls, mut dir, mut id) = (None, None, None);
        for (n, raw) in text.lines().enumerate() {
            let n = n + 1;
            let line = raw.split_once('#').map_or(raw, |(a, _)| a).trim();
            if line.is_empty() {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| anyhow!("line {n}: expected KEY=VALUE, found {raw:?}"))?;
            let (k, v) = (k.trim(), unquote(v.trim()));
            match k {
                "LEASES" => {
                    c.leases = match v {
                        "none" => Leases::None,
                        "sanlock" => Leases::Sanlock,
                        _ => bail!("line {n}: LEASES must be none or sanlock, not {v:?}"),
                    }
                }
                "LEASE_LOCKSPACE" => ls = Some(check_name(v).with_context(|| format!("line {n}"))?),
                "LEASE_DIR" => {
                    if !v.starts_with('/') {
                        bail!("line {n}: LEASE_DIR must be an absolute path, not {v:?}");
                    }
                    dir = Some(PathBuf::from(v));
                }
                "LEASE_HOST_ID" => {
                    let h: u64 = v
                        .parse()
                        .ok()
                        .filter(|h| (1..=MAX_HOST_ID).contains(h))
                        .ok_or_else(|| {
                            anyhow!("line {n}: LEASE_HOST_ID must be 1..{MAX_HOST_ID}, not {v:?}")
                        })?;
                    id = Some(h);
                }
                "LEASE_IO_TIMEOUT" => {
                    c.io_timeout = v.parse().ok().filter(|t| (1..=300).contains(t)).ok_or_else(
                        || anyhow!("line {n}: LEASE_IO_TIMEOUT must be 1..300 seconds, not {v:?}"),
                    )?
                }
                "LEASE_HANDOVER_TIMEOUT" => {
                    c.handover_timeout = v.parse().ok().filter(|t| *t >= 1).ok_or_else(|| {
                        anyhow!("line {n}: LEASE_HANDOVER_TIMEOUT must be a number of seconds, not {v:?}")
                    })?
                }
                _ => bail!(
                    "line {n}: unknown key {k:?} (known: LEASES, LEASE_LOCKSPACE, LEASE_DIR, \
                     LEASE_HOST_ID, LEASE_IO_TIMEOUT, LEASE_HANDOVER_TIMEOUT)"
                ),
            }
        }
        if c.leases == Leases::Sanlock {
            let missing = |k: &str| anyhow!("LEASES=sanlock needs {k}");
            c.lockspace = ls.ok_or_else(|| missing("LEASE_LOCKSPACE"))?;
            c.dir = dir.ok_or_else(|| missing("LEASE_DIR"))?;
            c.host_id = id.ok_or_else(|| missing("LEASE_HOST_ID"))?;
        }
        Ok(c)
    }

    /// The lockspace's delta-lease file in `LEASE_DIR`.
    pub fn lockspace_path(&self) -> PathBuf {
        self.dir.join(format!("{}.lockspace", self.lockspace))
    }
}

/// Strips one pair of matching quotes, as a shell-style file may have them.
fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

/// A sanlock name: 1..=48 bytes of letters, digits, `-`, `_`, `.` (`:` separates fields
/// in sanlock's string forms, and spaces separate resources).
pub fn check_name(v: &str) -> Result<String> {
    if v.is_empty()
        || v.len() > MAX_NAME_LEN
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        bail!(
            "LEASE_LOCKSPACE must be 1..{MAX_NAME_LEN} letters, digits, '-', '_' or '.', not {v:?}"
        );
    }
    Ok(v.to_string())
}

/// `XEN_BLOCK_HOTPLUG_CONF` is trusted only when root owns it and neither group nor others
/// may write it.
fn check_trusted(p: &Path) -> Result<()> {
    let m = fs::metadata(p).with_context(|| format!("{ENV_VAR}={}: cannot stat", p.display()))?;
    if m.uid() != 0 {
        bail!(
            "{ENV_VAR}={}: not owned by root (uid {}): ignored for safety",
            p.display(),
            m.uid()
        );
    }
    if m.mode() & 0o022 != 0 {
        bail!(
            "{ENV_VAR}={}: writable by group or others (mode {:o}): refused for safety",
            p.display(),
            m.mode() & 0o7777
        );
    }
    if !m.is_file() {
        bail!("{ENV_VAR}={}: not a regular file", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_file() {
        let c = Config::parse(
            "# pool\nLEASES=sanlock   # on\nLEASE_LOCKSPACE=xenpool\n\n LEASE_DIR = \"/srv/l\"\nLEASE_HOST_ID=2000\nLEASE_IO_TIMEOUT=2\n",
        )
        .unwrap();
        assert_eq!(c.leases, Leases::Sanlock);
        assert_eq!(c.lockspace, "xenpool");
        assert_eq!(c.dir, PathBuf::from("/srv/l"));
        assert_eq!(c.host_id, 2000);
        assert_eq!(c.io_timeout, 2);
        assert_eq!(
            c.lockspace_path(),
            PathBuf::from("/srv/l/xenpool.lockspace")
        );
    }

    #[test]
    fn none_needs_nothing_else() {
        assert_eq!(Config::parse("LEASES=none\n").unwrap().leases, Leases::None);
        assert_eq!(Config::parse("").unwrap().leases, Leases::None);
    }

    #[test]
    fn mistakes_are_named() {
        for (text, needle) in [
            (
                "LEASES=sanlock\nLEASE_LOCKSPACE=a\nLEASE_DIR=/x\nLEASE_HOST_ID=0\n",
                "1..2000",
            ),
            ("LEASE_HOST_ID=2001\n", "1..2000"),
            ("LEASE_HOST_ID=-1\n", "1..2000"),
            ("LEASE_DIR=srv/leases\n", "absolute"),
            ("LEASE_DRI=/srv\n", "unknown key \"LEASE_DRI\""),
            ("LEASES=yes\n", "none or sanlock"),
            ("LEASES\n", "KEY=VALUE"),
            (
                "LEASES=sanlock\nLEASE_DIR=/x\nLEASE_HOST_ID=1\n",
                "needs LEASE_LOCKSPACE",
            ),
            ("LEASE_LOCKSPACE=a:b\n", "LEASE_LOCKSPACE"),
            (
                &format!("LEASE_LOCKSPACE={}\n", "a".repeat(49)),
                "LEASE_LOCKSPACE",
            ),
        ] {
            let e = format!("{:#}", Config::parse(text).unwrap_err());
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
