//! `xen-block-hotplug status [--json]`: every disk backend of this domain, then what is
//! wrong. Read-only: no lock, no writes.

use anyhow::Result;
use serde_json::{Value, json};

use super::inventory::{Inventory, Row};
use super::problems::{self, Problem};
use super::table;
use crate::xs::Store;

/// What `status` found.
pub struct Report {
    pub rows: Vec<Row>,
    pub problems: Vec<Problem>,
}

pub fn inspect(store: &dyn Store) -> Result<Report> {
    let inv = Inventory::read(store)?;
    let problems = problems::find(store, &inv)?;
    Ok(Report {
        rows: inv.rows,
        problems,
    })
}

impl Report {
    /// 0 without problems, 1 with.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.problems.is_empty())
    }

    /// `{"backends": [...], "problems": [...]}` (README, "Operator commands").
    pub fn to_json(&self) -> Value {
        json!({
            "backends": self.rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            "problems": self.problems.iter().map(Problem::to_json).collect::<Vec<_>>(),
        })
    }

    /// Problems first, in plain words; then one table row per backend with a second,
    /// indented line for what does not fit in 80 columns.
    pub fn human(&self) -> String {
        let mut out = String::new();
        match self.problems.len() {
            0 => out.push_str("No problems.\n"),
            1 => out.push_str("1 problem:\n"),
            n => out.push_str(&format!("{n} problems:\n")),
        }
        for p in &self.problems {
            out.push_str(&table::wrap(
                &p.message(),
                &format!("* {}: ", p.kind()),
                "    ",
            ));
        }
        out.push('\n');
        if self.rows.is_empty() {
            out.push_str("No disk backends in this domain.\n");
            return out;
        }
        let mut cells: Vec<Vec<String>> = Vec::new();
        let mut details: Vec<String> = Vec::new();
        for r in &self.rows {
            cells.push(vec![
                r.path.clone(),
                r.name.clone().unwrap_or_else(|| "-".into()),
                r.mode.clone().unwrap_or_else(|| "-".into()),
                device_cell(r),
                table::xenbus_state(r.state.as_deref()),
                r.hotplug_status.clone().unwrap_or_else(|| "-".into()),
            ]);
            details.push(detail(r));
        }
        let t = table::table(
            &["BACKEND", "DOMAIN", "MODE", "DEVICE", "STATE", "HOTPLUG"],
            &cells,
        );
        let mut lines = t.lines();
        if let Some(h) = lines.next() {
            out.push_str(h);
            out.push('\n');
        }
        for (l, d) in lines.zip(details) {
            out.push_str(l);
            out.push('\n');
            out.push_str(&table::wrap(&d, "    ", "      "));
        }
        out
    }
}

fn device_cell(r: &Row) -> String {
    match (&r.physical_device_path, r.dev) {
        (Some(p), Some(_)) => p.clone(),
        (_, Some(d)) => d.to_string(),
        (Some(p), None) => p.clone(),
        (None, None) => "-".into(),
    }
}

