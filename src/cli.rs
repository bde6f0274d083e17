//! Entry point: personality from argv[0], the invocation, reporting, panics.

use std::ffi::OsString;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::process::ExitCode;

use std::sync::Arc;

use anyhow::{Result, anyhow};
use clap::{CommandFactory, Parser, Subcommand};

use crate::activate;
use crate::applet;
pub use crate::applet::Personality;
use crate::backend::Backend;
use crate::invocation::{self, LinuxEnv, Request};
use crate::log;
use crate::report::Reporter;
use crate::script::Script;
use crate::watchdog;
use crate::xs::XenStore;

/// Xen block hotplug scripts in one binary. libxl runs it through the symlinks `block`,
/// `block-iscsi`, `block-nbd` and `block-drbd` in the Xen script directory; it can also be
/// run as `xen-block-hotplug <script> <arguments>`.
#[derive(Parser, Debug)]
#[command(
    name = "xen-block-hotplug",
    version,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    /// Which script to run.
    #[arg(value_enum, required = true)]
    script: Option<Personality>,
    /// The script's arguments, as libxl passes them (Linux: `add` or `remove`, with
    /// XENBUS_PATH in the environment).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The admin commands, each in its own module.
#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Host(activate::HostCommand),
    /// Operator commands (they read Linux's loop devices and sysfs).
    #[cfg(target_os = "linux")]
    #[command(flatten)]
    Admin(crate::admin::Command),
    /// Cluster disk leases on sanlock (one writer across hosts), configured in
    /// /etc/xen/xen-block-hotplug.conf: init, join, leave, status.
    #[cfg(target_os = "linux")]
    Lease(crate::lease::cmd::LeaseArgs),
}

/// The whole command line as clap sees it, for the man page generator (`examples/mangen.rs`).
pub fn command() -> clap::Command {
    Cli::command()
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
    let (personality, invoked, args) = match Personality::from_name(&base) {
        Some(p) => (p, argv0, argv.iter().skip(1).cloned().collect()),
        None => {
            let cli = Cli::parse();
            let script = match (cli.command, cli.script) {
                (Some(Command::Host(c)), _) => return activate::run(c),
                #[cfg(target_os = "linux")]
                (Some(Command::Admin(c)), _) => return crate::admin::run(c),
                #[cfg(target_os = "linux")]
                (Some(Command::Lease(c)), _) => return crate::lease::cmd::main(c),
                (None, Some(script)) => script,
                // clap requires one of the two
                (None, None) => return ExitCode::from(2),
            };
            let invoked = format!("{}/{}", crate::script::DEFAULT_SCRIPT_DIR, script.name());
            (script, invoked, cli.args)
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
    let (action, backend) = match parse_invocation(&args, &env) {
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
    let reporter = Arc::new(Reporter::new());
    watchdog::start(backend.clone(), reporter.clone());
    watchdog::phase("connecting to xenstore");
    let store = match XenStore::open() {
        Ok(s) => s,
        Err(e) => {
            log::err(&format!("{e:#}"));
            return ExitCode::from(1);
        }
    };
    let be = Backend::with_reporter(&store, backend, reporter);
    watchdog::phase("talking to xenstore");
    let result = guarded(|| applet::run(personality, action, &be, script));
    let Err(err) = result else {
        return ExitCode::SUCCESS;
    };
    be.report_failure(&err);
    ExitCode::from(1)
}

/// This OS's calling convention (see `invocation`).
fn parse_invocation(args: &[String], env: &LinuxEnv) -> Result<Request, invocation::UsageError> {
    #[cfg(target_os = "linux")]
    return invocation::parse_linux(args, env);
    #[cfg(target_os = "netbsd")]
    return {
        let _ = env;
        invocation::parse_netbsd(args)
    };
    #[cfg(target_os = "freebsd")]
    return {
        let _ = env;
        invocation::parse_freebsd(args)
    };
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
        let (status, _) = crate::report::describe(&e);
        assert_eq!(status, "error");
        assert!(guarded(|| Ok(())).is_ok());
    }
}
