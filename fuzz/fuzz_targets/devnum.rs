//! Device number spellings: Linux `physical-device` hex, decimal `major:minor` (mountinfo,
//! sysfs), NetBSD's decimal `dev_t`.
//! Invariants: no panic; what parses re-formats to a value that parses to the same
//! number; our own hex spelling is exactly `stat -c %t:%T` (lower case, unpadded).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen_block_hotplug::devnum::DevNum;
use xen_block_hotplug::platform::netbsd::vnd as netbsd_logic;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(d) = DevNum::parse_linux_hex(s) {
        let hex = d.to_linux_hex();
        assert_eq!(DevNum::parse_linux_hex(&hex), Some(d), "{s:?}");
        assert!(!hex.bytes().any(|b| b.is_ascii_uppercase()), "{hex}");
        let (ma, mi) = hex.split_once(':').unwrap();
        assert!(ma == "0" || !ma.starts_with('0'), "{hex}");
        assert!(mi == "0" || !mi.starts_with('0'), "{hex}");
        assert_eq!(d.to_string(), hex);
    }
    if let Some(d) = DevNum::parse_decimal_pair(s) {
        assert_eq!(
            DevNum::parse_decimal_pair(&format!("{}:{}", d.major, d.minor)),
            Some(d)
        );
    }
    if let Some(d) = netbsd_logic::parse_physical_device(s) {
        let v = netbsd_logic::format_physical_device(d);
        assert_eq!(netbsd_logic::parse_physical_device(&v), Some(d), "{s:?}");
        assert_eq!(
            v.parse::<u64>().unwrap(),
            s.parse::<u64>().unwrap(),
            "{s:?}"
        );
    }
    // Any 8 bytes as a NetBSD dev_t: a split re-encodes to the same value.
    if data.len() >= 8 {
        let raw = u64::from_le_bytes(data[..8].try_into().unwrap());
        if let Some(d) = netbsd_logic::split_dev(raw) {
            assert_eq!(netbsd_logic::makedev(d.major, d.minor), raw);
            let _ = netbsd_logic::overlapping_partitions(d);
            let _ = netbsd_logic::disk_partitions(d);
        }
    }
});
