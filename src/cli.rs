//! Entry point: personality from argv[0], the invocation, reporting, panics.

use std::ffi::OsString;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use clap::{Parser, ValueEnum};

use crate::backend::Backend;
use crate::invocation::{LinuxEnv, Request};
use crate::log;
use crate::os;
use crate::script::Script;
use crate::watchdog;
use crate::xs::XenStore;

/// The scripts this binary can be, chosen by the exact basename it is run as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Personality {
    /// Block devices and image files (loop devices).
    Block,
    /// iSCSI LUNs.
    #[value(name = "block-iscsi")]
    Iscsi,
    /// NBD exports.
    #[value(name = "block-nbd")]
    Nbd,
    /// DRBD resources.
    #[value(name = "block-drbd")]
    Drbd,
}

impl Personality {
    pub fn from_name(name: &str) -> Option<Personality> {
        Personality::from_str(name, false).ok()
    }

    pub fn name(self) -> &'static str {
        match self {
            Personality::Block => "block",
            Personality::Iscsi => "block-iscsi",
            Personality::Nbd => "block-nbd",
            Personality::Drbd => "block-drbd",
        }
    }
}

/// Xen block hotplug scripts in one binary. libxl runs it through the symlinks `block`,
/// `block-iscsi`, `block-nbd` and `block-drbd` in the Xen script directory; it can also be
/// run as `xen-block-hotplug <script> <arguments>`.
#[derive(Parser, Debug)]
#[command(name = "xen-block-hotplug", version, about, long_about = None)]
struct Cli {
    /// Which script to run.
    #[arg(value_enum)]
    script: Personality,
    /// The script's arguments, as libxl passes them (Linux: `add` or `remove`, with
    /// XENBUS_PATH in the environment).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

pub fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let argv0 = argv
        .first()
        .cloned()
        .unwrap_or_else(|| OsString::from("block"));
    let argv0 = argv0.to_string_lossy().into_owned();
    let base = Path::new(&argv0)
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_default();
    // `xen-block-hotplug lease ...`: the cluster lease commands (issue 15), own parser.
    #[cfg(target_os = "linux")]
    if Personality::from_name(&base).is_none() && argv.get(1).is_some_and(|a| a == "lease") {
        return crate::lease::cmd::main(argv.get(1..).unwrap_or_default());
    }
    let (personality, invoked, args) = match Personality::from_name(&base) {
        Some(p) => (p, argv0, argv.iter().skip(1).cloned().collect()),
        None => {
            let cli = Cli::parse();
            let invoked = format!(
                "{}/{}",
                crate::script::DEFAULT_SCRIPT_DIR,
                cli.script.name()
            );
            (cli.script, invoked, cli.args)
        }
    };
    log::init(&invoked);
    log::redirect_stderr();
    let script = Script::new(invoked, args);
    run(personality, &script)
}

fn run(personality: Personality, script: &Script) -> ExitCode {
    // Not refused here: a mangled argument then fails the invocation parser, which
    // reports it in hotplug-error once the backend path is known.
    let args: Vec<String> = script
        .args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let not_utf8 = script.args.iter().find(|a| a.to_str().is_none());
    let env = LinuxEnv {
        xenbus_path: std::env::var("XENBUS_PATH").ok(),
        xenbus_type: std::env::var("XENBUS_TYPE").ok(),
        xenbus_base_path: std::env::var("XENBUS_BASE_PATH").ok(),
    };
    log::debug(&format!(
        "{} XENBUS_PATH={}",
        args.join(" "),
        env.xenbus_path.as_deref().unwrap_or("")
    ));
    let (action, backend) = match os::parse_invocation(&args, &env) {
        Ok(Request::Run { action, backend }) => (action, backend),
        Ok(Request::Nothing { state }) => {
            log::debug(&format!("nothing to do for state {state}"));
            return ExitCode::SUCCESS;
        }
        Err(mut usage) => {
            if let Some(bad) = not_utf8 {
                usage.message = format!("argument {bad:?} is not valid UTF-8: {}", usage.message);
            }
            match usage.backend {
                Some(path) => match XenStore::open() {
                    Ok(store) => Backend::new(&store, path).report_failure(&anyhow!(usage.message)),
                    Err(e) => log::err(&format!("{}; and {e:#}", usage.message)),
                },
                None => log::err(&usage.message),
            }
            return ExitCode::from(1);
        }
    };
    watchdog::start(Some(backend.clone()));
    watchdog::phase("connecting to xenstore");
    let store = match XenStore::open() {
        Ok(s) => s,
        Err(e) => {
            log::err(&format!("{e:#}"));
            return ExitCode::from(1);
        }
    };
    let be = Backend::new(&store, backend);
    watchdog::phase("talking to xenstore");
    let result = guarded(|| match personality {
        Personality::Block => os::block(action, &be, script),
        helper => os::storage_helper(helper, action, &be),
    });
    let Err(err) = result else {
        return ExitCode::SUCCESS;
    };
    be.report_failure(&err);
    ExitCode::from(1)
}

/// Runs `f`, turning a panic into an ordinary error so it is reported in `hotplug-error`
/// like any failure (guards such as the lock and a half-attached loop unwind first).
pub fn guarded(f: impl FnOnce() -> Result<()>) -> Result<()> {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(anyhow!("internal error (panic): {what}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personalities_by_exact_name() {
        assert_eq!(Personality::from_name("block"), Some(Personality::Block));
        assert_eq!(
            Personality::from_name("block-iscsi"),
            Some(Personality::Iscsi)
        );
        assert_eq!(Personality::from_name("block-nbd"), Some(Personality::Nbd));
        assert_eq!(
            Personality::from_name("block-drbd"),
            Some(Personality::Drbd)
        );
        for other in [
            "Block",
            "block-",
            "block.sh",
            "xen-block-hotplug",
            "block-tap",
            "",
        ] {
            assert_eq!(Personality::from_name(other), None, "{other}");
        }
    }

    #[test]
    fn a_panic_becomes_a_reportable_error() {
        let e = guarded(|| panic!("boom {}", 42)).unwrap_err();
        assert_eq!(e.to_string(), "internal error (panic): boom 42");
        let (status, _) = crate::backend::describe(&e);
        assert_eq!(status, "error");
        assert!(guarded(|| Ok(())).is_ok());
    }
}
