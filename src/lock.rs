//! The `block` lock, bit-for-bit the protocol of Xen's `locking.sh` (interface doc §6), so
//! that we and the shell scripts exclude each other:
//!
//! 1. open `/var/run/xen-hotplug/<name>` (`paths::lock_dir`) read-write, creating it;
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

use anyhow::{Context, Result};
use fs2::FileExt;

/// The fixed lock directory (`paths::LOCK_DIR`); `paths::lock_dir()` is where the locks
/// are, which tests move.
pub const LOCK_DIR: &str = crate::paths::LOCK_DIR;

pub struct Lock {
    path: PathBuf,
    // Held for its flock; dropped after the unlink.
    file: Option<File>,
    acquired: Instant,
}

impl Lock {
    /// Blocks until the named lock is held.
    pub fn claim(name: &str) -> Result<Lock> {
        crate::watchdog::phase("waiting for the block lock");
        let l = Self::claim_in(&crate::paths::lock_dir(), name);
        crate::watchdog::phase("holding the block lock");
        l
    }

    pub fn claim_in(dir: &Path, name: &str) -> Result<Lock> {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create lock directory {}", dir.display()))?;
        let path = dir.join(name);
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(&path)
                .with_context(|| format!("cannot open lock file {}", path.display()))?;
            loop {
                match file.lock_exclusive() {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot lock {}", path.display()));
                    }
                }
            }
            let held = file.metadata().context("cannot fstat lock file")?;
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
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot stat {}", path.display()));
                }
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
        fs::write(dir.join("block"), b"").unwrap();
        let l = Lock::claim_in(&dir, "block").unwrap();
        assert!(l.held_for().as_secs() < 5);
        drop(l);
        fs::remove_dir_all(&dir).unwrap();
    }
}
