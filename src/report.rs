//! The result contract (interface doc §1.2, §4.1), written in one place. libxl looks only
//! at the exit status and, on failure, at `hotplug-error`. So a failure writes
//! `hotplug-error` first, then `hotplug-status` (`error`, or `busy` for a sharing conflict),
//! and exits 1; a success writes the device nodes and then `hotplug-status=connected`,
//! always the last write of a successful run.
//!
//! A run has two possible reporters, the main thread and the watchdog (`watchdog`), which
//! share one `Reporter`: whoever reports first wins, and the other writes nothing, so a
//! timeout can never land between a success's nodes and its `connected`, nor a success
//! after a timeout's `error`.
//!
//! Message style: upstream's refusals keep upstream's wording, capitals and embedded
//! newlines (admins and tools grep for them: "Device ... is mounted in a guest domain,\nand
//! so cannot be mounted now."); our own messages are lower case, one line, the error chain
//! joined with ": " (`{err:#}`). A busy refusal caused by an OS error keeps that cause,
//! appended after the upstream wording.

use std::error::Error;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;

use crate::invocation::BackendPath;
use crate::log;
use crate::xs::{Gone, Report, Store};

/// A refusal because the device is in use, or a read-only file was asked read-write:
/// reported as `hotplug-status=busy` (upstream's `ebusy`). Its `Display` is upstream's
/// wording alone; its `source` is what the OS said, when a system call decided.
#[derive(Debug)]
pub struct Busy {
    pub message: String,
    pub cause: Option<Box<dyn Error + Send + Sync + 'static>>,
}

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for Busy {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.cause.as_deref().map(|c| c as &(dyn Error + 'static))
    }
}

/// A `busy` refusal.
pub fn busy(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Busy {
        message: msg.into(),
        cause: None,
    })
}

/// A `busy` refusal that an OS error decided (`EROFS` opening a file read-write).
pub fn busy_because(
    msg: impl Into<String>,
    cause: impl Error + Send + Sync + 'static,
) -> anyhow::Error {
    anyhow::Error::new(Busy {
        message: msg.into(),
        cause: Some(Box::new(cause)),
    })
}

/// Debian's oxenstored refuses values over 2048 bytes (`quota-maxsize`); keep the error
/// well under that so it is never lost to E2BIG.
pub const MAX_ERROR_LEN: usize = 1500;

/// The `hotplug-status` value and the message for a failure: `busy` with upstream's
/// wording then the OS cause, or `error` with the whole chain.
pub fn describe(err: &anyhow::Error) -> (&'static str, String) {
    match err.downcast_ref::<Busy>() {
        Some(b) => {
            let mut text = b.message.clone();
            let mut cause = b.source();
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            ("busy", text)
        }
        None => ("error", format!("{err:#}")),
    }
}

/// `s` cut to at most `max` bytes on a character boundary, `...` marking a cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", s.get(..end).unwrap_or_default())
}

/// The one report of a run, shared by the main thread and the watchdog.
#[derive(Debug, Default)]
pub struct Reporter {
    done: AtomicBool,
}

impl Reporter {
    pub fn new() -> Reporter {
        Reporter::default()
    }

    /// Claims the report; `false` when someone has reported already.
    fn claim(&self) -> bool {
        !self.done.swap(true, Ordering::SeqCst)
    }

