//! Differential: another backend's `physical-device` as Linux blkback reads it
//! (`xenbus_scanf(..., "%x:%x")`, then `MKDEV(major, minor)` on a 32-bit `dev_t`) against
//! how the sharing check reads it. Whenever blkback would open a device, the check must
//! see that same device, or it misses a holder and may grant the device twice.
//! Known to fail until the sharing check parses as blkback does (RELIABILITY.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen_block_hotplug::devnum::DevNum;
use xen_block_hotplug::platform::linux as os;

/// The kernel's `vsscanf` for `%x` into an `unsigned int`: blanks skipped, the first
/// character must be a hex digit, a `0x` prefix skipped (even with no digit after it:
/// `_parse_integer_fixup_radix`), the digits wrap, the value is cut to 32 bits, and
/// whatever follows is left for the rest of the format.
fn scan_x(s: &[u8]) -> Option<(u32, &[u8])> {
    let start = s.iter().position(|b| !matches!(b, b' ' | b'\t'..=b'\r'))?;
    let s = &s[start..];
    if !s.first()?.is_ascii_hexdigit() {
        return None;
    }
    let s = match s {
        [b'0', b'x' | b'X', rest @ ..] => rest,
        _ => s,
    };
    let n = s.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let mut v: u64 = 0;
    for b in &s[..n] {
        v = v
            .wrapping_mul(16)
            .wrapping_add(u64::from(char::from(*b).to_digit(16).unwrap()));
    }
    Some((v as u32, &s[n..]))
}

fn blkback(s: &str) -> Option<DevNum> {
    let (ma, rest) = scan_x(s.as_bytes())?;
    let rest = rest.strip_prefix(b":")?;
    let (mi, _) = scan_x(rest)?;
    let dev = (ma << 20) | mi;
    Some(DevNum::new(u64::from(dev >> 20), u64::from(dev & 0xfffff)))
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(opened) = blkback(s) {
        assert_eq!(
            os::parse_physical_device(s),
            Some(opened),
            "blkback opens {opened} for {s:?}"
        );
    }
});
