//! The FreeBSD `block` script's decisions: what `params` names, and whether handing it to
//! this guest conflicts with another backend or a mount. FreeBSD's blkback opens
//! `physical-device-path` itself, file or (character) device, so the sharing check works on
//! paths: two paths are the same disk when they name the same file (`st_dev`, `st_ino`) or
//! the same device (`st_rdev`). The conflict rules are Linux's (`sharing::guest_conflicts`,
//! `sharing::same_vm`, `sharing::mount_conflict`).
//!
//! Everything here is OS-neutral (`std::os::unix` metadata and the `Store` trait), so it
//! is compiled and unit-tested on every OS; `os::freebsd` supplies the mounts.

use std::fs::{self, Metadata, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::backend::{Backend, busy};
use crate::devnum::DevNum;
use crate::lock::Lock;
use crate::log;
use crate::mode::Mode;
use crate::mountinfo::Mount;
use crate::request::{Frontend, read_only_file, refused_write};
use crate::script::Script;
use crate::sharing::{self, Holder, OurVm, Scan};

/// What a path names, for comparing two backends' paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A regular file on the filesystem `dev`.
    File { dev: u64, ino: u64 },
    /// A character (or block) device.
    Device { rdev: u64 },
}

impl Target {
    /// `None` for anything blkback cannot use: directories, FIFOs, sockets.
    pub fn of(meta: &Metadata) -> Option<Target> {
        let ft = meta.file_type();
        if ft.is_file() {
            Some(Target::File {
                dev: meta.dev(),
                ino: meta.ino(),
            })
        } else if ft.is_char_device() || ft.is_block_device() {
            Some(Target::Device { rdev: meta.rdev() })
        } else {
            None
        }
    }

    /// The device number a mount of this target would show, for devices.
    pub fn device(self) -> Option<DevNum> {
        match self {
            Target::Device { rdev } => Some(split_dev(rdev)),
            Target::File { .. } => None,
        }
    }

    /// A device number that stands for the target in `Holder`s and logs: the device
    /// itself, or the filesystem a file lives on.
    pub fn dev_num(self) -> DevNum {
        match self {
            Target::Device { rdev } => split_dev(rdev),
            Target::File { dev, .. } => split_dev(dev),
        }
    }
}

/// FreeBSD device numbers are opaque 64-bit ids (devfs gives majors no meaning), so they
/// are split at bit 32 only to fit `DevNum`; equality is all that matters.
pub fn split_dev(dev: u64) -> DevNum {
    DevNum::new(dev >> 32, dev & 0xffff_ffff)
}

/// A mount that conflicts with handing `target` to a guest in `mode`: only devices can be
/// mounted; files are never in a mount's way.
pub fn mount_holder(target: Target, mounts: &[Mount], mode: Mode) -> Option<Holder> {
    let dev = target.device()?;
    sharing::mount_conflict(&[dev], mounts, mode).map(|m| Holder::Local {
        dev: m.dev,
        mount_point: m.mount_point.clone(),
    })
}

/// Upstream's relative-name rule (`expand_dev`): a name without `/` lives in `/dev`.
pub fn expand(params: &str) -> String {
    if params.starts_with('/') {
        params.to_string()
    } else {
        format!("/dev/{params}")
    }
}

/// The first other backend of this domain whose `physical-device-path` names `ours` now
/// and conflicts with the request (`Scan::conflicts_with`: Linux's rules). `stat` says
/// what a path names (`None` when it names nothing usable).
pub fn guest_holder(
    scan: &Scan,
    ours: Target,
    stat: &dyn Fn(&str) -> Option<Target>,
) -> Result<Option<Holder>> {
    let root = &scan.me.type_dir;
    let Some(doms) = scan.store.list(root)? else {
        return Ok(None);
    };
    let mut our_vm: Option<OurVm> = None;
    for dom in doms {
        let dom_dir = format!("{root}/{dom}");
        let Some(devs) = scan.store.list(&dom_dir)? else {
            continue;
        };
        for dev in devs {
            if dom == scan.me.frontend.to_string() && dev == scan.me.devid.to_string() {
                continue;
            }
            let be = format!("{dom_dir}/{dev}");
            let Some(path) = scan.store.read(&format!("{be}/physical-device-path"))? else {
                continue;
            };
            if path.is_empty() || stat(&path) != Some(ours) {
                continue;
            }
            if scan.conflicts_with(&dom, &be, &mut our_vm)? {
                return Ok(Some(Holder::Guest {
                    dev: ours.dev_num(),
                    domid: dom,
                    backend: be,
                }));
            }
        }
    }
    Ok(None)
}

