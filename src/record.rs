//! Remove records: what `remove` needs, kept outside xenstore.
//!
//! The backend nodes can be gone when `remove` runs (forced teardowns, `xl` crashes), and
//! upstream then leaks the loop device (or session, connection, promotion). So `add`
//! records what it attached in a small file under `/var/run/xen-hotplug/xen-block-hotplug/`,
//! named after the backend path (`BackendPath::record_key`), and `remove` deletes it. The
//! record is written before the attach and completed after, so a kill at any point leaves
//! either nothing attached or a record that finds it.
//!
//! One typed value per kind of attachment ([`Record`]), one encoder and one decoder. The
//! file format is the one earlier releases wrote, so records left by them across an
//! upgrade are read unchanged: `key=value` lines sorted by key, `kind` naming the
//! attachment (`loop`, `vnd`, `iscsi`, `nbd`, `drbd`, and `phy` for a device handed over
//! as it is that took a cluster lease). A cluster lease (issue 15, `lease`) is kept as the
//! `lease-*` fields of a `loop` or `phy` record ([`Lease`]); records without them (all
//! those of earlier releases) hold no lease.
//!
//! Decoding policy, the same for every kind and field:
//! * a field `remove` needs (the device to detach, the session to log out of) is required:
//!   missing, it is an error;
//! * a field kept for people and messages only (`backend` of a loop, `params`, `server`)
//!   is optional;
//! * a value that does not parse (a bad `diskseq`, `rdev`, `unit`, ...) is an error, never
//!   skipped: a record that cannot be read whole is not acted on;
//! * a key given twice, or a line without `=`, is an error; an unknown key is ignored, so
//!   that a record written by a later release with one more field still reads.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use crate::devnum::DevNum;
use crate::mode::Mode;

/// The fixed record directory (`paths::RECORD_DIR`); `dir()` is where the records are,
/// which tests move (`paths::record_dir`).
pub const RECORD_DIR: &str = crate::paths::RECORD_DIR;

/// A block device as published in xenstore: its path (symbolic links resolved, the
/// `node` field), device number (`rdev`, Linux hex `major:minor`) and disk sequence number
/// (`diskseq`, hex; Linux 5.15+, absent elsewhere).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub path: String,
    pub rdev: DevNum,
    pub diskseq: Option<u64>,
}

/// A loop device bound to an image file by `block` on Linux.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loop {
    /// The backend path (for people reading the file).
    pub backend: Option<String>,
    /// The image file as `params` named it.
    pub params: Option<String>,
    /// The image's `(st_dev, st_ino)`, checked before detaching (field `backing`,
    /// `<linux hex dev>:<decimal ino>`).
    pub backing: (DevNum, u64),
    /// The loop device.
    pub device: Device,
    /// The cluster lease taken for the image (`lease-*` fields), if any.
    pub lease: Option<Lease>,
}

/// A device handed to the guest as it is (`phy`), recorded only because `add` took a
/// cluster lease on it: `remove` releases the lease, there is nothing to detach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Phy {
    pub backend: Option<String>,
    /// The device as published (for people reading the file).
    pub params: Option<String>,
    pub lease: Lease,
}

/// Exclusive (`w`) or shared (`r`): the two kinds of cluster lease (field `lease-kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseKind {
    Exclusive,
    Shared,
}

impl LeaseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseKind::Exclusive => "exclusive",
            LeaseKind::Shared => "shared",
        }
    }

    pub fn parse(s: &str) -> Option<LeaseKind> {
        match s {
            "exclusive" => Some(LeaseKind::Exclusive),
            "shared" => Some(LeaseKind::Shared),
            _ => None,
        }
    }
}

