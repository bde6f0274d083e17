//! Remove records (`/run/xen-hotplug/xen-block-hotplug/<key>`, `record::Record`).
//! Invariants: no panic; a decoded record encodes, and what it encodes decodes back to
//! the same record: what add wrote is what remove reads. A text that decodes keeps
//! decoding the same after one more encode (the format is stable).
//! Input: text to decode; also, split on NUL, values for every field of every kind.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen_block_hotplug::devnum::DevNum;
use xen_block_hotplug::mode::Mode;
use xen_block_hotplug::record::{
    Device, Drbd, Iscsi, Lease, LeaseKind, Loop, Nbd, Phy, Record, Vnd,
};

fn round_trip(r: &Record) {
    match r.encode() {
        Ok(text) => {
            let back = Record::decode(&text).unwrap_or_else(|e| panic!("{r:?} -> {text:?}: {e}"));
            assert_eq!(&back, r, "{text:?}");
            assert_eq!(back.encode().unwrap(), text);
        }
        // Only a newline in a value cannot be stored.
        Err(e) => assert!(format!("{r:?}").contains("\\n"), "{r:?}: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = Record::decode(s) {
        round_trip(&r);
    }
    let mut f = s.split('\0');
    let mut text = || f.next().map(str::to_string);
    let num = |x: &Option<String>| x.as_ref().map_or(0, |t| t.len() as u64 * 977);
    let (a, b, c) = (text(), text(), text());
    let n = num(&a) ^ num(&b).rotate_left(17) ^ num(&c).rotate_left(40);
    let dev = a.clone().map(|path| Device {
        path,
        rdev: DevNum::new(n & 0xfff, n >> 12),
        diskseq: b.as_ref().map(|_| n.rotate_left(7)),
    });
    // Lockspace and hash are checked on decode; the other lease fields are free text.
    let lease = Lease {
        lockspace: "pool".into(),
        host_id: n,
        dir: format!("/{}", a.clone().unwrap_or_default()).into(),
        hash: format!("{:064x}", u128::from(n)),
        kind: [LeaseKind::Exclusive, LeaseKind::Shared][(n & 1) as usize],
        vm: b.clone().unwrap_or_default(),
        holder: c.clone().unwrap_or_default(),
    };
    let mode = [Mode::Read, Mode::Write, Mode::Force][(n % 3) as usize];
    for r in [
        Record::Loop(Loop {
            backend: a.clone(),
            params: b.clone(),
            backing: (DevNum::new(n >> 40, n & 0xffff), n),
            device: Device {
                path: c.clone().unwrap_or_default(),
                rdev: DevNum::new(n >> 3, n >> 5),
                diskseq: None,
            },
            lease: (n & 2 == 2).then(|| lease.clone()),
        }),
        Record::Phy(Phy {
            backend: a.clone(),
            params: c.clone(),
            lease: lease.clone(),
        }),
        Record::Vnd(Vnd {
            backend: c.clone(),
            params: a.clone(),
            backing: (n, !n),
            unit: n as u32,
            node: b.clone(),
        }),
        Record::Iscsi(Iscsi {
            backend: b.clone(),
            iqn: a.clone().unwrap_or_default(),
            portal: std::net::SocketAddr::from(((n as u128).to_be_bytes(), n as u16)),
            lun: n,
            mode,
            iface: c.clone(),
            sid: b.as_ref().map(|_| n as u32),
            multipath: a.clone(),
            device: dev.clone(),
        }),
        Record::Nbd(Nbd {
            backend: a.clone(),
            server: c.clone(),
            nbd: b.clone().unwrap_or_default(),
            pid: Some(n as u32),
            device: dev.clone(),
        }),
        Record::Drbd(Drbd {
            backend: None,
            resource: c.clone().unwrap_or_default(),
            dev_path: a.clone(),
            promoted: n & 1 == 1,
            device: dev.clone(),
        }),
    ] {
        round_trip(&r);
    }
});
