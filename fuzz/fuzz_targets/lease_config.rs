//! The lease configuration file (`/etc/xen/xen-block-hotplug.conf`) and the `lease-*`
//! fields of remove records (issue 15).
//! Invariants: no panic; an accepted `LEASES=sanlock` configuration has a host id in
//! 1..=2000, an absolute `LEASE_DIR` and a lockspace name sanlock can take; a lease a
//! record names stores and loads back to itself.
//! Input: text, parsed both as a configuration file and as a remove record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen_block_hotplug::lease::{Config, Leases, LeaseRecord};
use xen_block_hotplug::state::Record;

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
    if let Ok(r) = Record::parse(s)
        && let Ok(Some(l)) = LeaseRecord::load(&r)
    {
        let mut back = Record::default();
        l.store(&mut back);
        if let Ok(text) = back.render() {
            let again = LeaseRecord::load(&Record::parse(&text).unwrap()).unwrap();
            assert_eq!(again, Some(l), "{s:?}");
        }
    }
});
