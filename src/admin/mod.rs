//! Operator commands: `status`, `explain`, `sweep` (README, "Operator commands").
//!
//! They read the same xenstore, remove records, sysfs and mounts as `block`, through
//! `probe` only. Exit status: 0 all is well (or grantable, or nothing to mend), 1 problems
//! (busy, something to mend), 2 could not inspect, with why on stderr (and, with
//! `--json`, as `{"error": ...}` on stdout). Their output goes to the terminal, never to
//! the hotplug log.

mod explain;
mod inventory;
pub mod probe;
mod problems;
mod status;
mod sweep;
mod table;

use std::ffi::OsString;
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use crate::mode::Mode;
use crate::xs::Store;

pub use explain::explain;
pub use status::inspect;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Every disk backend of this domain, then what is wrong (shared-writable,
    /// orphan-loop, stale-record, device-reused, lock-held). Exit 0 healthy, 1 problems,
    /// 2 could not inspect.
    Status {
        /// One JSON object: {"backends": [...], "problems": [...]}.
        #[arg(long)]
        json: bool,
    },
    /// Would `block add` give PATH to a guest, and if not, who holds it. Read-only.
    /// Exit 0 grantable, 1 busy, 2 error.
    Explain {
        /// An image file or block device, as a backend's `params` names it.
        path: OsString,
        /// The access asked for.
        #[arg(long, value_enum, default_value = "w")]
        mode: AccessMode,
        /// The frontend domain asking (its stub domain and itself are not conflicts);
        /// without it, a new guest.
        #[arg(long, value_name = "DOMID")]
        frontend: Option<u32>,
        /// One JSON object: {"grantable": bool, "holders": [...]}.
        #[arg(long)]
        json: bool,
    },
    /// What is safe to mend: orphan loops and stale remove records. Exit 0 nothing to
    /// mend or report, 1 something (left), 2 error.
    Sweep {
        /// Mend them, under the block lock, and print what was done.
        #[arg(long)]
        apply: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AccessMode {
    R,
    W,
}

/// Runs an operator command against the host's xenstore.
pub fn run(cmd: Command) -> ExitCode {
    let json = matches!(
        cmd,
        Command::Status { json: true } | Command::Explain { json: true, .. }
    );
    let name = match &cmd {
        Command::Status { .. } => "status",
        Command::Explain { .. } => "explain",
        Command::Sweep { .. } => "sweep",
    };
    let result = panic::catch_unwind(AssertUnwindSafe(|| -> Result<(String, u8)> {
        let store = probe::open_store()?;
        execute(&store, cmd)
    }))
    .unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(anyhow!("internal error (panic): {what}"))
    });
    let (text, code) = match result {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("{e:#}");
            let _ = writeln!(
                std::io::stderr(),
                "xen-block-hotplug {name}: cannot inspect: {msg}"
            );
            let text = if json {
                format!("{}\n", json!({ "error": msg }))
            } else {
                String::new()
            };
            (text, 2)
        }
    };
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::from(2);
    }
    ExitCode::from(code)
}

/// One command on `store`: its output and exit status.
pub fn execute(store: &dyn Store, cmd: Command) -> Result<(String, u8)> {
    match cmd {
        Command::Status { json } => {
            let r = status::inspect(store)?;
            let text = if json {
                format!("{}\n", r.to_json())
            } else {
                r.human()
            };
            Ok((text, r.exit_code()))
        }
        Command::Explain {
            path,
            mode,
            frontend,
            json,
        } => {
            let path = path
                .to_str()
                .ok_or_else(|| anyhow!("PATH {path:?} is not valid UTF-8"))?
                .to_string();
            let mode = match mode {
                AccessMode::R => Mode::Read,
                AccessMode::W => Mode::Write,
            };
            let v = explain::explain(store, &path, mode, frontend)?;
            let text = if json {
                format!("{}\n", v.to_json())
            } else {
                v.human()
            };
            Ok((text, v.exit_code()))
        }
        Command::Sweep { apply } => {
            let plan = sweep::plan(store)?;
            if !apply {
                return Ok((plan.human(None), plan.exit_code()));
            }
            let done = sweep::apply(store, &plan)?;
            let all = done.iter().all(|d| d.mended);
            let code = u8::from(!all || !plan.left.is_empty());
            Ok((plan.human(Some(&done)), code))
        }
    }
}
