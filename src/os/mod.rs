//! The storage helpers (`block-iscsi`, `block-nbd`, `block-drbd`), Linux only. Their move
//! to `applet/` is another change (issue 10, helpers part); the platform code they use
//! lives in `platform::linux`.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::storage_helper;
