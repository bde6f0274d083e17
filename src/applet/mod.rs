//! The personalities this binary can be, and the dispatch to them. Applets sit above the
//! sharing check, the backend and the records, which sit above the platform.

pub mod block;

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
        helper => crate::os::storage_helper(helper, action, be),
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
