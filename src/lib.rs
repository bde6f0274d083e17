//! xen-block-hotplug: Xen's block hotplug scripts as one careful, fast binary.
//!
//! The binary is `src/main.rs`; this library holds everything so tests and fuzz targets
//! can reach the parsers.

// Production code must not panic on an index: every slice access is checked, or its
// function says why its indices are in range.
#![deny(clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::indexing_slicing))]

pub mod activate;
// The operator commands read Linux's loop devices and sysfs.
#[cfg(target_os = "linux")]
pub mod admin;
pub mod applet;
pub mod backend;
pub mod cli;
pub mod deadline;
pub mod devnum;
pub mod exec;
pub mod invocation;
// sanlock, and so the cluster leases, exist on Linux only.
#[cfg(target_os = "linux")]
pub mod lease;
pub mod lock;
pub mod log;
pub mod mode;
pub mod mountinfo;
pub mod paths;
pub mod platform;
pub mod record;
pub mod report;
pub mod request;
pub mod script;
pub mod sharing;
pub mod watchdog;
pub mod xs;
