//! `block`'s cluster lease steps (issue 15, README "Cluster leases"), written once over the
//! platform (`Platform::take_lease`, `release_lease`; sanlock on Linux, nothing elsewhere).
//!
//! add: the lease is taken after the local sharing check passed, under the `block` lock,
//! and named in the backend's remove record before the device is published (a `loop`
//! record's `lease-*` fields; for a device handed over as it is, a `phy` record of its
//! own); a failed add gives it back (the lease's drop), a successful one keeps it for the
//! host. remove: the lease the record names is released once the device is detached,
//! also when the backend nodes are gone.

use anyhow::Result;

use crate::backend::Backend;
use crate::platform::{LeaseDisk, Platform, TakenLease};
use crate::record::{self, Record};
use crate::sharing::SharingCheck;

/// The lease of one `add`: none where leases are off (configuration, mode `w!`, OS).
pub struct AddLease(Option<Box<dyn TakenLease>>);

impl AddLease {
    /// Takes the lease on `disk` for the backend `key`, in the mode the frontend asked for
    /// (`w` exclusive, `r` shared). Errors: `busy` when another host holds the disk; an
    /// error when the lease manager cannot be used.
    pub fn take<P: Platform>(
        p: &P,
        disk: LeaseDisk<'_>,
        check: &SharingCheck<P>,
        key: &str,
    ) -> Result<AddLease> {
        Ok(AddLease(p.take_lease(
            disk,
            check.mode,
            // Unknown (missing or unreadable `vm`): "" never matches another host's VM, so
            // there is no handover for it (lease::acquire).
            check.frontend_vm.as_deref().unwrap_or(""),
            key,
        )?))
    }

    /// `rec` naming the lease (unchanged without one), for the remove record.
    pub fn stamp(&self, rec: &Record) -> Result<Record> {
        let mut rec = rec.clone();
        if let Some(l) = &self.0 {
            rec.set_lease(l.record())?;
        }
        Ok(rec)
    }

    /// A device handed over as it is has no remove record otherwise: saves a `phy` record
    /// naming the lease, before the device is published, so that `remove` releases it.
    pub fn save_phy<P: Platform>(&self, p: &P, be: &Backend, key: &str, path: &str) -> Result<()> {
        let Some(l) = &self.0 else {
            return Ok(());
        };
        let rec = Record::Phy(record::Phy {
            backend: Some(be.path.path.clone()),
            params: Some(path.to_string()),
            lease: l.record(),
        });
        p.save_record(key, &rec)
    }

    /// The publish failed after `save_phy`: forgets that record (the drop then gives the
    /// lease back).
    pub fn forget_phy<P: Platform>(&self, p: &P, key: &str) {
        if self.0.is_some() {
            let _ = p.delete_record(key);
        }
    }

    /// The add succeeded: the host keeps the lease after this process exits.
    pub fn keep(self) {
        if let Some(l) = self.0 {
            l.keep();
        }
    }
}

/// `remove` (and add's clean-up of an unfinished earlier attach): releases the lease `rec`
/// names, if any, once its device is detached.
pub fn release<P: Platform>(p: &P, rec: &Record) -> Result<()> {
    match rec.lease() {
        Some(l) => p.release_lease(l),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::path::PathBuf;
    use std::rc::Rc;

    use super::*;
    use crate::devnum::DevNum;
    use crate::record::LeaseKind;

    /// A lease that says whether it was kept or given back (dropped).
    struct Fake(Rc<Cell<&'static str>>);

    impl TakenLease for Fake {
        fn record(&self) -> record::Lease {
            record::Lease {
                lockspace: "pool".into(),
                host_id: 1,
                dir: PathBuf::from("/srv/l"),
                hash: "0".repeat(64),
                kind: LeaseKind::Exclusive,
                vm: "u".into(),
                holder: "backend-vbd-5-768".into(),
            }
        }
        fn keep(self: Box<Self>) {
            self.0.set("kept");
            std::mem::forget(self);
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            self.0.set("given back");
        }
    }

    fn loop_record() -> Record {
        Record::Loop(record::Loop {
            backend: None,
            params: None,
            backing: (DevNum::new(8, 1), 12),
            device: record::Device {
                path: "/dev/loop3".into(),
                rdev: DevNum::new(7, 3),
                diskseq: None,
            },
            lease: None,
        })
    }

    #[test]
    fn the_record_names_the_lease_and_only_a_kept_lease_stays() {
        let state = Rc::new(Cell::new("taken"));
        let l = AddLease(Some(Box::new(Fake(state.clone()))));
        let rec = l.stamp(&loop_record()).unwrap();
        assert_eq!(
            rec.lease().map(|l| l.holder.as_str()),
            Some("backend-vbd-5-768")
        );
        l.keep();
        assert_eq!(state.get(), "kept");
        // A failed add drops its lease: given back.
        let state = Rc::new(Cell::new("taken"));
        drop(AddLease(Some(Box::new(Fake(state.clone())))));
        assert_eq!(state.get(), "given back");
        // Without a lease the record is unchanged.
        assert_eq!(AddLease(None).stamp(&loop_record()).unwrap(), loop_record());
    }
}
