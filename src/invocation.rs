//! How libxl calls a block script, per OS (interface doc §1.2), parsed without side effects.
//!
//! * Linux: `block add|remove [KEY=VALUE...]` with `XENBUS_PATH` (usually relative,
//!   `backend/vbd/<fe>/<devid>`), `XENBUS_TYPE` and `XENBUS_BASE_PATH` in the environment.
//! * NetBSD: `block <absolute backend path> <xenbus state>`: 2 is add, 6 is remove, any
//!   other state is nothing to do.
//! * FreeBSD: `block <absolute backend path> add|remove`.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Add,
    Remove,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Add => "add",
            Action::Remove => "remove",
        })
    }
}

/// The backend directory a script works on, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendPath {
    /// The path as xenstore requests should name it (relative paths resolve against the
    /// caller's domain home, `/local/domain/0` in dom0).
    pub path: String,
    /// The directory that lists every backend of this type: `<base>/<type>` with the same
    /// prefix as `path`. Its children are frontend domain ids.
    pub type_dir: String,
    /// The frontend domain id, from the path.
    pub frontend: u32,
    /// The device id, from the path.
    pub devid: u32,
}

impl BackendPath {
    /// Validates `path` as `[/local/domain/<n>/]<base>/<type>/<fe>/<devid>`. `base` and
    /// `ty` are what the environment says (`XENBUS_BASE_PATH`, `XENBUS_TYPE`). Nothing else
    /// is accepted: no `..`, no empty components, no other prefix, numeric ids only.
    pub fn parse(path: &str, base: &str, ty: &str) -> Result<BackendPath, String> {
        if !valid_name(ty) {
            return Err(format!("invalid XENBUS_TYPE {ty:?}"));
        }
        let base_parts: Vec<&str> = base.split('/').collect();
        if base.starts_with('/') || base_parts.iter().any(|p| !valid_name(p)) {
            return Err(format!("invalid XENBUS_BASE_PATH {base:?}"));
        }
        let path = path.strip_suffix('/').unwrap_or(path);
        let (prefix, rel) = match path.strip_prefix("/local/domain/") {
            Some(rest) => {
                let (dom, rel) = rest
                    .split_once('/')
                    .ok_or_else(|| format!("backend path {path:?} is not under a domain"))?;
                parse_id(dom).ok_or_else(|| format!("backend path {path:?}: bad domain id"))?;
                (format!("/local/domain/{dom}/"), rel)
            }
            None if path.starts_with('/') => {
                return Err(format!(
                    "backend path {path:?} is not under /local/domain/<id>/"
                ));
            }
            None => (String::new(), path),
        };
        let parts: Vec<&str> = rel.split('/').collect();
        let (fe, dev) = match parts.split_last_chunk::<3>() {
            Some((head, [t, fe, dev])) if head == base_parts.as_slice() && *t == ty => (*fe, *dev),
            _ => {
                return Err(format!(
                    "backend path {path:?} is not of the form {base}/{ty}/<frontend id>/<device id>"
                ));
            }
        };
        let frontend =
            parse_id(fe).ok_or_else(|| format!("backend path {path:?}: bad frontend domain id"))?;
        let devid = parse_id(dev).ok_or_else(|| format!("backend path {path:?}: bad device id"))?;
        Ok(BackendPath {
            path: path.to_string(),
            type_dir: format!("{prefix}{base}/{ty}"),
            frontend,
            devid,
        })
    }

    /// The path of a node of this backend.
    pub fn node(&self, name: &str) -> String {
        format!("{}/{}", self.path, name)
    }

    /// A file-name-safe key for this backend's remove record (`record`), the same for the relative
    /// and the absolute spelling in dom0.
    pub fn record_key(&self) -> String {
        let rel = match self.path.strip_prefix("/local/domain/") {
            Some(rest) => rest.split_once('/').map(|(_, r)| r).unwrap_or(rest),
            None => &self.path,
        };
        rel.replace('/', "-")
    }
}