fn detail(r: &Row) -> String {
    let mut parts = vec![format!(
        "params {}",
        r.params.as_deref().unwrap_or("(unset)")
    )];
    if let Some(d) = r.dev {
        parts.push(format!("device {d}"));
    }
    if let Some(b) = &r.info.loop_backing
        && r.params.as_deref() != Some(b.as_str())
    {
        parts.push(format!("loop over {b}"));
    }
    if r.record.is_some() {
        parts.push("remove record kept".into());
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::probe::{DeviceInfo, LockHolder};
    use crate::devnum::DevNum;

    fn row(dom: u32, params: &str, dev: Option<DevNum>) -> Row {
        Row {
            path: format!("backend/vbd/{dom}/51712"),
            kind: "vbd".into(),
            dom: dom.to_string(),
            domain: Some(dom),
            devid: "51712".into(),
            name: Some(format!("guest{dom}")),
            params: Some(params.into()),
            mode: Some("w".into()),
            ty: Some("phy".into()),
            state: Some("4".into()),
            hotplug_status: Some("connected".into()),
            physical_device: dev.map(|d| d.to_linux_hex()),
            physical_device_path: dev.map(|_| "/dev/loop3".into()),
            diskseq: Some("2a".into()),
            dev,
            info: DeviceInfo {
                diskseq: Some(42),
                loop_backing: Some(params.into()),
            },
            record: Some("backend-vbd-5-51712".into()),
        }
    }

    fn report() -> Report {
        let d = DevNum::new(7, 3);
        Report {
            rows: vec![
                row(5, "/srv/images/web.img", Some(d)),
                row(6, "/srv/images/web.img", Some(d)),
            ],
            problems: vec![
                Problem::SharedWritable {
                    disk: "/srv/images/web.img".into(),
                    device: Some(d),
                    backends: vec![
                        problems::Involved {
                            backend: "backend/vbd/5/51712".into(),
                            domain: Some(5),
                            mode: Some("w".into()),
                        },
                        problems::Involved {
                            backend: "backend/vbd/6/51712".into(),
                            domain: Some(6),
                            mode: Some("w".into()),
                        },
                    ],
                },
                Problem::LockHeld {
                    lock: "/var/run/xen-hotplug/block".into(),
                    holder: LockHolder {
                        pid: 4242,
                        alive: false,
                        open_by: vec![(4240, "bash".into())],
                        held_for: std::time::Duration::from_secs(75),
                    },
                },
            ],
        }
    }

    #[test]
    fn json_has_the_documented_shape() {
        let v = report().to_json();
        let b = &v["backends"][0];
        assert_eq!(b["path"], "backend/vbd/5/51712");
        assert_eq!(b["domain"], 5);
        assert_eq!(b["name"], "guest5");
        assert_eq!(b["device"], "7:3");
        assert_eq!(b["device_path"], "/dev/loop3");
        assert_eq!(b["backing_file"], "/srv/images/web.img");
        assert_eq!(b["hotplug_status"], "connected");
        assert_eq!(b["record"], true);
        let keys: Vec<&String> = b.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "backing_file",
                "device",
                "device_path",
                "devid",
                "diskseq",
                "domain",
                "hotplug_status",
                "kind",
                "mode",
                "name",
                "params",
                "path",
                "record",
                "state",
                "type"
            ]
        );
        let p = &v["problems"][0];
        assert_eq!(p["kind"], "shared-writable");
        assert_eq!(p["backends"][1]["backend"], "backend/vbd/6/51712");
        assert_eq!(p["backends"][1]["domain"], 6);
        assert!(p["message"].as_str().unwrap().contains("domain 5"));
        let l = &v["problems"][1];
        assert_eq!(l["kind"], "lock-held");
        assert_eq!(l["pid"], 4242);
        assert_eq!(l["seconds"], 75);
        assert_eq!(l["open_by"][0], 4240);
        // Serialised on one line, parseable back.
        let text = v.to_string();
        assert!(!text.contains('\n'));
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
    }

    #[test]
    fn human_output_puts_problems_first_and_fits_80_columns() {
        let h = report().human();
        let first: Vec<&str> = h.lines().take(2).collect();
        assert_eq!(first[0], "2 problems:");
        assert!(first[1].starts_with("* shared-writable: /srv/images/web.img (7:3) is used"));
        assert!(h.contains("* lock-held: the block lock"));
        assert!(
            h.contains("holder pid 4242 (exited), open by 4240 (bash)"),
            "{h}"
        );
        let table_at = h.find("BACKEND").unwrap();
        assert!(table_at > h.find("lock-held").unwrap());
        for l in h.lines() {
            assert!(
                l.chars().count() <= 80,
                "{} columns: {l:?}",
                l.chars().count()
            );
        }
        assert!(
            h.contains(
                "backend/vbd/5/51712  guest5  w     /dev/loop3  Connected  connected\n    \
             params /srv/images/web.img, device 7:3, remove record kept\n"
            ),
            "{h}"
        );
        let empty = Report {
            rows: vec![],
            problems: vec![],
        };
        assert_eq!(empty.exit_code(), 0);
        assert_eq!(report().exit_code(), 1);
        assert_eq!(
            empty.human(),
            "No problems.\n\nNo disk backends in this domain.\n"
        );
    }
}
