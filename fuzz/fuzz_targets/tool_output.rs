//! What the helpers parse from their tools and from the system: `iscsiadm -m session`
//! and discovery output, `multipath -ll`, CHAP credential files, `drbdadm role` and
//! `sh-dev`, nbd sysfs files, NetBSD's `hw.disknames` and `vnd` nodes, and the helpers'
//! `XEN_BLOCK_HOTPLUG_WAIT`.
//! Invariants: no panic; a credentials error never repeats a secret; what parses as a
//! device node or unit re-formats to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen_block_hotplug::applet::drbd::parse as drbd;
use xen_block_hotplug::applet::iscsi::parse as iscsi;
use xen_block_hotplug::applet::nbd::parse as nbd;
use xen_block_hotplug::deadline;
use xen_block_hotplug::devnum::DevNum;
use xen_block_hotplug::platform;
use xen_block_hotplug::platform::netbsd::vnd as nb;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(sessions) = iscsi::parse_sessions(s)
        && let Some(p) = iscsi::Portal::parse("10.0.0.1:3260")
    {
        let _ = iscsi::sessions_of(&sessions, "iqn.2001-04.com.example:disk", &p);
    }
    let _ = iscsi::parse_discovery(s);
    let _ = iscsi::parse_multipath_ll(s);
    if let Some(p) = iscsi::Portal::parse("[fe80::1]:3260") {
        for line in s.lines() {
            let _ = iscsi::by_path_is(line, "iqn.2001-04.com.example:disk", 1, &p);
        }
    }
    match iscsi::parse_credentials(s) {
        Ok(c) => {
            let _ = format!("{c:?}");
        }
        Err(e) => {
            for line in s.lines() {
                if let Some((k, v)) = line.split_once('=')
                    && k.trim().starts_with("password")
                    && v.trim().len() >= 12
                    && v.trim().bytes().all(|b| b.is_ascii_alphanumeric())
                    && v.trim().bytes().any(|b| b.is_ascii_digit())
                    && v.trim().bytes().any(|b| b.is_ascii_uppercase())
                {
                    assert!(!e.to_string().contains(v.trim()), "secret {v:?} in {e:?}");
                }
            }
        }
    }
    let _ = drbd::parse_role(s);
    if let Ok(d) = drbd::parse_sh_dev(s) {
        assert!(d.starts_with('/'));
    }
    if let Some(i) = nbd::device_index(s) {
        assert_eq!(nbd::device_index(&format!("nbd{i}")), Some(i));
    }
    let _ = nbd::parse_pid(s);
    let _ = nbd::parse_size(s);
    let used = nb::vnd_units_in_use(s);
    let nodes = nb::vnd_units_with_nodes(s.split_whitespace());
    for u in nb::free_vnd_units(&nodes, &used) {
        assert!(!used.contains(&u));
        assert_eq!(nb::parse_vnd_node(&nb::vnd_node(u)), Some(u));
    }
    // Both spellings of the `vnd` node: upstream's `/dev/vndNd`, pkgsrc's `vndN`.
    if let Some(u) = nb::parse_vnd_node(s) {
        assert!(s == nb::vnd_node(u) || s == format!("vnd{u}"), "{s:?} -> {u}");
    }
    let _ = platform::expand(s);
    if let Ok(d) = deadline::wait_from_env(Some(s)) {
        assert!(d > std::time::Duration::ZERO && d <= std::time::Duration::from_secs(3600));
        let _ = deadline::secs(d);
    }
    for w in s.split_whitespace() {
        if nb::is_disk_partition(w, s) {
            let _ = nb::sibling_partition(w, DevNum::new(14, 3));
        }
    }
});