/// Domain and device ids: decimal, no sign, no leading zeros, fits in u32.
fn parse_id(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What a script invocation asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Run {
        action: Action,
        backend: BackendPath,
    },
    /// A NetBSD state that is neither add nor remove: nothing to do, exit 0.
    Nothing { state: String },
}

/// The environment the Linux convention reads (`XENBUS_*`), as given.
#[derive(Clone, Debug, Default)]
pub struct LinuxEnv {
    pub xenbus_path: Option<String>,
    pub xenbus_type: Option<String>,
    pub xenbus_base_path: Option<String>,
}

/// An invocation that could not be understood. `backend` is set when the backend path was
/// known, so the error can still be reported in `hotplug-error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageError {
    pub message: String,
    pub backend: Option<BackendPath>,
}

/// Linux: the first argument without `=` is the action; `KEY=VALUE` arguments set
/// `XENBUS_PATH`, `XENBUS_TYPE` or `XENBUS_BASE_PATH` as the shell scripts' `evalVariables`
/// does, and any other `KEY=VALUE` is ignored.
pub fn parse_linux(args: &[String], env: &LinuxEnv) -> Result<Request, UsageError> {
    let mut env = env.clone();
    let mut action = None;
    for a in args {
        match a.split_once('=') {
            Some(("XENBUS_PATH", v)) => env.xenbus_path = Some(v.to_string()),
            Some(("XENBUS_TYPE", v)) => env.xenbus_type = Some(v.to_string()),
            Some(("XENBUS_BASE_PATH", v)) => env.xenbus_base_path = Some(v.to_string()),
            Some(_) => {}
            None if action.is_none() => action = Some(a.as_str()),
            None => {}
        }
    }
    let backend = match env.xenbus_path.as_deref() {
        None | Some("") => None,
        Some(p) => Some(BackendPath::parse(
            p,
            env.xenbus_base_path
                .as_deref()
                .filter(|s| !s.is_empty())
                .unwrap_or("backend"),
            env.xenbus_type
                .as_deref()
                .filter(|s| !s.is_empty())
                .unwrap_or("vbd"),
        )),
    };
    let action = match action {
        Some("add") => Ok(Action::Add),
        Some("remove") => Ok(Action::Remove),
        Some(other) => Err(format!("invalid command {other:?}: expected add or remove")),
        None => Err("missing command: expected add or remove".to_string()),
    };
    match (action, backend) {
        (_, None) => Err(UsageError {
            message: "XENBUS_PATH is not set: this script is run by libxl with \
                      XENBUS_PATH=backend/vbd/<domid>/<devid>"
                .to_string(),
            backend: None,
        }),
        (_, Some(Err(message))) => Err(UsageError {
            message,
            backend: None,
        }),
        (Err(message), Some(Ok(backend))) => Err(UsageError {
            message,
            backend: Some(backend),
        }),
        (Ok(action), Some(Ok(backend))) => Ok(Request::Run { action, backend }),
    }
}

/// NetBSD: `<absolute backend path> <state>`.
pub fn parse_netbsd(args: &[String]) -> Result<Request, UsageError> {
    let [path, state] = args else {
        return Err(usage("usage: block <backend path> <xenbus state>"));
    };
    let backend = parse_absolute(path)?;
    match state.as_str() {
        "2" => Ok(Request::Run {
            action: Action::Add,
            backend,
        }),
        "6" => Ok(Request::Run {
            action: Action::Remove,
            backend,
        }),
        s if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => Ok(Request::Nothing {
            state: s.to_string(),
        }),
        s => Err(UsageError {
            message: format!("invalid xenbus state {s:?}"),
            backend: Some(backend),
        }),
    }
}