/// What `add` needs from the system besides files and xenstore.
pub struct System<'a> {
    /// The dom0 mounts (`os::local_mounts` on FreeBSD).
    pub mounts: &'a dyn Fn() -> Result<Vec<Mount>>,
    /// Where the `block` lock lives (`lock::LOCK_DIR`).
    pub lock_dir: &'a Path,
}

/// The FreeBSD `block add`.
pub fn add(be: &Backend, script: &Script, sys: &System) -> Result<()> {
    if let Some(p) = be.read("physical-device-path")? {
        log::debug(&format!(
            "{} already has physical-device-path {p}: called twice, nothing to do",
            be.path.path
        ));
        return Ok(());
    }
    let params = be.require("params")?;
    let mode = be.require("mode")?;
    let ty = be.read("type")?;
    let path = expand(&params);
    let found = match fs::metadata(&path) {
        Ok(meta) => match Target::of(&meta) {
            Some(t) => Ok((t, meta)),
            None => Err(if meta.is_dir() {
                format!("a directory ({path})")
            } else {
                format!("neither a regular file nor a device ({path})")
            }),
        },
        Err(e) => match e.raw_os_error() {
            Some(nix::libc::ENOENT) => Err(format!("a path that does not exist ({path})")),
            Some(nix::libc::ELOOP) => Err(format!("a symbolic link loop ({path})")),
            Some(nix::libc::ENOTDIR) => Err(format!(
                "a path through something that is not a directory ({path})"
            )),
            _ => return Err(e).with_context(|| format!("cannot stat params {path:?}")),
        },
    };
    let (target, meta) = match found {
        Ok(t) => t,
        Err(what) => {
            return script.hand_over(&params, &what, ty.as_deref());
        }
    };
    // blkback opens what we write: the real path, so that a symlink changed later does
    // not swap the disk under the sharing check.
    let real = fs::canonicalize(&path)
        .ok()
        .and_then(|p| p.to_str().map(str::to_string))
        .unwrap_or(path);
    if fs::metadata(&real).ok().and_then(|m| Target::of(&m)) != Some(target) {
        bail!("{real} changed while being attached");
    }
    let frontend = Frontend::read(be, &mode)?;
    let mode = frontend.mode;
    let what = match target {
        Target::File { .. } => format!("File {real}"),
        Target::Device { .. } => format!("Device {real}"),
    };
    if let Target::File { .. } = target
        && mode.writable()
    {
        let writable = meta.mode() & 0o222 != 0
            && match OpenOptions::new().read(true).write(true).open(&real) {
                Ok(_) => true,
                Err(e) => !refused_write(&e),
            };
        if !writable {
            return Err(read_only_file(&real));
        }
    }
    let lock = Lock::claim_in(sys.lock_dir, "block")?;
    if mode != Mode::Force {
        let holder = match mount_holder(target, &(sys.mounts)()?, mode) {
            Some(h) => Some(h),
            None => guest_holder(&frontend.scan(be), target, &|p: &str| {
                fs::metadata(p).ok().and_then(|m| Target::of(&m))
            })?,
        };
        if let Some(h) = holder {
            return Err(busy(sharing::busy_message(&what, mode, &h)));
        }
    }
    be.write("physical-device-path", &real)?;
    be.report_success()?;
    log::debug(&format!(
        "block lock held for {} us",
        lock.held_for().as_micros()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invocation::BackendPath;
    use crate::os::mem_store::MemStore;
    use crate::xs::Store;

    const ROOT: &str = "/local/domain/0/backend/vbd";
    const DISK: Target = Target::Device { rdev: 0x5a };
    const IMG: Target = Target::File { dev: 0x71, ino: 12 };

    fn stat(p: &str) -> Option<Target> {
        match p {
            "/dev/ada1" | "/dev/diskid/DISK-X" => Some(DISK),
            "/vm/a.img" | "/vm/link.img" => Some(IMG),
            "/vm/other.img" => Some(Target::File { dev: 0x71, ino: 13 }),
            "/elsewhere/a.img" => Some(Target::File { dev: 0x72, ino: 12 }),
            _ => None,
        }
    }

    fn me() -> BackendPath {
        BackendPath::parse(&format!("{ROOT}/5/768"), "backend", "vbd").unwrap()
    }

    fn store() -> MemStore {
        let s = MemStore::default();
        s.set("/local/domain/5/vm", "/vm/five");
        s.set("/local/domain/6/vm", "/vm/six");
        s.set("/local/domain/7/vm", "/vm/seven");
        s.set("/local/domain/7/target", "5");
        // Ourselves: must be skipped even though the path matches.
        s.set(&format!("{ROOT}/5/768/physical-device-path"), "/vm/a.img");
        s.set(&format!("{ROOT}/5/768/mode"), "w");
        s
    }

    fn check(s: &MemStore, mode: Mode, ours: Target) -> Option<Holder> {
        let me = me();
        let scan = Scan {
            store: s,
            me: &me,
            frontend_id: 5,
            frontend_uuid: "/vm/five".into(),
            mode,
        };
        guest_holder(&scan, ours, &stat).unwrap()
    }

    fn other(s: &MemStore, dom: u32, path: &str, mode: &str) {
        s.set(&format!("{ROOT}/{dom}/832/physical-device-path"), path);
        s.set(&format!("{ROOT}/{dom}/832/mode"), mode);
    }

    #[test]
    fn alone_is_fine() {
        let s = store();
        assert_eq!(check(&s, Mode::Write, IMG), None);
        assert_eq!(check(&s, Mode::Read, DISK), None);
    }

    #[test]
    fn same_file_by_another_name_conflicts_rw() {
        let s = store();
        other(&s, 6, "/vm/link.img", "r");
        let h = check(&s, Mode::Write, IMG).unwrap();
        assert!(
            matches!(&h, Holder::Guest { domid, backend, .. }
                if domid == "6" && backend == &format!("{ROOT}/6/832")),
            "{h:?}"
        );
        // Read-only next to read-only is fine.
        assert_eq!(check(&s, Mode::Read, IMG), None);
        // The force mode is the caller's business; the scan itself still sees the user.
        assert!(check(&s, Mode::Force, IMG).is_some());
    }

    #[test]
    fn read_only_conflicts_only_with_writers() {
        let s = store();
        other(&s, 6, "/dev/diskid/DISK-X", "w");
        assert!(check(&s, Mode::Read, DISK).is_some());
        other(&s, 6, "/dev/diskid/DISK-X", "w!");
        assert_eq!(check(&s, Mode::Read, DISK), None);
        other(&s, 6, "/dev/diskid/DISK-X", "");
        assert!(
            check(&s, Mode::Read, DISK).is_some(),
            "unknown mode counts as writable"
        );
    }

    #[test]
    fn different_files_and_dead_paths_do_not_conflict() {
        let s = store();
        other(&s, 6, "/vm/other.img", "w");
        assert_eq!(check(&s, Mode::Write, IMG), None);
        other(&s, 6, "/elsewhere/a.img", "w");
        assert_eq!(
            check(&s, Mode::Write, IMG),
            None,
            "same inode, other filesystem"
        );
        other(&s, 6, "/gone.img", "w");
        assert_eq!(check(&s, Mode::Write, IMG), None);
        other(&s, 6, "", "w");
        assert_eq!(check(&s, Mode::Write, IMG), None);
        // A file is not the device it lives on.
        other(&s, 6, "/dev/ada1", "w");
        assert_eq!(check(&s, Mode::Write, IMG), None);
    }

    #[test]
    fn same_vm_and_stubdoms_may_share() {
        let s = store();
        // Another disk of our own guest.
        other(&s, 5, "/vm/a.img", "w");
        assert_eq!(check(&s, Mode::Write, IMG), None);
        // Our guest's stubdom.
        let s = store();
        other(&s, 7, "/vm/a.img", "w");
        assert_eq!(check(&s, Mode::Write, IMG), None);
        // A vanished domain (no vm) counts as the same VM, as upstream.
        let s = store();
        other(&s, 9, "/vm/a.img", "w");
        assert_eq!(check(&s, Mode::Write, IMG), None);
    }

    fn mount(dev: DevNum, ro: bool) -> Mount {
        Mount {
            dev,
            mount_point: "/mnt".into(),
            source: "/dev/ada1".into(),
            read_only: ro,
        }
    }

    #[test]
    fn mounts_block_devices_not_files() {
        let d = DISK.device().unwrap();
        let ro = [mount(d, true)];
        let rw = [mount(d, false)];
        assert!(mount_holder(DISK, &ro, Mode::Write).is_some());
        assert!(mount_holder(DISK, &ro, Mode::Read).is_none());
        assert!(mount_holder(DISK, &rw, Mode::Read).is_some());
        assert!(mount_holder(IMG, &rw, Mode::Write).is_none());
        assert!(mount_holder(Target::Device { rdev: 0x5b }, &rw, Mode::Write).is_none());
    }

    #[test]
    fn targets_from_real_metadata() {
        let dir = std::env::temp_dir().join(format!("xbh-fbsd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.img");
        std::fs::write(&f, b"x").unwrap();
        let l = dir.join("link.img");
        let _ = std::fs::remove_file(&l);
        std::os::unix::fs::symlink(&f, &l).unwrap();
        let a = Target::of(&std::fs::metadata(&f).unwrap()).unwrap();
        let b = Target::of(&std::fs::metadata(&l).unwrap()).unwrap();
        assert_eq!(a, b, "a symlink names the same file");
        assert!(matches!(a, Target::File { .. }));
        assert_eq!(Target::of(&std::fs::metadata(&dir).unwrap()), None);
        let null = Target::of(&std::fs::metadata("/dev/null").unwrap()).unwrap();
        assert!(matches!(null, Target::Device { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A scratch directory with an image, a symlink to it and a lock directory.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let d = std::env::temp_dir().join(format!("xbh-fbsd-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(d.join("lock")).unwrap();
            fs::write(d.join("a.img"), b"disk").unwrap();
            std::os::unix::fs::symlink(d.join("a.img"), d.join("link.img")).unwrap();
            Scratch(d)
        }
        fn path(&self, n: &str) -> String {
            self.0.join(n).to_str().unwrap().to_string()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Runs `add` for backend 5/768 with `params` and `mode`; `Ok` or the reported
    /// (`hotplug-status`, message).
    fn run_add(
        s: &MemStore,
        dir: &Scratch,
        params: &str,
        mode: &str,
        mounts: &[Mount],
    ) -> Result<(), (&'static str, String)> {
        let be_dir = format!("{ROOT}/5/768");
        s.unset(&format!("{be_dir}/physical-device-path"));
        s.set(&format!("{be_dir}/params"), params);
        s.set(&format!("{be_dir}/mode"), mode);
        s.set(&format!("{be_dir}/frontend-id"), "5");
        let be = Backend::new(s, me());
        let script = Script::new(dir.path("scripts/block"), vec![]);
        let mounts = mounts.to_vec();
        let lock_dir = dir.0.join("lock");
        let sys = System {
            mounts: &move || Ok(mounts.clone()),
            lock_dir: &lock_dir,
        };
        add(&be, &script, &sys).map_err(|e| crate::backend::describe(&e))
    }

    fn node(s: &MemStore, n: &str) -> Option<String> {
        s.read(&format!("{ROOT}/5/768/{n}")).unwrap()
    }

    #[test]
    fn add_publishes_the_real_path() {
        let dir = Scratch::new("add");
        let s = store();
        run_add(&s, &dir, &dir.path("link.img"), "w", &[]).unwrap();
        let real = fs::canonicalize(dir.path("a.img")).unwrap();
        assert_eq!(
            node(&s, "physical-device-path").as_deref(),
            real.to_str(),
            "symlinks resolved"
        );
        assert_eq!(node(&s, "hotplug-status").as_deref(), Some("connected"));
        assert!(
            fs::read_dir(dir.0.join("lock")).unwrap().next().is_none(),
            "lock released"
        );
        // A name without a slash is under /dev; devices are fine.
        run_add(&s, &dir, "null", "r", &[]).unwrap();
        assert_eq!(
            node(&s, "physical-device-path").as_deref(),
            Some("/dev/null")
        );
    }

    #[test]
    fn add_called_twice_changes_nothing() {
        let dir = Scratch::new("twice");
        let s = store();
        s.set(&format!("{ROOT}/5/768/physical-device-path"), "/old");
        let be = Backend::new(&s, me());
        let script = Script::new(dir.path("scripts/block"), vec![]);
        let sys = System {
            mounts: &|| Ok(vec![]),
            lock_dir: &dir.0,
        };
        s.set(&format!("{ROOT}/5/768/params"), "/nonexistent");
        add(&be, &script, &sys).unwrap();
        assert_eq!(node(&s, "physical-device-path").as_deref(), Some("/old"));
        assert_eq!(node(&s, "hotplug-status"), None);
    }

    #[test]
    fn add_refuses_bad_params_and_modes() {
        let dir = Scratch::new("bad");
        let s = store();
        let (st, msg) = run_add(&s, &dir, &dir.path("nope.img"), "w", &[]).unwrap_err();
        assert_eq!(st, "error");
        assert!(msg.contains("does not exist"), "{msg}");
        let (_, msg) = run_add(&s, &dir, &dir.path("lock"), "w", &[]).unwrap_err();
        assert!(msg.contains("a directory"), "{msg}");
        let (_, msg) = run_add(&s, &dir, &dir.path("a.img"), "rw?", &[]).unwrap_err();
        assert!(msg.contains("invalid mode"), "{msg}");
        s.set(&format!("{ROOT}/5/768/params"), "");
        let be = Backend::new(&s, me());
        let script = Script::new(dir.path("scripts/block"), vec![]);
        let sys = System {
            mounts: &|| Ok(vec![]),
            lock_dir: &dir.0,
        };
        let e = add(&be, &script, &sys).unwrap_err();
        assert!(e.to_string().contains("params is empty"), "{e}");
        assert_eq!(node(&s, "physical-device-path"), None);
    }

    #[test]
    fn add_refuses_read_only_files_read_write() {
        use std::os::unix::fs::PermissionsExt;
        let dir = Scratch::new("ro");
        let s = store();
        let img = dir.path("a.img");
        fs::set_permissions(&img, fs::Permissions::from_mode(0o444)).unwrap();
        let (st, msg) = run_add(&s, &dir, &img, "w", &[]).unwrap_err();
        assert_eq!(st, "busy");
        assert!(msg.contains("is read-only"), "{msg}");
        run_add(&s, &dir, &img, "r", &[]).unwrap();
    }

    #[test]
    fn add_refuses_a_disk_in_use() {
        let dir = Scratch::new("share");
        let s = store();
        // Ourselves from an earlier add must not count: start clean.
        s.unset(&format!("{ROOT}/5/768/physical-device-path"));
        other(&s, 6, &dir.path("link.img"), "w");
        let (st, msg) = run_add(&s, &dir, &dir.path("a.img"), "r", &[]).unwrap_err();
        assert_eq!(st, "busy");
        assert!(
            msg.contains("is mounted read-write in a guest domain (domain 6"),
            "{msg}"
        );
        assert_eq!(node(&s, "physical-device-path"), None);
        // w! skips the check, as upstream.
        run_add(&s, &dir, &dir.path("a.img"), "w!", &[]).unwrap();
        // A mounted device.
        let null = Target::of(&fs::metadata("/dev/null").unwrap()).unwrap();
        let rw = [mount(null.device().unwrap(), false)];
        let (st, msg) = run_add(&s, &dir, "/dev/null", "r", &rw).unwrap_err();
        assert_eq!(st, "busy");
        assert!(msg.contains("in the privileged domain (at /mnt)"), "{msg}");
        let ro = [mount(null.device().unwrap(), true)];
        run_add(&s, &dir, "/dev/null", "r", &ro).unwrap();
    }

    #[test]
    fn names_and_numbers() {
        assert_eq!(expand("ada1"), "/dev/ada1");
        assert_eq!(expand("/vm/a.img"), "/vm/a.img");
        assert_eq!(split_dev(0x1_0000_005a), DevNum::new(1, 0x5a));
        assert_eq!(IMG.device(), None);
    }
}