/// What `remove` needs to release a cluster lease (issue 15, `lease::release`): enough
/// without the backend nodes and without the configuration, which may have changed since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The sanlock lockspace: 1..=48 bytes of letters, digits, `-`, `_`, `.`.
    pub lockspace: String,
    /// This host's id in it (decimal).
    pub host_id: u64,
    /// `LEASE_DIR`, absolute.
    pub dir: PathBuf,
    /// The lower-case hex SHA-256 of the disk's identity: the lease file's name.
    pub hash: String,
    pub kind: LeaseKind,
    /// The frontend's VM UUID (`unknown` when it has no `vm` node).
    pub vm: String,
    /// The backend the lease is held for: its record key (`BackendPath::record_key`).
    pub holder: String,
}

/// A `vnd(4)` unit configured with an image file by `block` on NetBSD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vnd {
    pub backend: Option<String>,
    pub params: Option<String>,
    /// The image's `(st_dev, st_ino)`, both decimal (field `backing`).
    pub backing: (u64, u64),
    pub unit: u32,
    /// The unit's block node (`/dev/vndNd`).
    pub node: Option<String>,
}

/// An iSCSI session opened by `block-iscsi`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iscsi {
    pub backend: Option<String>,
    pub iqn: String,
    /// The portal, `a.b.c.d:port` or `[v6]:port`.
    pub portal: SocketAddr,
    pub lun: u64,
    /// The mode of the attach (`r`, `w`, `w!`): a session is shared only between
    /// read-only attaches of the same LUN.
    pub mode: Mode,
    pub iface: Option<String>,
    /// The session id, once login has reported it.
    pub sid: Option<u32>,
    /// The multipath map over the LUN, once it appeared.
    pub multipath: Option<String>,
    /// The device published, once known.
    pub device: Option<Device>,
}

/// An NBD connection made by `block-nbd`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nbd {
    pub backend: Option<String>,
    /// The server as `params` named it (for messages).
    pub server: Option<String>,
    /// The NBD device connected (`/dev/nbdN`, field `device`).
    pub nbd: String,
    /// The pid of the connection (sysfs `pid`), once it is up.
    pub pid: Option<u32>,
    pub device: Option<Device>,
}

/// A DRBD resource used (and perhaps promoted) by `block-drbd`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drbd {
    pub backend: Option<String>,
    /// `<resource>[/<volume>]` as `drbdadm` takes it.
    pub resource: String,
    /// The path `drbdadm sh-dev` gave (field `device`).
    pub dev_path: Option<String>,
    /// Whether this add promoted the resource to Primary.
    pub promoted: bool,
    pub device: Option<Device>,
}

/// One remove record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Loop(Loop),
    Vnd(Vnd),
    Iscsi(Iscsi),
    Nbd(Nbd),
    Drbd(Drbd),
    Phy(Phy),
}

