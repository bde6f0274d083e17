//! The personalities: one module each for the storage helpers `block-iscsi`, `block-nbd`
//! and `block-drbd` (params parser, flow, record kind), and `helper`, the plumbing they
//! share. Each flow drives Linux tools (`iscsiadm`, `nbd-client`, `drbdadm`); it compiles
//! on every OS so that the cross-target lints see it, and the dispatch decides where it
//! runs.

pub mod drbd;
pub mod helper;
pub mod iscsi;
pub mod nbd;
pub mod parse;
