//! `xen-block-hotplug explain PATH [--mode r|w] [--frontend DOMID] [--json]`: would
//! `block add` give PATH to a guest, and if not, who holds it. Read-only: no lock, no
//! writes; the verdict is the sharing module's (`probe::holders`), on the candidate
//! devices `block add` would check.

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::probe::{self, Holder, Target};
use super::table;
use crate::devnum::DevNum;
use crate::mode::Mode;
use crate::xs::Store;

/// One holder, as shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shown {
    Mount {
        mount_point: String,
        read_only: bool,
        source: String,
        device: DevNum,
    },
    Guest {
        domain: String,
        name: Option<String>,
        backend: String,
        mode: Option<String>,
        device: DevNum,
    },
    Loop {
        path: String,
        device: DevNum,
        backing_file: String,
    },
    Related {
        device: DevNum,
        of: DevNum,
        relation: &'static str,
    },
}

impl Shown {
    pub fn to_json(&self) -> Value {
        match self {
            Shown::Mount {
                mount_point,
                read_only,
                source,
                device,
            } => json!({
                "kind": "mount",
                "mount_point": mount_point,
                "access": if *read_only { "ro" } else { "rw" },
                "source": source,
                "device": device.to_string(),
            }),
            Shown::Guest {
                domain,
                name,
                backend,
                mode,
                device,
            } => json!({
                "kind": "guest",
                "domain": domain.parse::<u64>().map(Value::from).unwrap_or_else(|_| Value::from(domain.as_str())),
                "name": name,
                "backend": backend,
                "mode": mode,
                "device": device.to_string(),
            }),
            Shown::Loop {
                path,
                device,
                backing_file,
            } => json!({
                "kind": "loop",
                "path": path,
                "device": device.to_string(),
                "backing_file": backing_file,
            }),
            Shown::Related {
                device,
                of,
                relation,
            } => json!({
                "kind": "related",
                "device": device.to_string(),
                "of": of.to_string(),
                "relation": relation,
            }),
        }
    }

    fn human(&self) -> String {
        match self {
            Shown::Mount {
                mount_point,
                read_only,
                source,
                device,
            } => format!(
                "mounted {} in this domain at {mount_point} ({source}, {device})",
                if *read_only {
                    "read-only"
                } else {
                    "read-write"
                }
            ),
            Shown::Guest {
                domain,
                name,
                backend,
                mode,
                device,
            } => format!(
                "domain {domain}{} has it through {backend}, mode {}, device {device}",
                name.as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
                mode.as_deref().unwrap_or("unset")
            ),
            Shown::Loop {
                path,
                device,
                backing_file,
            } => format!("{path} ({device}) is a loop device over {backing_file}"),
            Shown::Related {
                device,
                of,
                relation,
            } => {
                let what = match *relation {
                    "partition" => "a partition of",
                    "whole-disk" => "the whole disk of",
                    _ => "stacked on",
                };
                format!("{device} is {what} {of}")
            }
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Shown::Mount { .. } => "mount",
            Shown::Guest { .. } => "guest",
            Shown::Loop { .. } => "loop",
            Shown::Related { .. } => "related",
        }
    }
}

/// The answer.
pub struct Verdict {
    pub path: String,
    pub mode: Mode,
    pub frontend: Option<u32>,
    pub holders: Vec<Shown>,
    /// A refusal that is not a holder: a read-only file asked read-write.
    pub reason: Option<String>,
}

impl Verdict {
    pub fn grantable(&self) -> bool {
        self.holders.is_empty() && self.reason.is_none()
    }

    pub fn exit_code(&self) -> u8 {
        u8::from(!self.grantable())
    }

