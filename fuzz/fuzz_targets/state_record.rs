//! Remove records (`/run/xen-hotplug/xen-block-hotplug/<key>`).
//! Invariants: no panic; a record that renders parses back to itself, and a parsed record
//! renders and parses back to itself: what add wrote is what remove reads.
//! Input: text to parse; also read as key/value pairs split on NUL to build a record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen_block_hotplug::state::Record;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = Record::parse(s)
        && let Ok(text) = r.render()
    {
        assert_eq!(Record::parse(&text).unwrap(), r, "{s:?} -> {text:?}");
    }
    let mut r = Record::default();
    let mut f = s.split('\0');
    while let (Some(k), Some(v)) = (f.next(), f.next()) {
        r.set(k, v);
    }
    if let Ok(text) = r.render() {
        assert_eq!(Record::parse(&text).unwrap(), r, "{r:?} -> {text:?}");
    }
});
