//! `block-iscsi` (interface doc §5.1), with upstream's faults fixed: any LUN, a deadline
//! on every wait, the sharing check, exact matching of targets, CHAP without secrets in
//! xenstore, and a remove that logs out of exactly the session it opened.
//!
//! add, under the `block-iscsi` lock (iSCSI adds and removes are serialised among
//! themselves; the global `block` lock is only taken for the sharing check and the node
//! writes, so a slow target never stalls every other disk of the host):
//! 1. an open session to this target on this portal is refused (as upstream), unless it
//!    was opened by us for the same LUN read-only and this request is read-only too;
//! 2. discovery (`-t sendtargets`) must list the target; with `auth=`, the CHAP
//!    credentials are set on the node record; login;
//! 3. wait for `/dev/disk/by-path/ip-<portal>-iscsi-<iqn>-lun-<n>`; with `multipath=y`,
//!    for the multipath map over that disk;
//! 4. under `block`: sharing check, `write_dev`.
//!
//! A refused or failed add undoes what it did (flush the map, log out) before reporting.
//!
//! CHAP: `auth=<file>` names a regular file owned by root and not readable by group or
//! others, holding `username=`, `password=` (and `username_in=`, `password_in=` for
//! mutual CHAP). The secret reaches `iscsiadm` the only way it accepts one, as the value
//! of `iscsiadm -m node -o update -n node.session.auth.password -v <secret>`: it is in
//! that short-lived process's argument list (visible to local root, and to other local
//! users unless /proc is mounted `hidepid=2`), and open-iscsi then keeps it in its
//! root-only node database (`/etc/iscsi/nodes`). It is never written to xenstore, to a
//! log or to an error message. Discovery authentication, if the target wants it, belongs
//! in `/etc/iscsi/iscsid.conf`.

pub mod parse;

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};

use self::parse::{Credentials, Params, Portal, Session};
use crate::applet::helper::{self, Device, Steps};
use crate::backend::Backend;
use crate::deadline::{self, Deadline, STEP_FLOOR};
use crate::exec::{self, Cmd};
use crate::lock;
use crate::log;
use crate::mode::Mode;
use crate::record::{self, Record};
use crate::report::busy;
use crate::watchdog;

pub fn add(be: &Backend) -> Result<()> {
    let Some(req) = helper::begin_add(be)? else {
        return Ok(());
    };
    let p = parse::parse_params(&req.params)?;
    let creds = match &p.auth {
        Some(f) => Some(read_credentials(f)?),
        None => None,
    };
    exec::find("iscsiadm")?;
    if p.multipath {
        exec::find("multipath")?;
    }
    // The lock first: waiting behind another attach must not use up this one's waits
    // (the budget still keeps everything inside the watchdog's deadline).
    let _lock = watchdog::lock(lock::ISCSI)?;
    let deadline = req.budget.wait()?;
    watchdog::phase("listing iSCSI sessions");
    let sessions = list_sessions(&deadline)?;
    let open = parse::sessions_of(&sessions, &p.iqn, &p.portal);
    let reuse = match open.as_slice() {
        [] => None,
        [s] if req.mode == Mode::Read && shared_read_only(be, &req.key, &p, s.sid)? => {
            log::debug(&format!(
                "reusing session {} to {} for the same LUN read-only",
                s.sid, p.iqn
            ));
            Some(s.sid)
        }
        [s, ..] => {
            return Err(busy(format!(
                "iSCSI target {} at {} already has a session (sid {}): refusing to share it \
                 (only a LUN this script attached read-only can be attached read-only again)",
                p.iqn, p.portal, s.sid
            )));
        }
    };
    let mut rec = record::Iscsi {
        backend: Some(be.path.path.clone()),
        iqn: p.iqn.clone(),
        portal: p.portal.socket_addr(),
        lun: p.lun,
        mode: req.mode,
        iface: p.iface.clone(),
        sid: None,
        multipath: None,
        device: None,
    };
    let save = |rec: &record::Iscsi| record::save(&req.key, &Record::Iscsi(rec.clone()));
    // Saved before login, so a run killed after it still finds the session on remove.
    save(&rec)?;
    let mut done = Done::default();
    let result = (|| -> Result<()> {
        let sid = match reuse {
            Some(sid) => sid,
            None => {
                let sid = login(&p, creds.as_ref(), &deadline, &mut done)?;
                rec.sid = Some(sid);
                save(&rec)?;
                sid
            }
        };
        watchdog::phase("waiting for the iSCSI disk");
        let disk = wait_for_disk(&p, &deadline)?;
        log::debug(&format!("session {sid}: LUN {} is {}", p.lun, disk.path));
        let mut devs = vec![disk.rdev];
        let dev = if p.multipath {
            watchdog::phase("waiting for the multipath map");
            let (name, dev) = wait_for_map(&disk, &deadline)?;
            rec.multipath = Some(name.clone());
            done.map = Some(name);
            devs.insert(0, dev.rdev);
            dev
        } else {
            disk
        };
        rec.device = Some(dev.clone());
        save(&rec)?;
        let _block = watchdog::lock(lock::BLOCK)?;
        helper::check_sharing(
            &req.scan,
            &format!("iSCSI LUN {} of {} ({})", p.lun, p.iqn, dev.path),
            &devs,
        )?;
        helper::publish(be, None, &dev)
    })();
    let Err(err) = result else {
        return Ok(());
    };
    let mut undo = Vec::new();
    if reuse.is_none() {
        let d = req.budget.undo();
        if let Some(map) = &done.map
            && let Err(e) = flush_map(map, &d)
        {
            undo.push(format!("{e:#}"));
        }
        // No session was open when we started (the lock keeps other iSCSI adds out), so
        // a session of this node without a known sid is the one our login made.
        let r = match done.sid {
            Some(sid) => logout_sid(sid, &p.iqn, &p.portal, &d),
            None if done.login => logout_node(&p, &d),
            None => Ok(()),
        };
        if let Err(e) = r {
            undo.push(format!("{e:#}"));
        }
    }
    if undo.is_empty() {
        let _ = record::delete(&req.key);
    }
    Err(helper::with_undo_errors(err, undo))
}