    /// `{"grantable": bool, "holders": [...]}` plus `path`, `mode`, `frontend` and, for a
    /// refusal without holders, `reason`.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "path": self.path,
            "mode": self.mode.as_str(),
            "frontend": self.frontend,
            "grantable": self.grantable(),
            "holders": self.holders.iter().map(Shown::to_json).collect::<Vec<_>>(),
        });
        if let (Some(r), Value::Object(m)) = (&self.reason, &mut v) {
            m.insert("reason".into(), r.as_str().into());
        }
        v
    }

    pub fn human(&self) -> String {
        let whom = match self.frontend {
            Some(d) => format!("domain {d}"),
            None => "a new guest".to_string(),
        };
        let how = if self.mode.writable() {
            "read-write"
        } else {
            "read-only"
        };
        let mut out = if self.grantable() {
            table::wrap(
                &format!(
                    "{}: grantable: block add would give it {how} to {whom}.",
                    self.path
                ),
                "",
                "  ",
            )
        } else {
            table::wrap(
                &format!(
                    "{}: busy: block add would refuse it {how} to {whom}.",
                    self.path
                ),
                "",
                "  ",
            )
        };
        if let Some(r) = &self.reason {
            out.push_str(&table::wrap(r, "  ", "  "));
        }
        for h in &self.holders {
            out.push_str(&table::wrap(
                &h.human(),
                &format!("  {:<8}", h.kind()),
                "          ",
            ));
        }
        out
    }
}

/// Judges `path` for a request in `mode` by `frontend` (none: a new guest, Xen's
/// `DOMID_INVALID`, whose VM is no other's).
pub fn explain(
    store: &dyn Store,
    path: &str,
    mode: Mode,
    frontend: Option<u32>,
) -> Result<Verdict> {
    let mut reason = None;
    let (resolved, cands, loops, own) = match probe::target(path)? {
        Target::Block { path, dev } => (path, probe::related_devices(dev), Vec::new(), vec![dev]),
        Target::File {
            path,
            file_dev,
            ino,
            writable,
        } => {
            if mode == Mode::Write && !writable {
                reason = Some(format!(
                    "{path} is read-only (no write permission), and block add will not give \
                     it read-write to a guest."
                ));
            }
            let loops = probe::loops_over(file_dev, ino)?;
            let cands = probe::file_candidates(&loops);
            let own = loops.iter().map(|(_, d)| *d).collect();
            (path, cands, loops, own)
        }
        Target::Other { what } => bail!(
            "not an image file or block device: {what}; block add does not attach it (it \
             hands params of that kind to the block-<type> script the backend's type names)"
        ),
    };
    let fe = frontend.unwrap_or(probe::DOMID_INVALID);
    let uuid = match frontend {
        Some(d) => probe::frontend_uuid(store, d)?,
        None => None,
    };
    let me = probe::no_backend("vbd", fe);
    let found = probe::holders(store, &me, fe, uuid.as_deref(), mode, &cands)?;
    let mounts = if found.iter().any(|h| matches!(h, Holder::Local { .. })) {
        probe::local_mounts()?
    } else {
        Vec::new()
    };
    let mut holders: Vec<Shown> = Vec::new();
    let mut through: Vec<Shown> = Vec::new();
    for h in &found {
        let dev = h.dev();
        holders.push(match h {
            Holder::Local { mount_point, .. } => {
                let m = mounts
                    .iter()
                    .find(|m| m.dev == dev && &m.mount_point == mount_point);
                Shown::Mount {
                    mount_point: mount_point.clone(),
                    read_only: m.is_some_and(|m| m.read_only),
                    source: m.map(|m| m.source.clone()).unwrap_or_default(),
                    device: dev,
                }
            }
            Holder::Guest { domid, backend, .. } => Shown::Guest {
                domain: domid.clone(),
                name: probe::read(store, &format!("/local/domain/{domid}/name"))
                    .ok()
                    .flatten(),
                mode: probe::read(store, &format!("{backend}/mode"))?,
                backend: backend.clone(),
                device: dev,
            },
        });
        // How the holder's device is this disk: a loop over the file, a related device.
        for (lp, ld) in &loops {
            if *ld == dev || probe::related_devices(*ld).contains(&dev) {
                push_new(
                    &mut through,
                    Shown::Loop {
                        path: lp.clone(),
                        device: *ld,
                        backing_file: resolved.clone(),
                    },
                );
            }
        }
        if !own.contains(&dev) {
            let of = own
                .iter()
                .copied()
                .find(|o| probe::related_devices(*o).contains(&dev))
                .or_else(|| own.first().copied());
            if let Some(of) = of {
                push_new(
                    &mut through,
                    Shown::Related {
                        device: dev,
                        of,
                        relation: probe::relation(of, dev),
                    },
                );
            }
        }
    }
    holders.extend(through);
    Ok(Verdict {
        path: resolved,
        mode,
        frontend,
        holders,
        reason,
    })
}

