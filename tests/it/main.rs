//! The integration tests, one binary (`cargo test --test it`): the harness (`common`, `rel`,
//! `fakes`) is compiled once, and every item of it is used by some test.
//!
//! They need root, the host's loop devices, Debian's oxenstored and xenstore tools and
//! sanlock (`lease`; `tests/support/install-deps`), and are hermetic otherwise: every test gets its own
//! daemon, lock directory, remove-record directory and syslog socket (`common::Xenstored`),
//! so nothing is written under the host's `/var/run/xen-hotplug`.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod fakes;
mod rel;

mod admin;
mod block;
mod deployments;
mod exhaust;
mod faults;
mod harness;
mod helpers_drbd;
mod helpers_iscsi;
mod helpers_nbd;
mod hostile;
mod kill;
mod lease;
mod lock_interop;
mod logging;
mod loopdev;
mod reuse;
mod storm;
mod xen419;
mod xs_txn;
