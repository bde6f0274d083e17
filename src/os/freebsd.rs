//! freebsd dom0 (placeholder until the NetBSD/FreeBSD issue lands): every action is refused.

use anyhow::{Result, bail};

use crate::backend::Backend;
use crate::devnum::DevNum;
use crate::invocation::{self, Action, LinuxEnv, Request, UsageError};
use crate::script::Script;

pub fn parse_invocation(args: &[String], _env: &LinuxEnv) -> Result<Request, UsageError> {
    invocation::parse_freebsd(args)
}

pub fn stat_block_device(_path: &str) -> Option<DevNum> {
    None
}

pub fn local_mounts() -> Result<Vec<crate::mountinfo::Mount>> {
    bail!("not implemented yet")
}

pub fn parse_physical_device(_value: &str) -> Option<DevNum> {
    None
}

pub fn format_physical_device(dev: DevNum) -> String {
    dev.to_linux_hex()
}

pub fn block(_action: Action, _be: &Backend, _script: &Script) -> Result<()> {
    bail!("the freebsd block script is not implemented yet")
}
