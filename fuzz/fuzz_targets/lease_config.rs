//! The lease configuration file (`/etc/xen/xen-block-hotplug.conf`) and the `lease-*`
//! fields of remove records (issue 15).
//! Invariants: no panic; an accepted `LEASES=sanlock` configuration has a host id in
//! 1..=2000, an absolute `LEASE_DIR` and a lockspace name sanlock can take; a lease a
//! record names is one sanlock can take and encodes and decodes back to itself.
//! Input: text, parsed both as a configuration file and as a remove record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen_block_hotplug::lease::{Config, Leases};
use xen_block_hotplug::record::Record;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Config::parse(s)
        && c.leases == Leases::Sanlock
    {
        assert!((1..=2000).contains(&c.host_id), "{s:?}: {c:?}");
        assert!(c.dir.is_absolute(), "{s:?}: {c:?}");
        assert!(!c.lockspace.is_empty() && c.lockspace.len() <= 48, "{s:?}: {c:?}");
        assert!(!c.lockspace.contains([':', ' ', '\0']), "{s:?}: {c:?}");
    }
    if let Ok(r) = Record::decode(s)
        && let Some(l) = r.lease()
    {
        assert!(l.dir.is_absolute(), "{s:?}: {l:?}");
        assert_eq!(l.hash.len(), 64, "{s:?}: {l:?}");
        assert!(xen_block_hotplug::lease::config::check_name(&l.lockspace).is_ok());
        if let Ok(text) = r.encode() {
            let again = Record::decode(&text).unwrap();
            assert_eq!(again.lease(), Some(l), "{s:?}");
        }
    }
});
