//! The OS seam: everything that differs between Linux, NetBSD and FreeBSD dom0s lives
//! behind these few functions, chosen by `target_os`. Business logic never tests the OS.
//!
//! Each OS module provides:
//! * `parse_invocation(args, env)`: that OS's calling convention (see `invocation`);
//! * `block(action, backend, script)`: the `block` personality;
//! * `storage_helper(personality, action, backend)`: `block-iscsi`, `block-nbd`,
//!   `block-drbd` (Linux; elsewhere a clear "not supported");
//! * `local_mounts()`: this system's mounts, with device numbers, for the sharing check;
//! * `stat_block_device(path)`: the device number of a path that is a block device now;
//! * `parse_physical_device(value)` / `format_physical_device(dev)`: the spelling of the
//!   `physical-device` node that OS's backend driver reads.

// The BSD personalities' pure logic, compiled on every OS so that Linux runs its tests.
pub mod freebsd_logic;
#[cfg(test)]
mod mem_store;
pub mod netbsd_logic;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::*;

#[cfg(any(target_os = "netbsd", target_os = "freebsd"))]
mod bsd;
#[cfg(target_os = "netbsd")]
mod netbsd;
#[cfg(target_os = "netbsd")]
pub use netbsd::*;

#[cfg(target_os = "freebsd")]
mod freebsd;
#[cfg(target_os = "freebsd")]
pub use freebsd::*;