    /// Whether the report has been made (or is being made).
    pub fn reported(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// Gives the claim back: the report it was for wrote nothing.
    fn release(&self) {
        self.done.store(false, Ordering::SeqCst);
    }

    /// Publishes a success: `nodes` (names relative to the backend, in order) then
    /// `hotplug-status=connected`, in one xenstore transaction (issue 11 point 4, as
    /// Qubes' helper does), so blkback, libxl and other scripts see all of them or none;
    /// and only into a backend that still exists (point 3). Errors: the watchdog reported
    /// first (the run has failed then); the backend was removed (`xs::Gone`: nothing
    /// written); the transaction failed (nothing written: the claim is given back, so the
    /// failure can still be reported).
    pub fn publish(
        &self,
        store: &dyn Store,
        be: &BackendPath,
        nodes: &[(&str, &str)],
    ) -> Result<()> {
        if !self.claim() {
            anyhow::bail!("the run was already reported as failed");
        }
        let mut all: Vec<(&str, &str)> = nodes.to_vec();
        all.push(("hotplug-status", "connected"));
        for (n, v) in &all {
            log::debug(&format!("Writing {} {v} to xenstore.", be.node(n)));
        }
        match store.write_into_existing(&be.path, &all) {
            Ok(Report::Written) => Ok(()),
            Ok(Report::Vanished) => {
                self.release();
                Err(gone(be))
            }
            Err(e) => {
                self.release();
                Err(e)
            }
        }
    }

    /// `publish` of `hotplug-status=connected` alone.
    pub fn success(&self, store: &dyn Store, be: &BackendPath) -> Result<()> {
        self.publish(store, be, &[])
    }

    /// Logs the failure and writes `hotplug-error` then `hotplug-status`, in one
    /// transaction and only if the backend still exists (issue 11 point 3: a report must
    /// not recreate a backend libxl removed), unless the run has been reported already
    /// (then it is only logged). Failing to write them is logged too; the exit status
    /// still says failure.
    pub fn failure(&self, store: &dyn Store, be: &BackendPath, err: &anyhow::Error) {
        let (status, text) = describe(err);
        log::err(&text);
        if !self.claim() {
            log::debug("already reported: hotplug-error and hotplug-status left as they are");
            return;
        }
        let text = truncate(&text, MAX_ERROR_LEN);
        for (n, v) in [("hotplug-error", text.as_str()), ("hotplug-status", status)] {
            log::debug(&format!("Writing {} {v} to xenstore.", be.node(n)));
        }
        match store.write_into_existing(
            &be.path,
            &[("hotplug-error", &text), ("hotplug-status", status)],
        ) {
            Ok(Report::Written) => {}
            Ok(Report::Vanished) => log::err(&format!(
                "{}: not reported in xenstore, so as not to recreate it",
                gone(be)
            )),
            Err(e) => log::err(&format!("could not report the failure in xenstore: {e:#}")),
        }
    }
}

/// The error of a backend that no longer exists (issue 11 point 3).
pub fn gone(be: &BackendPath) -> anyhow::Error {
    anyhow::Error::new(Gone {
        dir: be.path.clone(),
        state: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xs::mem::MemStore;
    use anyhow::anyhow;

    #[test]
    fn busy_and_error_are_told_apart() {
        let (s, m) = describe(&busy("Device /dev/loop0 is mounted"));
        assert_eq!((s, m.as_str()), ("busy", "Device /dev/loop0 is mounted"));
        let e = anyhow!("root cause").context("cannot open /x");
        let (s, m) = describe(&e);
        assert_eq!((s, m.as_str()), ("error", "cannot open /x: root cause"));
    }

    #[test]
    fn busy_keeps_its_os_cause_after_the_upstream_wording() {
        let e = busy_because(
            "File /a is read-only",
            std::io::Error::from_raw_os_error(nix::libc::EROFS),
        );
        let (s, m) = describe(&e);
        assert_eq!(s, "busy");
        assert!(m.starts_with("File /a is read-only: "), "{m}");
        assert!(m.contains("Read-only file system"), "{m}");
        // Context added on the way up does not hide that it is a refusal.
        let (s, _) = describe(&e.context("while attaching"));
        assert_eq!(s, "busy");
    }

    #[test]
    fn long_errors_are_cut_on_a_char_boundary() {
        let long = "é".repeat(2000);
        let t = truncate(&long, MAX_ERROR_LEN);
        assert!(t.len() <= MAX_ERROR_LEN + 3);
        assert!(t.ends_with("..."));
        assert_eq!(truncate("short", 10), "short");
    }

    #[test]
    fn the_first_report_wins_and_the_second_writes_nothing() {
        let be = BackendPath::parse("backend/vbd/1/768", "backend", "vbd").unwrap();
        let s = MemStore::default();
        s.set("backend/vbd/1/768/state", "2");
        let r = Reporter::new();
        r.failure(&s, &be, &anyhow!("timed out"));
        assert_eq!(
            s.get("backend/vbd/1/768/hotplug-status").as_deref(),
            Some("error")
        );
        assert!(r.success(&s, &be).is_err());
        r.failure(&s, &be, &busy("in use"));
        assert_eq!(
            s.get("backend/vbd/1/768/hotplug-status").as_deref(),
            Some("error")
        );
        assert_eq!(
            s.get("backend/vbd/1/768/hotplug-error").as_deref(),
            Some("timed out")
        );

        let s = MemStore::default();
        s.set("backend/vbd/1/768/state", "2");
        let r = Reporter::new();
        r.success(&s, &be).unwrap();
        r.failure(&s, &be, &anyhow!("timed out"));
        assert_eq!(
            s.get("backend/vbd/1/768/hotplug-status").as_deref(),
            Some("connected")
        );
        assert_eq!(s.get("backend/vbd/1/768/hotplug-error"), None);
    }

    #[test]
    fn a_removed_backend_is_not_recreated_by_either_report() {
        // Issue 11 point 3: nothing under backend/vbd/5.
        let be = BackendPath::parse("backend/vbd/5/51712", "backend", "vbd").unwrap();
        let s = MemStore::default();
        s.set("backend/vbd/6/51712/state", "2");
        Reporter::new().failure(&s, &be, &anyhow!("no such file"));
        assert!(!s.exists("backend/vbd/5"));
        let e = Reporter::new()
            .publish(&s, &be, &[("physical-device", "7:0")])
            .unwrap_err();
        assert!(e.downcast_ref::<Gone>().is_some(), "{e:#}");
        assert!(e.to_string().contains("was removed"), "{e:#}");
        assert!(!s.exists("backend/vbd/5"));
        assert_eq!(*s.transactions.borrow(), 0);
    }

    #[test]
    fn a_publication_is_one_transaction_and_a_failed_one_can_still_report() {
        let be = BackendPath::parse("backend/vbd/1/768", "backend", "vbd").unwrap();
        let s = MemStore::default();
        s.set("backend/vbd/1/768/state", "2");
        let r = Reporter::new();
        r.publish(
            &s,
            &be,
            &[
                ("physical-device-path", "/dev/loop0"),
                ("physical-device", "7:0"),
            ],
        )
        .unwrap();
        assert_eq!(*s.transactions.borrow(), 1);
        assert_eq!(
            s.get("backend/vbd/1/768/hotplug-status").as_deref(),
            Some("connected")
        );
        // A publication that fails part-way writes nothing, and the failure is reported.
        let s = MemStore::default();
        s.set("backend/vbd/1/768/state", "2");
        s.fail_at("backend/vbd/1/768/physical-device");
        let r = Reporter::new();
        assert!(
            r.publish(
                &s,
                &be,
                &[
                    ("physical-device-path", "/dev/loop0"),
                    ("physical-device", "7:0")
                ]
            )
            .is_err()
        );
        assert_eq!(s.get("backend/vbd/1/768/physical-device-path"), None);
        r.failure(&s, &be, &anyhow!("publish failed"));
        assert_eq!(
            s.get("backend/vbd/1/768/hotplug-status").as_deref(),
            Some("error")
        );
    }
}
