//! `params` of `block-iscsi`, `block-nbd` and `block-drbd`.
//! Invariants: no panic; an error message holds no raw control character (it goes to
//! `hotplug-error`); nothing accepted can be taken for an option by the tool it is passed
//! to (a leading `-`); an accepted portal prints in a form that parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen_block_hotplug::applet::drbd::parse as drbd;
use xen_block_hotplug::applet::iscsi::parse as iscsi;
use xen_block_hotplug::applet::nbd::parse as nbd;

fn clean(e: &str) {
    assert!(
        !e.chars().any(char::is_control),
        "raw control character in {e:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match iscsi::parse_params(s) {
        Ok(p) => {
            assert!(iscsi::valid_iscsi_name(&p.iqn), "{:?}", p.iqn);
            assert!(!p.iqn.starts_with('-'));
            assert_eq!(iscsi::Portal::parse(&p.portal.to_string()), Some(p.portal));
            if let Some(i) = &p.iface {
                assert!(!i.starts_with('-'), "{i:?}");
            }
            let _ = iscsi::by_path_lun(p.lun);
        }
        Err(e) => clean(&e.to_string()),
    }
    match nbd::parse_params(s) {
        Ok(p) => {
            let args = nbd::connect_args(&p, "/dev/nbd0", true);
            // Positional arguments: everything not an option or an option's value.
            let mut i = 0;
            while i < args.len() {
                match args[i].as_str() {
                    "-N" => i += 2,
                    "-u" | "-R" => i += 1,
                    a => {
                        assert!(!a.starts_with('-'), "{a:?} in {args:?} from {s:?}");
                        i += 1;
                    }
                }
            }
            let _ = p.to_string();
        }
        Err(e) => clean(&e.to_string()),
    }
    match drbd::parse_params(s) {
        Ok(r) => {
            assert!(!r.name.starts_with('-'));
            assert_eq!(drbd::parse_params(&r.to_string()), Ok(r));
        }
        Err(e) => clean(&e.to_string()),
    }
});