/// What this add did, for the undo.
#[derive(Default)]
struct Done {
    /// A login was started (it may complete in iscsid even when iscsiadm was killed).
    login: bool,
    sid: Option<u32>,
    map: Option<String>,
}

/// Whether another live vbd of ours uses session `sid` for the same LUN read-only.
fn shared_read_only(be: &Backend, own_key: &str, p: &Params, sid: u32) -> Result<bool> {
    for (_, rec) in helper::other_records(own_key, iscsi_of) {
        if same_session(&rec, p)
            && rec.lun == p.lun
            && rec.mode == Mode::Read
            && rec.sid == Some(sid)
            && helper::backend_alive(be, rec.backend.as_deref())?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn iscsi_of(r: Record) -> Option<record::Iscsi> {
    match r {
        Record::Iscsi(r) => Some(r),
        _ => None,
    }
}

fn same_session(rec: &record::Iscsi, p: &Params) -> bool {
    rec.iqn == p.iqn && Portal::from(rec.portal) == p.portal
}

fn list_sessions(deadline: &Deadline) -> Result<Vec<Session>> {
    let cmd = Cmd::new("iscsiadm").args(["-m", "session"]);
    let out = cmd.run(deadline)?;
    match out.code {
        Some(0) => Ok(parse::parse_sessions(&out.stdout)?),
        // ISCSI_ERR_NO_OBJS_FOUND: "iscsiadm: No active sessions."
        Some(21) => Ok(Vec::new()),
        _ => Err(cmd.failed(&out)),
    }
}

fn node_cmd(p: &Params) -> Cmd {
    let mut c = Cmd::new("iscsiadm").args([
        "-m",
        "node",
        "-T",
        p.iqn.as_str(),
        "-p",
        &p.portal.to_string(),
    ]);
    if let Some(i) = &p.iface {
        c = c.args(["-I", i.as_str()]);
    }
    c
}

/// Discovery, CHAP set-up, login; the new session's id.
fn login(p: &Params, creds: Option<&Credentials>, d: &Deadline, done: &mut Done) -> Result<u32> {
    watchdog::phase("discovering iSCSI targets");
    let mut disc = Cmd::new("iscsiadm").args([
        "-m",
        "discovery",
        "-t",
        "sendtargets",
        "-p",
        &p.portal.to_string(),
    ]);
    if let Some(i) = &p.iface {
        disc = disc.args(["-I", i.as_str()]);
    }
    let out = disc.run_ok(d)?;
    let found = parse::parse_discovery(&out.stdout);
    if !found
        .iter()
        .any(|n| n.target == p.iqn && n.portal.is(&p.portal))
    {
        let elsewhere: Vec<String> = found
            .iter()
            .filter(|n| n.target == p.iqn)
            .map(|n| format!("{}:{}", n.portal.host, n.portal.port))
            .collect();
        return Err(if elsewhere.is_empty() {
            anyhow!(
                "iSCSI target {} is not offered by the portal {} (discovery lists {} other target(s))",
                p.iqn,
                p.portal,
                found.len()
            )
        } else {
            anyhow!(
                "iSCSI target {} is offered at {}, not at the portal {}: use one of those",
                p.iqn,
                elsewhere.join(", "),
                p.portal
            )
        });
    }
    if let Some(c) = creds {
        set_chap(p, c, d)?;
    }
    watchdog::phase("logging in to the iSCSI target");
    // A login that fails half-way may still leave a session: look for it either way.
    done.login = true;
    let r = node_cmd(p).arg("--login").run_ok(d);
    let sessions = list_sessions(&d.at_least(STEP_FLOOR));
    if let Ok(s) = &sessions
        && let [one] = parse::sessions_of(s, &p.iqn, &p.portal).as_slice()
    {
        done.sid = Some(one.sid);
    }
    r?;
    done.sid.ok_or_else(|| {
        anyhow!(
            "logged in to {} at {}, but no session is listed",
            p.iqn,
            p.portal
        )
    })
}

fn set_chap(p: &Params, c: &Credentials, d: &Deadline) -> Result<()> {
    let update = |name: &str, value: &str, secret: bool| -> Result<()> {
        let cmd = node_cmd(p).args(["-o", "update", "-n", name, "-v"]);
        let cmd = if secret {
            cmd.secret(value)
        } else {
            cmd.arg(value)
        };
        cmd.run_ok(d).map(|_| ())
    };
    update("node.session.auth.authmethod", "CHAP", false)?;
    update("node.session.auth.username", &c.username, false)?;
    update("node.session.auth.password", &c.password, true)?;
    if let Some((u, pw)) = &c.mutual {
        update("node.session.auth.username_in", u, false)?;
        update("node.session.auth.password_in", pw, true)?;
    }
    Ok(())
}

/// Reads a CHAP credentials file: a regular file owned by root, no access for group or
/// others (checked on the opened file, not the path).
fn read_credentials(path: &str) -> Result<Credentials> {
    use std::io::Read;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NOCTTY | nix::libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot open the CHAP credentials file {path}"))?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(anyhow!(
            "CHAP credentials file {path} is not a regular file"
        ));
    }
    if meta.uid() != 0 {
        return Err(anyhow!(
            "CHAP credentials file {path} is not owned by root (uid {})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(anyhow!(
            "CHAP credentials file {path} is accessible to group or others (mode {:04o}): \
             chmod 600 it",
            meta.mode() & 0o7777
        ));
    }
    let mut text = String::new();
    f.by_ref()
        .take(64 * 1024)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {path}"))?;
    parse::parse_credentials(&text).map_err(|e| anyhow!("CHAP credentials file {path}: {e}"))
}

