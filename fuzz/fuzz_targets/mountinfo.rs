//! `/proc/self/mountinfo`.
//! Invariants: no panic; a file either parses whole (one mount per non-empty line) or
//! names the line it cannot parse; a parsed line re-parses the same after re-escaping.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen_block_hotplug::mountinfo;

fn escape(s: &str) -> String {
    let mut o = String::new();
    for c in s.chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => o.push_str(&format!("\\{:03o}", c as u32)),
            c => o.push(c),
        }
    }
    o
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match mountinfo::parse(s) {
        Ok(mounts) => {
            assert_eq!(mounts.len(), s.lines().filter(|l| !l.is_empty()).count());
            for m in mounts {
                let line = format!(
                    "1 2 {}:{} / {} {} - fs {} {}",
                    m.dev.major,
                    m.dev.minor,
                    escape(&m.mount_point),
                    if m.read_only { "ro" } else { "rw" },
                    escape(&m.source),
                    "rw"
                );
                // Lossy UTF-8 of odd escapes may differ; the device and flags may not.
                let again = mountinfo::parse_line(&line).expect(&line);
                assert_eq!(again.dev, m.dev);
                assert_eq!(again.read_only, m.read_only);
            }
        }
        Err(line) => assert!(s.lines().any(|l| l == line), "{line:?}"),
    }
});