/// Why a record could not be encoded, decoded, saved, loaded or deleted.
#[derive(Debug)]
pub enum RecordError {
    /// A line without `=`.
    Line(String),
    /// A key given twice.
    Duplicate(String),
    /// No `kind`, or one this release does not know.
    Kind(Option<String>),
    /// A required field is missing.
    Missing(&'static str),
    /// A field's value does not parse.
    Bad { field: &'static str, value: String },
    /// A value holds a newline and cannot be stored.
    Unstorable(&'static str),
    /// The record file exists but does not decode.
    Corrupt {
        path: PathBuf,
        source: Box<RecordError>,
    },
    /// The file system refused: `op` says what we were doing.
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Line(l) => write!(f, "malformed record line {l:?}"),
            RecordError::Duplicate(k) => write!(f, "record field {k:?} given twice"),
            RecordError::Kind(None) => f.write_str("record has no kind"),
            RecordError::Kind(Some(k)) => write!(f, "record of unknown kind {k:?}"),
            RecordError::Missing(k) => write!(f, "record has no {k}"),
            RecordError::Bad { field, value } => write!(f, "bad {field} {value:?}"),
            RecordError::Unstorable(k) => write!(f, "record field {k:?} cannot be stored"),
            RecordError::Corrupt { path, .. } => {
                write!(f, "corrupt remove record {}", path.display())
            }
            RecordError::Io { op, path, .. } => write!(f, "cannot {op} {}", path.display()),
        }
    }
}

impl std::error::Error for RecordError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RecordError::Corrupt { source, .. } => Some(source.as_ref()),
            RecordError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Fields on their way to text: sorted by key, as earlier releases wrote them.
struct Out(BTreeMap<&'static str, String>);

impl Out {
    fn put(&mut self, k: &'static str, v: impl Into<String>) {
        self.0.insert(k, v.into());
    }

    fn opt(&mut self, k: &'static str, v: Option<impl ToString>) {
        if let Some(v) = v {
            self.0.insert(k, v.to_string());
        }
    }

    fn lease(&mut self, l: Option<&Lease>) {
        if let Some(l) = l {
            self.put("lease-lockspace", l.lockspace.as_str());
            self.put("lease-host-id", l.host_id.to_string());
            self.put("lease-dir", l.dir.to_string_lossy());
            self.put("lease-hash", l.hash.as_str());
            self.put("lease-kind", l.kind.as_str());
            self.put("lease-vm", l.vm.as_str());
            self.put("lease-holder", l.holder.as_str());
        }
    }

    fn device(&mut self, d: Option<&Device>) {
        if let Some(d) = d {
            self.put("node", d.path.as_str());
            self.put("rdev", d.rdev.to_linux_hex());
            self.opt("diskseq", d.diskseq.map(|s| format!("{s:x}")));
        }
    }
}

/// Fields on their way from text.
struct In<'t>(BTreeMap<&'t str, &'t str>);

impl<'t> In<'t> {
    fn opt<T>(
        &self,
        k: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, RecordError> {
        match self.0.get(k) {
            None => Ok(None),
            Some(v) => parse(v).map(Some).ok_or_else(|| RecordError::Bad {
                field: k,
                value: (*v).to_string(),
            }),
        }
    }

    fn req<T>(
        &self,
        k: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, RecordError> {
        self.opt(k, parse)?.ok_or(RecordError::Missing(k))
    }

    fn text(&self, k: &'static str) -> Option<String> {
        self.0.get(k).map(|v| (*v).to_string())
    }

    /// The `lease-*` fields: `lease-hash` says whether there is a lease; then every field
    /// is required.
    fn lease(&self) -> Result<Option<Lease>, RecordError> {
        let Some(hash) = self.opt("lease-hash", lease_hash)? else {
            return Ok(None);
        };
        Ok(Some(Lease {
            lockspace: self.req("lease-lockspace", lockspace)?,
            host_id: self.req("lease-host-id", dec)?,
            dir: self.req("lease-dir", |s| {
                s.starts_with('/').then(|| PathBuf::from(s))
            })?,
            hash,
            kind: self.req("lease-kind", LeaseKind::parse)?,
            vm: self.req("lease-vm", |s| Some(s.to_string()))?,
            holder: self.req("lease-holder", |s| Some(s.to_string()))?,
        }))
    }

    /// `node`, `rdev` and `diskseq`: all absent, or `node` and `rdev` both present.
    fn device(&self) -> Result<Option<Device>, RecordError> {
        let path = self.text("node");
        let rdev = self.opt("rdev", DevNum::parse_linux_hex)?;
        let diskseq = self.opt("diskseq", hex_u64)?;
        match (path, rdev) {
            (Some(path), Some(rdev)) => Ok(Some(Device {
                path,
                rdev,
                diskseq,
            })),
            (None, None) if diskseq.is_none() => Ok(None),
            (None, _) => Err(RecordError::Missing("node")),
            (Some(_), None) => Err(RecordError::Missing("rdev")),
        }
    }
}

fn hex_u64(s: &str) -> Option<u64> {
    // `from_str_radix` takes a sign; what we write never has one.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

fn dec<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// 64 lower-case hex digits (`lease::Identity::hash`).
fn lease_hash(s: &str) -> Option<String> {
    (s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| s.to_string())
}

/// A sanlock name (`SANLK_NAME_LEN`, 48 bytes) as `lease::config::check_name` accepts it.
fn lockspace(s: &str) -> Option<String> {
    (!s.is_empty()
        && s.len() <= 48
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
    .then(|| s.to_string())
}

fn mode(s: &str) -> Option<Mode> {
    [Mode::Read, Mode::Write, Mode::Force]
        .into_iter()
        .find(|m| m.as_str() == s)
}

fn flag(s: &str) -> Option<bool> {
    match s {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// `<linux hex dev>:<decimal ino>` (the device number itself holds a `:`).
fn loop_backing(s: &str) -> Option<(DevNum, u64)> {
    let (d, i) = s.rsplit_once(':')?;
    Some((DevNum::parse_linux_hex(d)?, dec(i)?))
}

fn vnd_backing(s: &str) -> Option<(u64, u64)> {
    let (d, i) = s.split_once(':')?;
    Some((dec(d)?, dec(i)?))
}

impl Record {
    /// The `kind` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Loop(_) => "loop",
            Record::Vnd(_) => "vnd",
            Record::Iscsi(_) => "iscsi",
            Record::Nbd(_) => "nbd",
            Record::Drbd(_) => "drbd",
            Record::Phy(_) => "phy",
        }
    }

    /// The cluster lease the record names (`loop` and `phy` records may name one).
    pub fn lease(&self) -> Option<&Lease> {
        match self {
            Record::Loop(r) => r.lease.as_ref(),
            Record::Phy(r) => Some(&r.lease),
            _ => None,
        }
    }

    /// Names `lease` in the record. Errors (`Unstorable`) for the kinds that cannot carry a
    /// lease: only `block`'s devices take one, and only `loop` and `phy` records keep it.
    pub fn set_lease(&mut self, lease: Lease) -> Result<(), RecordError> {
        match self {
            Record::Loop(r) => r.lease = Some(lease),
            Record::Phy(r) => r.lease = lease,
            _ => return Err(RecordError::Unstorable("lease-hash")),
        }
        Ok(())
    }

    /// The backend path the record was made for, when it says.
    pub fn backend(&self) -> Option<&str> {
        match self {
            Record::Loop(r) => r.backend.as_deref(),
            Record::Vnd(r) => r.backend.as_deref(),
            Record::Iscsi(r) => r.backend.as_deref(),
            Record::Nbd(r) => r.backend.as_deref(),
            Record::Drbd(r) => r.backend.as_deref(),
            Record::Phy(r) => r.backend.as_deref(),
        }
    }

    /// The file's text. Errors (`Unstorable`) when a value holds a newline.
    pub fn encode(&self) -> Result<String, RecordError> {
        let mut o = Out(BTreeMap::new());
        o.put("kind", self.kind());
        o.opt("backend", self.backend());
        match self {
            Record::Loop(r) => {
                o.opt("params", r.params.as_deref());
                o.put(
                    "backing",
                    format!("{}:{}", r.backing.0.to_linux_hex(), r.backing.1),
                );
                o.device(Some(&r.device));
                o.lease(r.lease.as_ref());
            }
            Record::Vnd(r) => {
                o.opt("params", r.params.as_deref());
                o.put("backing", format!("{}:{}", r.backing.0, r.backing.1));
                o.put("unit", r.unit.to_string());
                o.opt("node", r.node.as_deref());
            }
            Record::Iscsi(r) => {
                o.put("iqn", r.iqn.as_str());
                o.put("portal", r.portal.to_string());
                o.put("lun", r.lun.to_string());
                o.put("mode", r.mode.as_str());
                o.opt("iface", r.iface.as_deref());
                o.opt("sid", r.sid);
                o.opt("multipath", r.multipath.as_deref());
                o.device(r.device.as_ref());
            }
            Record::Nbd(r) => {
                o.opt("server", r.server.as_deref());
                o.put("device", r.nbd.as_str());
                o.opt("pid", r.pid);
                o.device(r.device.as_ref());
            }
            Record::Drbd(r) => {
                o.put("resource", r.resource.as_str());
                // `device` in earlier releases' records; the published device is `node`.
                o.opt("device", r.dev_path.as_deref());
                if r.promoted {
                    o.put("promoted", "1");
                }
                o.device(r.device.as_ref());
            }
            Record::Phy(r) => {
                o.opt("params", r.params.as_deref());
                o.lease(Some(&r.lease));
            }
        }
        let mut s = String::new();
        for (k, v) in &o.0 {
            if v.contains('\n') {
                return Err(RecordError::Unstorable(k));
            }
            s.push_str(k);
            s.push('=');
            s.push_str(v);
            s.push('\n');
        }
        Ok(s)
    }

    /// Reads a record's text, by the policy in the module doc.
    pub fn decode(text: &str) -> Result<Record, RecordError> {
        let mut fields = BTreeMap::new();
        // Split on '\n' only: `lines()` would also eat a '\r' ending a value, and what
        // `encode` wrote must read back the same (found by fuzz/record, then named state_record).
        for line in text.split('\n').filter(|l| !l.is_empty()) {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| RecordError::Line(line.to_string()))?;
            if fields.insert(k, v).is_some() {
                return Err(RecordError::Duplicate(k.to_string()));
            }
        }
        let f = In(fields);
        let backend = f.text("backend");
        Ok(match f.0.get("kind").copied() {
            Some("loop") => Record::Loop(Loop {
                backend,
                params: f.text("params"),
                backing: f.req("backing", loop_backing)?,
                device: f.device()?.ok_or(RecordError::Missing("node"))?,
                lease: f.lease()?,
            }),
            Some("vnd") => Record::Vnd(Vnd {
                backend,
                params: f.text("params"),
                backing: f.req("backing", vnd_backing)?,
                unit: f.req("unit", dec)?,
                node: f.text("node"),
            }),
            Some("iscsi") => Record::Iscsi(Iscsi {
                backend,
                iqn: f.req("iqn", |s| Some(s.to_string()))?,
                portal: f.req("portal", |s| s.parse().ok())?,
                lun: f.req("lun", dec)?,
                mode: f.req("mode", mode)?,
                iface: f.text("iface"),
                sid: f.opt("sid", dec)?,
                multipath: f.text("multipath"),
                device: f.device()?,
            }),
            Some("nbd") => Record::Nbd(Nbd {
                backend,
                server: f.text("server"),
                nbd: f.req("device", |s| Some(s.to_string()))?,
                pid: f.opt("pid", dec)?,
                device: f.device()?,
            }),
            Some("drbd") => Record::Drbd(Drbd {
                backend,
                resource: f.req("resource", |s| Some(s.to_string()))?,
                dev_path: f.text("device"),
                promoted: f.opt("promoted", flag)?.unwrap_or(false),
                device: f.device()?,
            }),
            Some("phy") => Record::Phy(Phy {
                backend,
                params: f.text("params"),
                lease: f.lease()?.ok_or(RecordError::Missing("lease-hash"))?,
            }),
            k => return Err(RecordError::Kind(k.map(str::to_string))),
        })
    }
}

/// Where the records live (`paths::record_dir`: the test-only override, else `RECORD_DIR`).
pub fn dir() -> PathBuf {
    crate::paths::record_dir()
}

fn path_for(key: &str) -> PathBuf {
    dir().join(key)
}

/// Writes the record for `key` (a `BackendPath::record_key`) atomically: a temporary
/// file, synced, then renamed over the old record. Nothing is left behind on error.
pub fn save(key: &str, rec: &Record) -> Result<(), RecordError> {
    let dir = dir();
    fs::create_dir_all(&dir).map_err(|source| RecordError::Io {
        op: "create",
        path: dir.clone(),
        source,
    })?;
    let text = rec.encode()?;
    let path = dir.join(key);
    let tmp = dir.join(format!(".{key}.{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    };
    write().map_err(|source| {
        let _ = fs::remove_file(&tmp);
        RecordError::Io {
            op: "save remove record",
            path,
            source,
        }
    })
}

/// The record for `key`; `None` when there is none. A record that does not decode is an
/// error (`Corrupt`), never `None`.
pub fn load(key: &str) -> Result<Option<Record>, RecordError> {
    let path = path_for(key);
    match fs::read_to_string(&path) {
        Ok(t) => Record::decode(&t)
            .map(Some)
            .map_err(|e| RecordError::Corrupt {
                path,
                source: Box::new(e),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RecordError::Io {
            op: "read",
            path,
            source,
        }),
    }
}

/// Deletes the record for `key`; one already gone is not an error.
pub fn delete(key: &str) -> Result<(), RecordError> {
    let path = path_for(key);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RecordError::Io {
            op: "delete",
            path,
            source,
        }),
    }
}

/// Every record but `own_key`'s, with its key. Temporary files of a save in progress
/// and records that do not read are left out: this serves the helpers' question "who
/// else uses this session", where an unreadable record can name no one.
pub fn others(own_key: &str) -> Vec<(String, Record)> {
    let Ok(entries) = fs::read_dir(dir()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name.starts_with('.') || name == own_key {
            continue;
        }
        if let Ok(Some(rec)) = load(&name) {
            out.push((name, rec));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> Device {
        Device {
            path: "/dev/sdb".into(),
            rdev: DevNum::new(8, 16),
            diskseq: Some(0x2a),
        }
    }

    fn lease(kind: LeaseKind) -> Lease {
        Lease {
            lockspace: "pool".into(),
            host_id: 7,
            dir: "/srv/l".into(),
            hash: "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881".into(),
            kind,
            vm: "0f0e".into(),
            holder: "backend-vbd-5-51712".into(),
        }
    }

    fn every_kind() -> Vec<Record> {
        vec![
            Record::Loop(Loop {
                backend: Some("backend/vbd/5/51712".into()),
                params: Some("/srv/a b=c.img\r".into()),
                backing: (DevNum::new(0xfe, 0), 1234),
                device: Device {
                    path: "/dev/loop3".into(),
                    rdev: DevNum::new(7, 3),
                    diskseq: None,
                },
                lease: None,
            }),
            Record::Loop(Loop {
                backend: Some("backend/vbd/5/51713".into()),
                params: Some("/srv/b.img".into()),
                backing: (DevNum::new(0xfe, 0), 1235),
                device: Device {
                    path: "/dev/loop4".into(),
                    rdev: DevNum::new(7, 4),
                    diskseq: Some(9),
                },
                lease: Some(lease(LeaseKind::Shared)),
            }),
            Record::Phy(Phy {
                backend: Some("backend/vbd/5/51714".into()),
                params: Some("/dev/sdb".into()),
                lease: lease(LeaseKind::Exclusive),
            }),
            Record::Vnd(Vnd {
                backend: Some("backend/vbd/5/768".into()),
                params: Some("/srv/img".into()),
                backing: (113, 12),
                unit: 1,
                node: Some("/dev/vnd1d".into()),
            }),
            Record::Iscsi(Iscsi {
                backend: Some("backend/vbd/7/768".into()),
                iqn: "iqn.2003-01.org.example:disk1".into(),
                portal: "[fd00::1]:3260".parse().unwrap(),
                lun: 3,
                mode: Mode::Read,
                iface: Some("iface0".into()),
                sid: Some(4),
                multipath: Some("mpatha".into()),
                device: Some(dev()),
            }),
            Record::Iscsi(Iscsi {
                backend: None,
                iqn: "iqn.x".into(),
                portal: "192.0.2.1:3260".parse().unwrap(),
                lun: 0,
                mode: Mode::Force,
                iface: None,
                sid: None,
                multipath: None,
                device: None,
            }),
            Record::Nbd(Nbd {
                backend: Some("backend/vbd/8/768".into()),
                server: Some("nbd://h:10809/e".into()),
                nbd: "/dev/nbd0".into(),
                pid: Some(4242),
                device: Some(dev()),
            }),
            Record::Drbd(Drbd {
                backend: Some("backend/vbd/9/768".into()),
                resource: "r0/1".into(),
                dev_path: Some("/dev/drbd7".into()),
                promoted: true,
                device: Some(Device {
                    diskseq: None,
                    ..dev()
                }),
            }),
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        for r in every_kind() {
            let text = r.encode().unwrap();
            assert_eq!(Record::decode(&text).unwrap(), r, "{text}");
            assert!(text.contains(&format!("kind={}\n", r.kind())));
        }
    }

    #[test]
    fn the_format_of_earlier_releases_reads() {
        // As the release before typed records wrote them (fuzz/seeds/record/rec).
        let old = "backend=backend/vbd/5/51712\nbacking=fe:0:1234\ndiskseq=2a\nkind=loop\n\
                   node=/dev/loop3\nparams=/srv/a b=c.img\nrdev=7:3\n";
        let r = Record::decode(old).unwrap();
        let Record::Loop(l) = &r else { panic!("{r:?}") };
        assert_eq!(l.backing, (DevNum::new(0xfe, 0), 1234));
        assert_eq!(l.device.diskseq, Some(0x2a));
        // And is written back byte for byte.
        assert_eq!(r.encode().unwrap(), old);
        let iscsi = "backend=backend/vbd/7/768\niqn=iqn.x\nkind=iscsi\nlun=0\nmode=r\n\
                     node=/dev/sdc\nportal=192.0.2.1:3260\nrdev=8:20\nsid=3\n";
        assert_eq!(Record::decode(iscsi).unwrap().encode().unwrap(), iscsi);
        let drbd = "backend=b\ndevice=/dev/drbd7\nkind=drbd\nnode=/dev/drbd7\npromoted=1\n\
                    rdev=93:7\nresource=r0\n";
        assert_eq!(Record::decode(drbd).unwrap().encode().unwrap(), drbd);
    }

    #[test]
    fn the_fuzz_seeds_read_and_write_back_byte_for_byte() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/record");
        for name in ["rec", "vnd", "iscsi", "nbd", "drbd", "phy", "leased"] {
            let text = fs::read_to_string(format!("{dir}/{name}")).unwrap();
            let r = Record::decode(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(r.encode().unwrap(), text, "{name}");
        }
    }

    #[test]
    fn a_minimal_loop_record_reads() {
        // Remove needs only the loop and the backing file (tests/hostile.rs writes these).
        let r = Record::decode("backing=fe:1:1\nkind=loop\nnode=/dev/null\nrdev=1:3\n").unwrap();
        assert_eq!(r.backend(), None);
    }

    #[test]
    fn hostile_records_are_errors() {
        let loop_ok = "backing=fe:1:1\nkind=loop\nnode=/dev/loop1\nrdev=7:1\n";
        let cases: &[(&str, &str)] = &[
            ("garbage\n", "malformed"),
            ("", "no kind"),
            ("kind=tape\n", "unknown kind"),
            ("kind=loop\nkind=loop\n", "twice"),
            ("backing=fe:1:1\nkind=loop\nnode=/dev/loop1\n", "no rdev"),
            ("backing=fe:1:1\nkind=loop\nrdev=7:1\n", "no node"),
            ("kind=loop\nnode=/dev/loop1\nrdev=7:1\n", "no backing"),
            (
                "backing=fe:1:x\nkind=loop\nnode=/dev/loop1\nrdev=7:1\n",
                "bad backing",
            ),
            (
                "backing=fe:1:-1\nkind=loop\nnode=/dev/loop1\nrdev=7:1\n",
                "bad backing",
            ),
            (
                "backing=fe:1:1\nkind=loop\nnode=/dev/loop1\nrdev=7\n",
                "bad rdev",
            ),
            ("backing=1:2\nkind=vnd\nunit=+1\n", "bad unit"),
            ("backing=1:2\nkind=vnd\nunit=4294967296\n", "bad unit"),
            ("backing=0x1:2\nkind=vnd\nunit=1\n", "bad backing"),
            (
                "iqn=i\nkind=iscsi\nlun=0\nmode=rw\nportal=192.0.2.1:3260\n",
                "bad mode",
            ),
            (
                "iqn=i\nkind=iscsi\nlun=0\nmode=r\nportal=host:3260\n",
                "bad portal",
            ),
            (
                "iqn=i\nkind=iscsi\nlun=0\nmode=r\nportal=192.0.2.1\n",
                "bad portal",
            ),
            ("iqn=i\nkind=iscsi\nmode=r\nportal=192.0.2.1:1\n", "no lun"),
            (
                "iqn=i\nkind=iscsi\nlun=0\nmode=r\nportal=192.0.2.1:1\nsid=x\n",
                "bad sid",
            ),
            ("device=/dev/nbd0\nkind=nbd\npid=1 \n", "bad pid"),
            ("kind=nbd\n", "no device"),
            ("device=/dev/nbd0\ndiskseq=1\nkind=nbd\n", "no node"),
            ("kind=drbd\npromoted=yes\nresource=r0\n", "bad promoted"),
            ("kind=phy\nparams=/dev/sdb\n", "no lease-hash"),
        ];
        for (text, want) in cases {
            let e = Record::decode(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        // A bad diskseq is an error for every kind that records a device, not skipped.
        for text in [
            format!("{loop_ok}diskseq=zz\n"),
            format!("{loop_ok}diskseq=-1\n"),
            "device=/dev/nbd0\ndiskseq=g\nkind=nbd\nnode=/dev/nbd0\nrdev=2b:0\n".to_string(),
            "kind=drbd\nresource=r0\nnode=/dev/drbd0\nrdev=93:0\ndiskseq=\n".to_string(),
        ] {
            let e = Record::decode(&text).unwrap_err().to_string();
            assert!(e.contains("bad diskseq"), "{text:?}: {e}");
        }
        // A lease named by its hash needs every other lease field, each valid.
        let leased = fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/seeds/record/leased"
        ))
        .unwrap();
        for (field, bad, want) in [
            ("lease-hash", "2D71", "bad lease-hash"),
            ("lease-lockspace", "a:b", "bad lease-lockspace"),
            ("lease-host-id", "x", "bad lease-host-id"),
            ("lease-dir", "srv/l", "bad lease-dir"),
            ("lease-kind", "both", "bad lease-kind"),
            ("lease-vm", "", ""),
        ] {
            let text: String = leased
                .lines()
                .map(|l| match l.split_once('=') {
                    Some((k, _)) if k == field && !want.is_empty() => format!("{k}={bad}\n"),
                    Some((k, _)) if k == field => String::new(),
                    _ => format!("{l}\n"),
                })
                .collect();
            let e = Record::decode(&text).unwrap_err().to_string();
            let want = if want.is_empty() { "no lease-vm" } else { want };
            assert!(e.contains(want), "{field}: {e}");
        }
        // Unknown keys are ignored; a '\r' is part of a value.
        let r = Record::decode(&format!("{loop_ok}future=1\n")).unwrap();
        assert_eq!(r, Record::decode(loop_ok).unwrap());
    }

    #[test]
    fn only_loop_and_phy_records_carry_a_lease() {
        let l = lease(LeaseKind::Exclusive);
        for mut r in every_kind() {
            let can = matches!(r, Record::Loop(_) | Record::Phy(_));
            assert_eq!(r.set_lease(l.clone()).is_ok(), can, "{r:?}");
            assert_eq!(r.lease() == Some(&l), can, "{r:?}");
        }
    }

    #[test]
    fn a_newline_cannot_be_stored() {
        let mut r = every_kind().swap_remove(0);
        if let Record::Loop(l) = &mut r {
            l.params = Some("a\nb".into());
        }
        assert!(matches!(r.encode(), Err(RecordError::Unstorable("params"))));
    }
}
