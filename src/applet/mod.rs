//! The personalities this binary can be, and the dispatch to them: `block` (every OS,
//! over the platform seam), and one module each for the storage helpers `block-iscsi`,
//! `block-nbd` and `block-drbd` (params parser, flow, record kind), with `helper`, the
//! plumbing they share. Each helper flow drives Linux tools (`iscsiadm`, `nbd-client`,
//! `drbdadm`); it compiles on every OS so that the cross-target lints see it, and the
//! dispatch decides where it runs. Applets sit above the sharing check, the backend and
//! the records, which sit above the platform.

pub mod block;
pub mod drbd;
pub mod helper;
pub mod iscsi;
pub mod lease;
pub mod nbd;
pub mod parse;

use anyhow::Result;
use clap::ValueEnum;

use crate::backend::Backend;
use crate::invocation::Action;
use crate::script::Script;

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

/// Runs `personality`'s `action` on `be`, on this host's platform.
pub fn run(personality: Personality, action: Action, be: &Backend, script: &Script) -> Result<()> {
    match personality {
        Personality::Block => block::run(&crate::platform::host(), action, be, script),
        #[cfg(target_os = "linux")]
        Personality::Iscsi => match action {
            Action::Add => iscsi::add(be),
            Action::Remove => iscsi::remove(be),
        },
        #[cfg(target_os = "linux")]
        Personality::Nbd => match action {
            Action::Add => nbd::add(be),
            Action::Remove => nbd::remove(be),
        },
        #[cfg(target_os = "linux")]
        Personality::Drbd => match action {
            Action::Add => drbd::add(be),
            Action::Remove => drbd::remove(be),
        },
        #[cfg(not(target_os = "linux"))]
        helper => anyhow::bail!(
            "{} is not supported on {}",
            helper.name(),
            if cfg!(target_os = "netbsd") {
                "NetBSD"
            } else {
                "FreeBSD"
            }
        ),
    }
}