fn by_path_dir() -> PathBuf {
    exec::sys_path("/dev/disk/by-path")
}

/// Waits for this LUN's `/dev/disk/by-path` link and resolves it.
fn wait_for_disk(p: &Params, d: &Deadline) -> Result<Device> {
    let dir = by_path_dir();
    let addr = match p.portal.addr {
        std::net::IpAddr::V4(a) => a.to_string(),
        std::net::IpAddr::V6(a) => a.to_string(),
    };
    let what = format!(
        "waiting for {}/ip-{addr}:{}-iscsi-{}-{}",
        dir.display(),
        p.portal.port,
        p.iqn,
        parse::by_path_lun(p.lun)
    );
    deadline::wait_for(&what, d, || {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(None);
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if parse::by_path_is(name, &p.iqn, p.lun, &p.portal) {
                // A link udev is still writing may not resolve yet: keep waiting.
                return Ok(helper::block_device(&e.path()).ok());
            }
        }
        Ok(None)
    })
}

/// Waits for the multipath map over `disk`; its name and device.
fn wait_for_map(disk: &Device, d: &Deadline) -> Result<(String, Device)> {
    let devnum = format!("{}:{}", disk.rdev.major, disk.rdev.minor);
    let what = format!("waiting for a multipath map over {}", disk.path);
    deadline::wait_for(&what, d, || {
        let out = Cmd::new("multipath")
            .args(["-ll", disk.path.as_str()])
            .run(d)?;
        if !out.success() {
            return Ok(None);
        }
        let Some(map) = parse::parse_multipath_ll(&out.stdout) else {
            return Ok(None);
        };
        if !map.paths.contains(&devnum) {
            return Err(anyhow!(
                "multipath -ll {} shows map {} without that device",
                disk.path,
                map.name
            ));
        }
        let node = exec::sys_path("/dev/mapper").join(&map.name);
        Ok(helper::block_device(&node).ok().map(|dev| (map.name, dev)))
    })
}

