//! `xen-block-hotplug lease init|join|leave|status [--json]`: the pool administrator's
//! commands (issue 15), and the hidden `lease handover` the migration acquirer runs as.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use super::config::{Config, Leases};
use super::identity::Identity;
use super::sanlock::{self, Lockspace};
use super::{Kind, LeaseFile, Phase, lib, local_leases};
use crate::devnum::DevNum;

/// `xen-block-hotplug lease ...`: a group of `cli`'s commands (`Command::Lease`).
#[derive(Args, Debug)]
pub struct LeaseArgs {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create and initialise the lockspace in LEASE_DIR, once per pool (refuses if one exists).
    Init,
    /// Join the lockspace as LEASE_HOST_ID (idempotent; sanlock needs about 2 × io timeout).
    Join,
    /// Leave the lockspace (refused while this host holds leases).
    Leave,
    /// The leases this host holds; with DISK, that disk's holders (host id, VM UUID).
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// A disk (image file or block device) to look up.
        disk: Option<String>,
    },
    /// (internal) the migration handover acquirer.
    #[command(hide = true)]
    Handover {
        #[arg(long)]
        hash: String,
        #[arg(long)]
        kind: String,
        #[arg(long)]
        timeout: u64,
    },
}

/// Runs `lease ...`: exit 0, or 1 with the error on stderr.
pub fn main(args: LeaseArgs) -> ExitCode {
    match run(args.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xen-block-hotplug lease: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn configured() -> Result<Config> {
    let c = Config::load()?;
    if c.leases != Leases::Sanlock {
        bail!(
            "leases are not configured: set LEASES=sanlock in {}",
            super::config::DEFAULT_PATH
        );
    }
    Ok(c)
}

fn lockspace(c: &Config) -> Result<Lockspace> {
    Lockspace::new(&c.lockspace, c.host_id, &c.lockspace_path())
}

fn run(cmd: Cmd) -> Result<()> {
    let c = configured()?;
    match cmd {
        Cmd::Init => init(&c),
        Cmd::Join => {
            let lib = lib()?;
            let mut ls = lockspace(&c)?;
            if lib.inq_lockspace(&mut ls) == 0 {
                lib.set_used_by_orphans(&c.lockspace)?;
                println!(
                    "already joined lockspace {} as host id {}",
                    c.lockspace, c.host_id
                );
                return Ok(());
            }
            if !lib.daemon_listening() {
                bail!(
                    "cannot join lockspace {}: the sanlock daemon is not running (no socket in {})",
                    c.lockspace,
                    sanlock::run_dir()
                );
            }
            let t0 = Instant::now();
            lib.add_lockspace(&mut ls, c.io_timeout)?;
            lib.set_used_by_orphans(&c.lockspace)?;
            println!(
                "joined lockspace {} as host id {} in {:.1} s",
                c.lockspace,
                c.host_id,
                t0.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Cmd::Leave => {
            let held = local_leases(&c);
            if !held.is_empty() {
                bail!(
                    "this host holds {} lease(s) in lockspace {}: detach those disks first",
                    held.len(),
                    c.lockspace
                );
            }
            let lib = lib()?;
            let mut ls = lockspace(&c)?;
            if lib.inq_lockspace(&mut ls) == -nix::libc::ENOENT {
                println!("not joined to lockspace {}", c.lockspace);
                return Ok(());
            }
            lib.rem_lockspace(&mut ls, sanlock::REM_UNUSED)?;
            println!("left lockspace {}", c.lockspace);
            Ok(())
        }
        Cmd::Status { json, disk } => status(&c, json, disk.as_deref()),
        Cmd::Handover {
            hash,
            kind,
            timeout,
        } => {
            let kind = match kind.as_str() {
                "shared" => Kind::Shared,
                _ => Kind::Exclusive,
            };
            super::handover::run(&c, &hash, kind, Duration::from_secs(timeout))
                .inspect_err(|e| crate::log::err(&format!("{e:#}")))
        }
    }
}

/// Writes the lockspace under a temporary name and links it into place: `link` refuses an
/// existing name, so two `init`s at once cannot both win or overwrite a pool in use.
fn init(c: &Config) -> Result<()> {
    let path = c.lockspace_path();
    if path.exists() {
        bail!(
            "{} exists: the pool's lockspace is initialised already (run `lease join`)",
            path.display()
        );
    }
    if !c.dir.is_dir() {
        bail!(
            "LEASE_DIR {} is not a directory (is the shared storage mounted?)",
            c.dir.display()
        );
    }
    let lib = lib()?;
    let tmp = c.dir.join(format!(
        ".{}.lockspace.new-{}",
        c.lockspace,
        std::process::id()
    ));
    let made = (|| -> Result<()> {
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.set_len(sanlock::LEASE_SIZE)?;
        drop(f);
        super::share_with_daemon(&tmp)?;
        let mut ls = Lockspace::new(&c.lockspace, 0, &tmp)?;
        lib.write_lockspace(&mut ls, c.io_timeout)?;
        fs::hard_link(&tmp, &path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                anyhow::anyhow!(
                    "{} was created meanwhile by another host: left as it is",
                    path.display()
                )
            } else {
                anyhow::anyhow!(e).context(format!("cannot create {}", path.display()))
            }
        })
    })();
    let _ = fs::remove_file(&tmp);
    made?;
    println!(
        "initialised lockspace {} in {}",
        c.lockspace,
        path.display()
    );
    Ok(())
}

fn esc(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn host_state(flags: u32) -> &'static str {
    match flags & sanlock::HOST_MASK {
        1 => "unknown",
        2 => "free",
        3 => "live",
        4 => "fail",
        5 => "dead",
        _ => "?",
    }
}

/// A disk named on the command line, identified as `add` identifies it.
fn identify(disk: &str) -> Result<Identity> {
    let canon = fs::canonicalize(disk).with_context(|| format!("cannot resolve {disk}"))?;
    let canon = canon.to_string_lossy().into_owned();
    let m = fs::metadata(&canon)?;
    Ok(if m.file_type().is_block_device() {
        let r = m.rdev();
        Identity::of_block(
            &canon,
            DevNum::new(nix::sys::stat::major(r), nix::sys::stat::minor(r)),
        )
    } else {
        Identity::of_file(&canon)
    })
}

fn status(c: &Config, json: bool, disk: Option<&str>) -> Result<()> {
    let lib = lib()?;
    // What cannot be checked is an error, never "free": a cluster safety answer needs the
    // daemon and the shared storage.
    if !lib.daemon_listening() {
        bail!(
            "the sanlock daemon is not running (no socket in {})",
            sanlock::run_dir()
        );
    }
    if !c.dir.is_dir() {
        bail!(
            "LEASE_DIR {} is not a directory (is the shared storage mounted?)",
            c.dir.display()
        );
    }
    let mut ls = lockspace(c)?;
    let joined = match lib.inq_lockspace(&mut ls) {
        0 => "joined",
        rv if rv == -nix::libc::EINPROGRESS => "joining",
        rv if rv == -nix::libc::ENOENT => "not joined",
        rv => bail!("cannot ask the sanlock daemon: {}", lib.describe(rv)),
    };
    let hosts = if joined == "joined" {
        lib.get_hosts(&c.lockspace, 0).unwrap_or_default()
    } else {
        Vec::new()
    };
    let leases = local_leases(c);
    // For a named disk: who holds its lease and its handover guard.
    let mut about = None;
    if let Some(d) = disk {
        let id = identify(d)?;
        let lf = LeaseFile::new(c, &id);
        let (mut owners, mut guard) = (Vec::new(), Vec::new());
        if lf.path().exists() {
            owners = lib.read_owners(&lf.disk(Kind::Exclusive)?)?;
            guard = lib.read_owners(&lf.guard(false)?)?;
        }
        about = Some((id, lf, owners, guard));
    }
    if json {
        let mut o = format!(
            "{{\"lockspace\":{},\"host_id\":{},\"state\":{},\"hosts\":[",
            esc(&c.lockspace),
            c.host_id,
            esc(joined)
        );
        let hs: Vec<String> = hosts
            .iter()
            .map(|h| {
                format!(
                    "{{\"host_id\":{},\"state\":{}}}",
                    h.host_id,
                    esc(host_state(h.flags))
                )
            })
            .collect();
        o.push_str(&hs.join(","));
        o.push_str("],\"leases\":[");
        let ls: Vec<String> = leases
            .iter()
            .map(|(hash, l)| {
                let holders: Vec<String> = l
                    .holders
                    .iter()
                    .map(|(b, vm)| format!("{{\"backend\":{},\"vm\":{}}}", esc(b), esc(vm)))
                    .collect();
                format!(
                    "{{\"disk\":{},\"hash\":{},\"kind\":{},\"phase\":{},\"acquirer\":{},\"holders\":[{}]}}",
                    esc(&l.identity),
                    esc(hash),
                    esc(l.kind.as_str()),
                    esc(if l.phase == Phase::Held { "held" } else { "handover" }),
                    l.acquirer.map_or("null".to_string(), |p| p.to_string()),
                    holders.join(",")
                )
            })
            .collect();
        o.push_str(&ls.join(","));
        o.push(']');
        if let Some((id, lf, owners, guard)) = &about {
            let list = |v: &[sanlock::Host]| -> String {
                v.iter()
                    .map(|h| {
                        let vms: Vec<String> =
                            lf.owner_vms(h.host_id).iter().map(|v| esc(v)).collect();
                        format!("{{\"host_id\":{},\"vms\":[{}]}}", h.host_id, vms.join(","))
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            };
            o.push_str(&format!(
                ",\"disk\":{{\"identity\":{},\"hash\":{},\"holders\":[{}],\"handover_to\":[{}]}}",
                esc(&id.0),
                esc(&lf.hash),
                list(owners),
                list(guard)
            ));
        }
        o.push('}');
        println!("{o}");
        return Ok(());
    }
    println!(
        "lockspace {} ({}), host id {}: {joined}",
        c.lockspace,
        c.lockspace_path().display(),
        c.host_id
    );
    for h in &hosts {
        println!("  host id {}: {}", h.host_id, host_state(h.flags));
    }
    if leases.is_empty() {
        println!("this host holds no leases");
    }
    for (hash, l) in &leases {
        let phase = match (l.phase, l.acquirer) {
            (Phase::Held, _) => "held".to_string(),
            (Phase::Handover, Some(p)) => format!("being handed over (acquirer pid {p})"),
            (Phase::Handover, None) => "being handed over".to_string(),
        };
        println!(
            "{} [{}] {}, {phase}",
            l.identity,
            hash.get(..16).unwrap_or(hash),
            l.kind.as_str()
        );
        for (b, vm) in &l.holders {
            println!("  for {b} (VM {vm})");
        }
    }
    if let Some((id, lf, owners, guard)) = &about {
        let ids = |v: &[sanlock::Host]| v.iter().map(|h| h.host_id).collect::<Vec<_>>();
        println!("disk {} (lease {}):", id.0, lf.path().display());
        if owners.is_empty() {
            println!("  free");
        } else {
            println!("  held by {}", super::describe_holders(lf, &ids(owners)));
        }
        if !guard.is_empty() {
            println!(
                "  being handed over to {}",
                super::describe_holders(lf, &ids(guard))
            );
        }
    }
    Ok(())
}
