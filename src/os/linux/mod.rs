//! Linux's storage helpers over `platform::linux`.

mod attach;
mod drbd;
mod iscsi;
mod nbd;

use anyhow::{Result, bail};

use crate::applet::Personality;
use crate::backend::Backend;
use crate::invocation::Action;

use crate::platform::linux::blkdev;

/// The storage helpers: `block-iscsi`, `block-nbd`, `block-drbd`.
pub fn storage_helper(personality: Personality, action: Action, be: &Backend) -> Result<()> {
    use Personality as P;
    match (personality, action) {
        (P::Iscsi, Action::Add) => iscsi::add(be),
        (P::Iscsi, Action::Remove) => iscsi::remove(be),
        (P::Nbd, Action::Add) => nbd::add(be),
        (P::Nbd, Action::Remove) => nbd::remove(be),
        (P::Drbd, Action::Add) => drbd::add(be),
        (P::Drbd, Action::Remove) => drbd::remove(be),
        (P::Block, _) => bail!("block is not a storage helper"),
    }
}
