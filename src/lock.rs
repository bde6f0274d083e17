//! The `block` lock, bit-for-bit the protocol of Xen's `locking.sh` (interface doc §6), so
//! that we and the shell scripts exclude each other:
//!
//! 1. open `/var/run/xen-hotplug/<name>` read-write, creating it;
//! 2. `flock(LOCK_EX)`;
//! 3. compare `fstat` of the fd with `stat` of the path: a previous holder may have
//!    unlinked the file (release) between our open and our flock, in which case we hold a
//!    lock on an orphan and must retry;
//! 4. release by unlinking the path *while still holding* the flock, then closing.
//!
//! Unlike the shell version the fd is close-on-exec (std opens everything `O_CLOEXEC`), so
//! no child can keep the lock alive after we exit or are killed.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use fs2::FileExt;

/// The fixed lock directory (`paths::LOCK_DIR`); `lock_dir()` is where the locks are,
/// which tests move (`paths`).
pub const LOCK_DIR: &str = crate::paths::LOCK_DIR;

/// Where the locks of this run are: `LOCK_DIR`. The one place every caller asks.
pub fn lock_dir() -> PathBuf {
    crate::paths::lock_dir()
}

/// The global lock of `block` (and of Xen's shell scripts' `claim_lock block`): held for
/// the sharing check and the node writes of every personality.
pub const BLOCK: &str = "block";
/// The storage helpers' own locks: each serialises its adds and removes among themselves
/// (sessions, free devices, promotions), so a slow target never holds up other disks.
pub const ISCSI: &str = "block-iscsi";
pub const NBD: &str = "block-nbd";
pub const DRBD: &str = "block-drbd";

/// Why a lock could not be taken: which step failed on which path, with the OS error.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot create lock directory {}", .path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot open lock file {}", .path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot lock {}", .path.display())]
    Flock { path: PathBuf, source: io::Error },
    #[error("cannot stat {}", .path.display())]
    Stat { path: PathBuf, source: io::Error },
}

pub struct Lock {
    path: PathBuf,
    // Held for its flock; dropped after the unlink.
    file: Option<File>,
    acquired: Instant,
}

impl Lock {
    /// Blocks until the lock `name` in `dir` is held. Errors: the directory or the file
    /// cannot be created, opened, locked or stat-ed (the OS error is the cause). Callers
    /// that run under the watchdog use `watchdog::claim_lock`, which says what we wait for.
    pub fn claim_in(dir: &Path, name: &str) -> Result<Lock, LockError> {
        fs::create_dir_all(dir).map_err(|source| LockError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(name);
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(&path)
                .map_err(|source| LockError::Open {
                    path: path.clone(),
                    source,
                })?;
            loop {
                match file.lock_exclusive() {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(source) => return Err(LockError::Flock { path, source }),
                }
            }
            let held = file.metadata().map_err(|source| LockError::Stat {
                path: path.clone(),
                source,
            })?;
            match fs::metadata(&path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                    return Ok(Lock {
                        path,
                        file: Some(file),
                        acquired: Instant::now(),
                    });
                }
                // Unlinked or replaced by the previous holder: retry on the new file.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(LockError::Stat { path, source }),
            }
        }
    }

    /// How long the lock has been held.
    pub fn held_for(&self) -> std::time::Duration {
        self.acquired.elapsed()
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Unlink while holding the flock, then close: only a holder may remove the path.
        let _ = fs::remove_file(&self.path);
        self.file.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xbh-lock-{tag}-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn release_unlinks_and_lock_is_exclusive() {
        let dir = tmpdir("excl");
        let inside = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (dir, inside, max) = (dir.clone(), inside.clone(), max.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let l = Lock::claim_in(&dir, "block").unwrap();
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(n, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        drop(l);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(max.load(Ordering::SeqCst), 1);
        assert!(
            !dir.join("block").exists(),
            "release must unlink the lock file"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_file_from_dead_holder_is_reused() {
        let dir = tmpdir("stale");
        // A lock file left by a holder that died: nobody holds its flock.
        fs::write(dir.join("block"), b"").unwrap();
        let stale = fs::metadata(dir.join("block")).unwrap().ino();
        let l = Lock::claim_in(&dir, "block").unwrap();
        // The very inode left behind is the one locked, not a new file.
        let held = l.file.as_ref().unwrap().metadata().unwrap().ino();
        assert_eq!(held, stale);
        assert_eq!(fs::metadata(dir.join("block")).unwrap().ino(), stale);
        // And it is really locked: a second open of the path cannot take the flock.
        let other = File::open(dir.join("block")).unwrap();
        assert!(other.try_lock_exclusive().is_err());
        drop(other);
        drop(l);
        assert!(!dir.join("block").exists(), "release unlinks the path");
        fs::remove_dir_all(&dir).unwrap();
    }
}
