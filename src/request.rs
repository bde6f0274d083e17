//! What every `add` reads first, the same on every OS and for every personality.

use std::io;

use anyhow::{Context, Result, anyhow};

use crate::backend::Backend;
use crate::log;
use crate::mode::Mode;
use crate::platform::Platform;
use crate::report::{busy, busy_because, gone};
use crate::sharing::{SharingCheck, readable};
use crate::watchdog;
use crate::xs::WaitError;
use crate::xs::txn::STATE_INIT_WAIT;

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
        let params = match be.read("params")? {
            Some(p) if !p.is_empty() => p,
            Some(_) => return Err(anyhow!("backend node {} is empty", be.path.node("params"))),
            // No params: the backend may be gone altogether (libxl tore the device down,
            // or nothing ever was there): that is said as such, and never written into.
            None if !be.exists()? => return Err(gone(&be.path)),
            None => {
                return Err(anyhow!(
                    "backend node {} is missing",
                    be.path.node("params")
                ));
            }
        };
        Ok(Some(AddNodes {
            params,
            mode: be.require("mode")?,
            ty: be.read("type")?,
        }))
    }
}

/// Who the disk is for, as the sharing check needs it.
pub struct Frontend {
    pub mode: Mode,
    pub id: u32,
    /// The frontend's `vm` (upstream `FRONTEND_UUID`); `None` when missing or unreadable
    /// (in a driver domain a guest's `vm` is readable by dom0 and the guest only: EACCES),
    /// which is not an error: the sharing check then finds no other domain of the same VM
    /// by it (issue 11 point 1).
    pub uuid: Option<String>,
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
        let uuid = readable(be.store, &format!("/local/domain/{id}/vm"))?;
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

/// Before the lock, for file backends: a backend still Initialising (1) (started by a udev
/// rule or another toolstack before libxl's InitWait) is waited for on a xenstore watch,
/// within the run's deadline, until InitWait (2) (issue 11 point 5; Qubes patches
/// upstream's script likewise). Closing (5) or later, or a removed directory, is the error
/// of a removed backend, which the report does not write into (point 3).
/// Any other state is left to `require_init_wait`'s refusal under the lock.
pub fn wait_for_init_wait(be: &Backend) -> Result<()> {
    if be.read("state")?.as_deref() != Some("1") {
        return Ok(());
    }
    log::debug(&format!(
        "{} is Initialising (1): waiting for InitWait",
        be.path.path
    ));
    watchdog::phase("waiting for the backend to reach InitWait");
    match be
        .store
        .wait_for_state(&be.path.path, STATE_INIT_WAIT, watchdog::run_deadline())
    {
        Ok(_) => Ok(()),
        // Upstream's wording first: admins grep for it.
        Err(WaitError::Gone(g)) => {
            let state = g
                .state
                .map_or_else(|| "removed".to_string(), |s| s.to_string());
            let path = g.dir.clone();
            Err(anyhow::Error::new(g).context(format!(
                "Path closed or removed during hotplug add: {path} state: {state}"
            )))
        }
        Err(WaitError::Xenstore(e)) => Err(e),
        Err(e @ WaitError::Deadline { .. }) => Err(anyhow::Error::new(e)),
    }
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
