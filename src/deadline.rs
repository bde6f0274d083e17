//! Time: the deadline of each wait, and the run's budget that the waits share.
//!
//! * A [`Deadline`] is the point in time one step's waits must finish by: a tool run
//!   (`exec`), a device to appear ([`wait_for`]). Its length is `XEN_BLOCK_HOTPLUG_WAIT`
//!   (default 20 s), and it expires with a [`TimedOut`] error that says what timed out
//!   after how long.
//! * A [`Budget`] is the whole run's time: the watchdog ends the process at
//!   `start + watchdog::deadline()` (`XEN_BLOCK_HOTPLUG_TIMEOUT`, default 30 s, well under
//!   libxl's 40 s SIGKILL), so the waits are cut to leave an undo of a failed add room
//!   before it ([`UNDO_RESERVE`]), and every remove step still gets [`STEP_FLOOR`].

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

/// How long any one wait (a device to appear, a tool to finish) may take, in seconds.
pub const WAIT_ENV: &str = "XEN_BLOCK_HOTPLUG_WAIT";
/// The default for `XEN_BLOCK_HOTPLUG_WAIT`: well under libxl's 40 s SIGKILL, leaving time
/// to undo a half-done attach.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(20);

/// A point in time every wait of one step must finish by.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    end: Instant,
    limit: Duration,
}

impl Deadline {
    pub fn after(limit: Duration) -> Deadline {
        Deadline {
            end: Instant::now() + limit,
            limit,
        }
    }

    /// The configured wait (`XEN_BLOCK_HOTPLUG_WAIT`, default 20 s), never past
    /// `ceiling` (what is left before the run's own watchdog fires, less time to undo).
    pub fn configured(ceiling: Duration) -> Result<Deadline> {
        let wait = wait_from_env(std::env::var(WAIT_ENV).ok().as_deref())?;
        Ok(Deadline::after(wait.min(ceiling)))
    }

    pub fn remaining(&self) -> Duration {
        self.end.saturating_duration_since(Instant::now())
    }

    pub fn expired(&self) -> bool {
        Instant::now() >= self.end
    }

    /// The deadline a step gets: this one, or `floor` from now if that is later (remove
    /// runs every step even after an earlier one used up the time).
    pub fn at_least(&self, floor: Duration) -> Deadline {
        if self.remaining() >= floor {
            *self
        } else {
            Deadline::after(floor)
        }
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }
}

/// Parses `XEN_BLOCK_HOTPLUG_WAIT`: seconds, fractions allowed, above 0 and at most 3600.
pub fn wait_from_env(v: Option<&str>) -> Result<Duration> {
    let Some(v) = v.filter(|v| !v.is_empty()) else {
        return Ok(DEFAULT_WAIT);
    };
    match v.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 3600.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(anyhow!(
            "{WAIT_ENV}={v:?} is not a number of seconds between 0 and 3600"
        )),
    }
}

/// Seconds for messages: `20 s`, `0.5 s`.
pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{} s", s as u64)
    } else {
        format!("{s:.1} s")
    }
}

/// A wait that ran out of time. Kept as a type so callers can tell it from a failure.
#[derive(Debug)]
pub struct TimedOut(pub String);

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TimedOut {}

/// The `TimedOut` error of a wait of `limit` for `what`.
pub fn timed_out(what: &str, limit: Duration) -> anyhow::Error {
    anyhow::Error::new(TimedOut(format!(
        "timed out after {} {what} (limit {WAIT_ENV}, default {})",
        secs(limit),
        secs(DEFAULT_WAIT)
    )))
}

/// Polls `probe` until it returns `Some`, or the deadline passes. `what` completes
/// "timed out after N s ..." (for example "waiting for /dev/nbd0 to get a size").
pub fn wait_for<T>(
    what: &str,
    deadline: &Deadline,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = probe()? {
            return Ok(v);
        }
        if deadline.expired() {
            return Err(timed_out(what, deadline.limit()));
        }
        std::thread::sleep(pause.min(deadline.remaining()));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Time kept back from the run's watchdog for undoing a failed add.
pub const UNDO_RESERVE: Duration = Duration::from_secs(8);
/// Every remove step gets at least this long, even after earlier steps used up the time.
pub const STEP_FLOOR: Duration = Duration::from_secs(2);

/// The run's time: the watchdog ends the process at `start + total`.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    start: Instant,
    total: Duration,
}

impl Budget {
    /// A budget of `total` (the watchdog's `watchdog::deadline()`) starting now.
    pub fn starting_now(total: Duration) -> Budget {
        Budget {
            start: Instant::now(),
            total,
        }
    }

    fn left(&self) -> Duration {
        self.total.saturating_sub(self.start.elapsed())
    }

    /// The deadline of the waits of this run: `XEN_BLOCK_HOTPLUG_WAIT` (default 20 s),
    /// cut so that an undo still fits before the watchdog, but never under a quarter of
    /// the run. Errors when `XEN_BLOCK_HOTPLUG_WAIT` is not a valid number of seconds.
    pub fn wait(&self) -> Result<Deadline> {
        let ceiling = self.left().saturating_sub(UNDO_RESERVE).max(self.total / 4);
        Deadline::configured(ceiling)
    }

    /// The deadline for undoing a failed add: what is left before the watchdog, less a
    /// second to report (at least half a second).
    pub fn undo(&self) -> Deadline {
        Deadline::after(
            self.left()
                .saturating_sub(Duration::from_secs(1))
                .max(Duration::from_millis(500)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_parsing() {
        assert_eq!(wait_from_env(None).unwrap(), DEFAULT_WAIT);
        assert_eq!(wait_from_env(Some("")).unwrap(), DEFAULT_WAIT);
        assert_eq!(wait_from_env(Some("3")).unwrap(), Duration::from_secs(3));
        assert_eq!(
            wait_from_env(Some("0.5")).unwrap(),
            Duration::from_millis(500)
        );
        for bad in ["0", "-1", "x", "3601", "NaN", "inf"] {
            let e = wait_from_env(Some(bad)).unwrap_err().to_string();
            assert!(e.contains(WAIT_ENV), "{bad}: {e}");
        }
    }

    #[test]
    fn seconds_for_messages() {
        assert_eq!(secs(Duration::from_secs(20)), "20 s");
        assert_eq!(secs(Duration::from_millis(1500)), "1.5 s");
    }

    #[test]
    fn wait_for_times_out() {
        let d = Deadline::after(Duration::from_millis(50));
        let e = wait_for::<()>("waiting for Godot", &d, || Ok(None)).unwrap_err();
        let e = e.to_string();
        assert!(
            e.starts_with("timed out after 0.1 s waiting for Godot"),
            "{e}"
        );
        let mut n = 0;
        assert_eq!(
            wait_for("x", &Deadline::after(Duration::from_secs(5)), || {
                n += 1;
                Ok((n == 3).then_some(7))
            })
            .unwrap(),
            7
        );
    }

    #[test]
    fn budget_leaves_room_to_undo() {
        let b = Budget::starting_now(Duration::from_secs(30));
        // 30 s less the undo reserve, or the configured wait if shorter.
        let w = b.wait().unwrap().limit();
        assert!(
            w <= Duration::from_secs(22) && w >= Duration::from_secs(7),
            "{w:?}"
        );
        // A budget nearly spent still gives the waits a quarter of the run.
        let b = Budget::starting_now(Duration::from_secs(4));
        assert_eq!(b.wait().unwrap().limit(), Duration::from_secs(1));
        let b = Budget::starting_now(Duration::ZERO);
        assert_eq!(b.undo().limit(), Duration::from_millis(500));
    }
}
