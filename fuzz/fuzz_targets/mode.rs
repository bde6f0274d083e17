//! The `mode` node: ours parsed strictly, other backends' leniently.
//! Invariants: no panic; a mode we accept reads the same when another backend has it;
//! another backend's mode counts as read-only only when it cannot write (no `w`, only
//! `r`, `o` and `!`), so guessing always leans to refusing a share.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen_block_hotplug::mode::Mode;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = Mode::parse_request(s) {
        assert_eq!(Mode::canonicalise_other(Some(s)), m, "{s:?}");
        assert!(matches!(s, "r" | "ro" | "w" | "rw" | "w!" | "rw!"), "{s:?}");
    }
    let other = Mode::canonicalise_other(Some(s));
    if !other.writable() {
        assert!(
            !s.is_empty() && s.bytes().all(|b| matches!(b, b'r' | b'o' | b'!')),
            "{s:?}"
        );
    }
    if s.contains('w') {
        assert!(other.writable(), "{s:?}");
    }
    assert_eq!(Mode::canonicalise_other(Some(other.as_str())), other);
});