fn push_new(v: &mut Vec<Shown>, s: Shown) {
    if !v.contains(&s) {
        v.push(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy() -> Verdict {
        Verdict {
            path: "/srv/images/web.img".into(),
            mode: Mode::Write,
            frontend: None,
            holders: vec![
                Shown::Guest {
                    domain: "6".into(),
                    name: Some("web".into()),
                    backend: "backend/vbd/6/51712".into(),
                    mode: Some("w".into()),
                    device: DevNum::new(7, 3),
                },
                Shown::Mount {
                    mount_point: "/mnt/x".into(),
                    read_only: true,
                    source: "/dev/loop3".into(),
                    device: DevNum::new(7, 3),
                },
                Shown::Loop {
                    path: "/dev/loop3".into(),
                    device: DevNum::new(7, 3),
                    backing_file: "/srv/images/web.img".into(),
                },
                Shown::Related {
                    device: DevNum::new(8, 1),
                    of: DevNum::new(8, 0),
                    relation: "partition",
                },
            ],
            reason: None,
        }
    }

    #[test]
    fn json_shape() {
        let v = busy().to_json();
        assert_eq!(v["grantable"], false);
        assert_eq!(v["mode"], "w");
        assert_eq!(v["frontend"], Value::Null);
        let h = &v["holders"];
        assert_eq!(h[0]["kind"], "guest");
        assert_eq!(h[0]["domain"], 6, "a number");
        assert_eq!(h[0]["backend"], "backend/vbd/6/51712");
        assert_eq!(h[0]["mode"], "w");
        assert_eq!(h[1]["kind"], "mount");
        assert_eq!(h[1]["access"], "ro");
        assert_eq!(h[2]["kind"], "loop");
        assert_eq!(h[2]["path"], "/dev/loop3");
        assert_eq!(h[3]["kind"], "related");
        assert_eq!(h[3]["relation"], "partition");
        assert!(v.get("reason").is_none());
        let free = Verdict {
            holders: vec![],
            ..busy()
        };
        assert_eq!(free.to_json()["grantable"], true);
        assert_eq!(free.exit_code(), 0);
        let ro = Verdict {
            holders: vec![],
            reason: Some("read-only".into()),
            ..busy()
        };
        assert_eq!(ro.to_json()["grantable"], false);
        assert_eq!(ro.to_json()["reason"], "read-only");
        assert_eq!(ro.exit_code(), 1);
    }

    #[test]
    fn human_lines() {
        let h = busy().human();
        assert_eq!(
            h,
            "/srv/images/web.img: busy: block add would refuse it read-write to a new guest.\n  \
             guest   domain 6 (web) has it through backend/vbd/6/51712, mode w, device 7:3\n  \
             mount   mounted read-only in this domain at /mnt/x (/dev/loop3, 7:3)\n  \
             loop    /dev/loop3 (7:3) is a loop device over /srv/images/web.img\n  \
             related 8:1 is a partition of 8:0\n"
        );
        for l in h.lines() {
            assert!(l.chars().count() <= 80, "{l}");
        }
        let free = Verdict {
            holders: vec![],
            frontend: Some(7),
            mode: Mode::Read,
            ..busy()
        };
        assert_eq!(
            free.human(),
            "/srv/images/web.img: grantable: block add would give it read-only to domain 7.\n"
        );
    }
}
