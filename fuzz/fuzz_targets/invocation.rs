//! The calling conventions (Linux env + argv, NetBSD, FreeBSD) and the backend path.
//! Input: NUL-separated fields; the first three are XENBUS_PATH, XENBUS_TYPE and
//! XENBUS_BASE_PATH (an empty field is unset), the rest argv.
//! Invariants: no panic; every accepted backend path is in the backend tree, has no `..`
//! or empty component, agrees with its own ids, and gives a state key that is one plain
//! file name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen_block_hotplug::invocation::{
    BackendPath, LinuxEnv, Request, UsageError, parse_freebsd, parse_linux, parse_netbsd,
};

fn check(b: &BackendPath) {
    let p = b.path.as_str();
    assert!(!p.split('/').any(|c| c == ".." || c == "."), "{p:?}");
    let rel = match p.strip_prefix("/local/domain/") {
        Some(r) => r.split_once('/').expect("domain id then the rest").1,
        None => {
            assert!(!p.starts_with('/'), "{p:?}");
            p
        }
    };
    assert!(!rel.split('/').any(str::is_empty), "{p:?}");
    assert!(
        p.starts_with(&b.type_dir),
        "{p:?} not under {:?}",
        b.type_dir
    );
    assert_eq!(
        p.strip_prefix(&b.type_dir).unwrap(),
        format!("/{}/{}", b.frontend, b.devid),
        "{p:?}"
    );
    let key = b.record_key();
    assert!(
        !key.is_empty() && !key.contains('/') && !key.starts_with('.'),
        "{key:?}"
    );
    assert!(!key.contains('\0') && !key.contains('\n'), "{key:?}");
    assert!(b.node("x").starts_with(p));
}

fn outcome(r: Result<Request, UsageError>) {
    match r {
        Ok(Request::Run { backend, .. }) => check(&backend),
        Ok(Request::Nothing { state }) => assert!(state.bytes().all(|b| b.is_ascii_digit())),
        Err(UsageError { backend, .. }) => {
            if let Some(b) = backend {
                check(&b);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut f = s.split('\0');
    let opt = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(str::to_string);
    let env = LinuxEnv {
        xenbus_path: opt(f.next()),
        xenbus_type: opt(f.next()),
        xenbus_base_path: opt(f.next()),
    };
    let args: Vec<String> = f.map(str::to_string).collect();
    outcome(parse_linux(&args, &env));
    outcome(parse_netbsd(&args));
    outcome(parse_freebsd(&args));
    if let Some(p) = &env.xenbus_path {
        let ty = env.xenbus_type.as_deref().unwrap_or("vbd");
        let base = env.xenbus_base_path.as_deref().unwrap_or("backend");
        if let Ok(b) = BackendPath::parse(p, base, ty) {
            check(&b);
        }
    }
});
