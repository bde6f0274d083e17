//! What every `add` reads first, the same on every OS and for every personality.

use std::io;

use anyhow::{Context, Result, anyhow};

use crate::backend::Backend;
use crate::log;
use crate::mode::Mode;
use crate::platform::Platform;
use crate::report::{busy, busy_because};
use crate::sharing::SharingCheck;

/// The backend nodes an add starts from.
pub struct AddNodes {
    pub params: String,
    /// As written; parsed with `Frontend::read` once the target is known to be ours.
    pub mode: String,
    pub ty: Option<String>,
}

impl AddNodes {
    /// `None` when `published` (`physical-device`; `physical-device-path` on FreeBSD)
    /// exists already: libxl may call twice, and the second call must touch nothing.
    /// Otherwise `params` and `mode` must be present and non-empty.
    pub fn read(be: &Backend, published: &str) -> Result<Option<AddNodes>> {
        if let Some(pd) = be.read(published)? {
            log::debug(&format!(
                "{} already has {published} {pd}: called twice, nothing to do",
                be.path.path
            ));
            return Ok(None);
        }
        Ok(Some(AddNodes {
            params: be.require("params")?,
            mode: be.require("mode")?,
            ty: be.read("type")?,
        }))
    }
}

/// Who the disk is for, as the sharing check needs it.
pub struct Frontend {
    pub mode: Mode,
    pub id: u32,
    /// The frontend's `vm` (upstream `FRONTEND_UUID`), `unknown` when absent.
    pub uuid: String,
}

impl Frontend {
    pub fn read(be: &Backend, mode: &str) -> Result<Frontend> {
        let mode = Mode::parse_request(mode)
            .with_context(|| format!("backend node {}", be.path.node("mode")))?;
        let fe = be.require("frontend-id")?;
        let id: u32 = fe.parse().map_err(|_| {
            anyhow!(
                "backend node {} is not a domain id: {fe:?}",
                be.path.node("frontend-id")
            )
        })?;
        // The path names the frontend too; a disagreeing node would make the sharing
        // check judge another guest's VM.
        if id != be.path.frontend {
            return Err(anyhow!(
                "backend node {} is {id}, but {} is domain {}'s backend",
                be.path.node("frontend-id"),
                be.path.path,
                be.path.frontend
            ));
        }
        let uuid = be
            .store
            .read(&format!("/local/domain/{id}/vm"))?
            .unwrap_or_else(|| "unknown".to_string());
        Ok(Frontend { mode, id, uuid })
    }

    /// The sharing check for this frontend on `be`, on `platform`.
    pub fn sharing_check<'a, P: Platform>(
        &self,
        be: &'a Backend,
        platform: &'a P,
    ) -> SharingCheck<'a, P> {
        SharingCheck {
            platform,
            store: be.store,
            me: &be.path,
            frontend_id: self.id,
            frontend_vm: self.uuid.clone(),
            mode: self.mode,
            read_only_sharing: true,
        }
    }
}

fn read_only_text(path: &str) -> String {
    format!("File {path} is read-only, and so I will not\nmount it read-write in a guest domain.")
}

/// The refusal for a read-only file asked read-write (upstream's wording), a `busy`.
pub fn read_only_file(path: &str) -> anyhow::Error {
    busy(read_only_text(path))
}

/// `read_only_file`, when opening it for writing said so (the OS error is kept).
pub fn read_only_file_because(path: &str, cause: io::Error) -> anyhow::Error {
    busy_because(read_only_text(path), cause)
}

/// Whether opening for writing failed because the file cannot be written: a read-only
/// file system, permissions, an immutable file, a running executable.
pub fn refused_write(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EROFS | nix::libc::EACCES | nix::libc::EPERM | nix::libc::ETXTBSY)
    )
}

/// Upstream's guard for file backends, under the lock: libxl runs `add` once the backend
/// is in InitWait (2); any other state means a remove is racing this add.
pub fn require_init_wait(be: &Backend) -> Result<()> {
    let state = be.read("state")?;
    if state.as_deref() != Some("2") {
        return Err(anyhow!(
            "Path closed or removed during hotplug add: {} state: {}",
            be.path.path,
            state.as_deref().unwrap_or("unknown")
        ));
    }
    Ok(())
}