fn flush_map(name: &str, d: &Deadline) -> Result<()> {
    Cmd::new("multipath")
        .args(["-f", name])
        .run_ok(d)
        .map(|_| ())
}

/// Logs out of session `sid`, only if it still is a session of this target and portal.
fn logout_sid(sid: u32, iqn: &str, portal: &Portal, d: &Deadline) -> Result<()> {
    let sessions = list_sessions(d)?;
    let mine = parse::sessions_of(&sessions, iqn, portal);
    if !mine.iter().any(|s| s.sid == sid) {
        if mine.is_empty() {
            log::debug(&format!("session {sid} to {iqn} is already gone"));
        } else {
            let others: Vec<String> = mine.iter().map(|s| s.sid.to_string()).collect();
            log::err(&format!(
                "session {sid} to {iqn} at {portal} is gone; not touching session(s) {} \
                 to the same target, which this attach did not open",
                others.join(", ")
            ));
        }
        return Ok(());
    }
    Cmd::new("iscsiadm")
        .args(["-m", "session", "-r", &sid.to_string(), "-u"])
        .run_ok(d)
        .map(|_| ())
}

pub fn remove(be: &Backend) -> Result<()> {
    let helper::RemoveStart {
        key,
        deadline,
        lock: _lock,
        rec,
    } = helper::begin_remove(be, lock::ISCSI, iscsi_of)?;
    let rec = match rec {
        Some(r) => r,
        None => match legacy_record(be)? {
            Some(r) => r,
            None => {
                log::debug(&format!(
                    "{}: no record and no params: nothing to undo",
                    be.path.path
                ));
                return Ok(());
            }
        },
    };
    let iqn = rec.iqn.clone();
    let portal = Portal::from(rec.portal);
    let p = Params {
        iqn: iqn.clone(),
        portal,
        lun: 0,
        multipath: false,
        iface: rec.iface.clone(),
        auth: None,
    };
    let mut users = Vec::new();
    for (k, other) in helper::other_records(&key, iscsi_of) {
        if same_session(&other, &p) && helper::backend_alive(be, other.backend.as_deref())? {
            users.push(other.backend.unwrap_or(k));
        }
    }
    let mut steps = Steps::default();
    if !users.is_empty() {
        log::debug(&format!(
            "session to {iqn} at {portal} still used by {}: not logging out",
            users.join(", ")
        ));
    } else {
        if let Some(map) = &rec.multipath {
            watchdog::phase("flushing the multipath map");
            steps.run(
                &format!("flushing multipath map {map}"),
                flush_map(map, &deadline.at_least(STEP_FLOOR)),
            );
        }
        watchdog::phase("logging out of the iSCSI target");
        let d = deadline.at_least(STEP_FLOOR);
        let r = match rec.sid {
            Some(sid) => logout_sid(sid, &iqn, &portal, &d),
            None => logout_node(&p, &d),
        };
        steps.run(&format!("logging out of {iqn} at {portal}"), r);
    }
    steps.finish_remove(&key)
}

/// Without a sid (an add killed between login and record, or an attach by the shell
/// script): log out of the node's sessions, as upstream's remove does.
fn logout_node(p: &Params, d: &Deadline) -> Result<()> {
    let cmd = node_cmd(p).arg("--logout");
    let out = cmd.run(d)?;
    match out.code {
        Some(0) => Ok(()),
        // "iscsiadm: No matching sessions found"
        Some(21) => {
            log::debug(&format!("no session to {} to log out of", p.iqn));
            Ok(())
        }
        _ => Err(cmd.failed(&out)),
    }
}

/// No record (attached by the shell script, or before an upgrade): what `params` says.
fn legacy_record(be: &Backend) -> Result<Option<record::Iscsi>> {
    let Some(params) = be.read("params")? else {
        return Ok(None);
    };
    let p = parse::parse_params(&params)?;
    Ok(Some(record::Iscsi {
        backend: Some(be.path.path.clone()),
        iqn: p.iqn,
        portal: p.portal.socket_addr(),
        lun: p.lun,
        // Remove does not use it; the backend's own mode, for what it is worth.
        mode: Mode::canonicalise_other(be.read("mode")?.as_deref()),
        iface: p.iface,
        sid: None,
        multipath: None,
        device: None,
    }))
}