/// FreeBSD: `<absolute backend path> add|remove`.
pub fn parse_freebsd(args: &[String]) -> Result<Request, UsageError> {
    let [path, action] = args else {
        return Err(usage("usage: block <backend path> add|remove"));
    };
    let backend = parse_absolute(path)?;
    match action.as_str() {
        "add" => Ok(Request::Run {
            action: Action::Add,
            backend,
        }),
        "remove" => Ok(Request::Run {
            action: Action::Remove,
            backend,
        }),
        a => Err(UsageError {
            message: format!("invalid command {a:?}: expected add or remove"),
            backend: Some(backend),
        }),
    }
}

fn parse_absolute(path: &str) -> Result<BackendPath, UsageError> {
    if !path.starts_with("/local/domain/") {
        return Err(usage(&format!(
            "backend path {path:?} must be absolute (/local/domain/...)"
        )));
    }
    BackendPath::parse(path, "backend", "vbd").map_err(|m| usage(&m))
}

fn usage(msg: &str) -> UsageError {
    UsageError {
        message: msg.to_string(),
        backend: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn env(p: &str) -> LinuxEnv {
        LinuxEnv {
            xenbus_path: Some(p.into()),
            ..Default::default()
        }
    }

    #[test]
    fn linux_relative() {
        let r = parse_linux(&s(&["add"]), &env("backend/vbd/5/51712")).unwrap();
        let Request::Run { action, backend } = r else {
            panic!()
        };
        assert_eq!(action, Action::Add);
        assert_eq!(backend.path, "backend/vbd/5/51712");
        assert_eq!(backend.type_dir, "backend/vbd");
        assert_eq!((backend.frontend, backend.devid), (5, 51712));
        assert_eq!(backend.record_key(), "backend-vbd-5-51712");
        assert_eq!(backend.node("params"), "backend/vbd/5/51712/params");
    }

    #[test]
    fn linux_absolute_and_types() {
        let e = LinuxEnv {
            xenbus_path: Some("/local/domain/0/backend/vbd3/7/768/".into()),
            xenbus_type: Some("vbd3".into()),
            xenbus_base_path: Some("backend".into()),
        };
        let Request::Run { backend, .. } = parse_linux(&s(&["remove"]), &e).unwrap() else {
            panic!()
        };
        assert_eq!(backend.path, "/local/domain/0/backend/vbd3/7/768");
        assert_eq!(backend.type_dir, "/local/domain/0/backend/vbd3");
        assert_eq!(backend.record_key(), "backend-vbd3-7-768");
    }

    #[test]
    fn linux_key_value_args() {
        let r = parse_linux(
            &s(&["FOO=bar", "XENBUS_PATH=backend/vbd/1/2", "remove", "extra"]),
            &LinuxEnv::default(),
        )
        .unwrap();
        assert!(matches!(
            r,
            Request::Run {
                action: Action::Remove,
                ..
            }
        ));
    }

    #[test]
    fn linux_errors() {
        let e = parse_linux(&s(&["add"]), &LinuxEnv::default()).unwrap_err();
        assert!(e.message.contains("XENBUS_PATH is not set") && e.backend.is_none());
        let e = parse_linux(&s(&["online"]), &env("backend/vbd/1/2")).unwrap_err();
        assert!(e.message.contains("invalid command \"online\""));
        assert!(e.backend.is_some(), "error must still reach hotplug-error");
        let e = parse_linux(&s(&[]), &env("backend/vbd/1/2")).unwrap_err();
        assert!(e.message.contains("missing command"));
        for bad in [
            "backend/vbd/1",
            "backend/vbd/1/2/3",
            "backend/vbd/../2",
            "backend/vbd/x/2",
            "backend/vbd/1/0x2",
            "backend/vif/1/2",
            "frontend/vbd/1/2",
            "/backend/vbd/1/2",
            "/local/domain/x/backend/vbd/1/2",
            "/etc/passwd",
            "backend//vbd/1/2",
            "backend/vbd/01/2",
            "backend/vbd/-1/2",
            "backend/vbd/99999999999/2",
        ] {
            let e = parse_linux(&s(&["add"]), &env(bad)).unwrap_err();
            assert!(e.backend.is_none(), "{bad}");
        }
        let e = LinuxEnv {
            xenbus_path: Some("backend/vbd/1/2".into()),
            xenbus_type: Some("../x".into()),
            ..Default::default()
        };
        assert!(
            parse_linux(&s(&["add"]), &e)
                .unwrap_err()
                .message
                .contains("XENBUS_TYPE")
        );
    }

    #[test]
    fn netbsd() {
        let p = "/local/domain/0/backend/vbd/3/768";
        assert!(matches!(
            parse_netbsd(&s(&[p, "2"])).unwrap(),
            Request::Run {
                action: Action::Add,
                ..
            }
        ));
        assert!(matches!(
            parse_netbsd(&s(&[p, "6"])).unwrap(),
            Request::Run {
                action: Action::Remove,
                ..
            }
        ));
        assert_eq!(
            parse_netbsd(&s(&[p, "4"])).unwrap(),
            Request::Nothing { state: "4".into() }
        );
        assert!(parse_netbsd(&s(&[p, "x"])).unwrap_err().backend.is_some());
        assert!(parse_netbsd(&s(&["backend/vbd/3/768", "2"])).is_err());
        assert!(parse_netbsd(&s(&[p])).is_err());
        assert!(parse_netbsd(&s(&["add"])).is_err());
    }

    #[test]
    fn freebsd() {
        let p = "/local/domain/0/backend/vbd/3/768";
        assert!(matches!(
            parse_freebsd(&s(&[p, "add"])).unwrap(),
            Request::Run {
                action: Action::Add,
                ..
            }
        ));
        assert!(matches!(
            parse_freebsd(&s(&[p, "remove"])).unwrap(),
            Request::Run {
                action: Action::Remove,
                ..
            }
        ));
        assert!(parse_freebsd(&s(&[p, "2"])).unwrap_err().backend.is_some());
        assert!(parse_freebsd(&s(&["add", p])).is_err());
    }

    #[test]
    fn bsd_edges() {
        let p = "/local/domain/0/backend/vbd/3/768";
        // Every other xenbus state is nothing to do, whatever its number.
        for st in ["0", "1", "3", "4", "5", "7", "99"] {
            assert_eq!(
                parse_netbsd(&s(&[p, st])).unwrap(),
                Request::Nothing { state: st.into() }
            );
        }
        // A driver domain's backend path, with a trailing slash.
        let Request::Run { backend, .. } =
            parse_netbsd(&s(&["/local/domain/4/backend/vbd/3/768/", "2"])).unwrap()
        else {
            panic!()
        };
        assert_eq!(backend.path, "/local/domain/4/backend/vbd/3/768");
        assert_eq!(backend.type_dir, "/local/domain/4/backend/vbd");
        assert_eq!((backend.frontend, backend.devid), (3, 768));
        assert_eq!(backend.record_key(), "backend-vbd-3-768");
        for bad in [
            "/local/domain/0/backend/vbd/3",
            "/local/domain/0/backend/vif/3/0",
            "/local/domain/0/backend/vbd/../768",
            "/local/domain/x/backend/vbd/3/768",
            "/etc/passwd",
        ] {
            let e = parse_netbsd(&s(&[bad, "2"])).unwrap_err();
            assert!(e.backend.is_none(), "{bad}");
            let e = parse_freebsd(&s(&[bad, "add"])).unwrap_err();
            assert!(e.backend.is_none(), "{bad}");
        }
        // Empty or signed states are not states; commands are case-sensitive; extra
        // arguments are refused.
        assert!(parse_netbsd(&s(&[p, ""])).unwrap_err().backend.is_some());
        assert!(parse_netbsd(&s(&[p, "-2"])).unwrap_err().backend.is_some());
        assert!(parse_netbsd(&s(&[p, "2", "x"])).is_err());
        assert!(
            parse_freebsd(&s(&[p, "Add"]))
                .unwrap_err()
                .backend
                .is_some()
        );
        assert!(parse_freebsd(&s(&[p, "add", "x"])).is_err());
        assert!(parse_freebsd(&s(&[])).is_err());
    }
}
