//! Every disk backend of this domain, with what the kernel and the remove records say
//! about it: the facts `status` shows and `sweep` mends from.
//!
//! Read in four rounds of pipelined requests (the kinds under `backend/`; the domains of
//! each kind; the devices of each domain; eight nodes of every backend, and the `name` of
//! every frontend domain), so a host with a thousand disks costs a few thousand requests
//! in flight together, not a round trip each.

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::{Value, json};

use super::probe::{self, DeviceInfo, RecordFile};
use crate::devnum::DevNum;
use crate::xs::Store;

/// Backend kinds that are not disks: the sharing walk's list, so both see the same kinds.
pub use crate::sharing::NOT_DISKS;

/// The nodes read from every backend, in this order.
const NODES: [&str; 8] = [
    "params",
    "mode",
    "type",
    "state",
    "hotplug-status",
    "physical-device",
    "physical-device-path",
    "diskseq",
];

/// One backend, as found.
#[derive(Clone, Debug, Default)]
pub struct Row {
    /// Relative to this domain, as libxl writes it: `backend/vbd/5/51712`.
    pub path: String,
    pub kind: String,
    /// The frontend domain, as listed (a directory name that is not a domain id stays as
    /// text, and `domain` is `None`).
    pub dom: String,
    pub domain: Option<u32>,
    pub devid: String,
    /// `/local/domain/<id>/name`, when readable.
    pub name: Option<String>,
    pub params: Option<String>,
    pub mode: Option<String>,
    pub ty: Option<String>,
    pub state: Option<String>,
    pub hotplug_status: Option<String>,
    pub physical_device: Option<String>,
    pub physical_device_path: Option<String>,
    /// The backend's `diskseq` node (hex, as `block` writes it).
    pub diskseq: Option<String>,
    /// The device, by the sharing check's rule (`sharing::device_of`).
    pub dev: Option<DevNum>,
    pub info: DeviceInfo,
    /// The key of its remove record, if one exists.
    pub record: Option<String>,
}

impl Row {
    pub fn to_json(&self) -> Value {
        json!({
            "path": self.path,
            "kind": self.kind,
            "domain": self.domain,
            "name": self.name,
            "devid": self.devid,
            "params": self.params,
            "mode": self.mode,
            "type": self.ty,
            "device": self.dev.map(|d| d.to_string()),
            "device_path": self.physical_device_path,
            "backing_file": self.info.loop_backing,
            "state": self.state,
            "hotplug_status": self.hotplug_status,
            "diskseq": self.diskseq,
            "record": self.record.is_some(),
        })
    }

    /// The backend's `diskseq` node as a number (`block` writes it in hex).
    pub fn diskseq_value(&self) -> Option<u64> {
        self.diskseq
            .as_deref()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
    }
}

/// The backends and the records.
pub struct Inventory {
    pub rows: Vec<Row>,
    pub records: Vec<RecordFile>,
}

impl Inventory {
    /// Reads every disk backend of this domain and every remove record. Any listing or
    /// node that cannot be read (other than a domain's `name`) is an error: a partial
    /// inventory must not pass for a whole one.
    pub fn read(store: &dyn Store) -> Result<Inventory> {
        let mut rows = Self::backends(store)?;
        let records = probe::records()?;
        for r in &mut rows {
            if let Some(key) = probe::record_key(&r.path, &r.kind)
                && records.iter().any(|f| f.key == key)
            {
                r.record = Some(key);
            }
        }
        Ok(Inventory { rows, records })
    }

    #[allow(
        clippy::indexing_slicing,
        reason = "values holds NODES.len() entries per row, in row order: chunks_exact of that size"
    )]
    fn backends(store: &dyn Store) -> Result<Vec<Row>> {
        let Some(kinds) = probe::list(store, "backend")? else {
            return Ok(Vec::new());
        };
        let kinds: Vec<String> = kinds
            .into_iter()
            .filter(|k| !NOT_DISKS.contains(&k.as_str()))
            .collect();
        let kind_dirs: Vec<String> = kinds.iter().map(|k| format!("backend/{k}")).collect();
        let mut dom_dirs: Vec<(String, String, String)> = Vec::new();
        for (k, doms) in kinds.iter().zip(probe::list_all(store, &kind_dirs)?) {
            for d in doms.unwrap_or_default() {
                dom_dirs.push((k.clone(), d.clone(), format!("backend/{k}/{d}")));
            }
        }
        let dirs: Vec<String> = dom_dirs.iter().map(|(_, _, p)| p.clone()).collect();
        let mut rows = Vec::new();
        for ((kind, dom, dir), devs) in dom_dirs.iter().zip(probe::list_all(store, &dirs)?) {
            for devid in devs.unwrap_or_default() {
                rows.push(Row {
                    path: format!("{dir}/{devid}"),
                    kind: kind.clone(),
                    dom: dom.clone(),
                    domain: dom.parse().ok(),
                    devid,
                    ..Row::default()
                });
            }
        }
        let paths: Vec<String> = rows
            .iter()
            .flat_map(|r| NODES.iter().map(move |n| format!("{}/{n}", r.path)))
            .collect();
        let values = probe::read_all(store, &paths)?;
        for (r, v) in rows.iter_mut().zip(values.chunks_exact(NODES.len())) {
            r.params = v[0].clone();
            r.mode = v[1].clone();
            r.ty = v[2].clone();
            r.state = v[3].clone();
            r.hotplug_status = v[4].clone();
            r.physical_device = v[5].clone();
            r.physical_device_path = v[6].clone();
            r.diskseq = v[7].clone();
            r.dev = probe::device_of(
                r.physical_device_path.as_deref(),
                r.physical_device.as_deref(),
            );
            if let Some(d) = r.dev {
                r.info = probe::device_info(d);
            }
        }
        let mut doms: Vec<&str> = rows.iter().map(|r| r.dom.as_str()).collect();
        doms.sort_unstable();
        doms.dedup();
        let name_paths: Vec<String> = doms
            .iter()
            .map(|d| format!("/local/domain/{d}/name"))
            .collect();
        let names: BTreeMap<String, Option<String>> = doms
            .iter()
            .map(|d| d.to_string())
            .zip(probe::read_lenient(store, &name_paths))
            .collect();
        for r in &mut rows {
            r.name = names.get(&r.dom).cloned().flatten();
        }
        Ok(rows)
    }
}
