//! The `block` script (interface doc §4.1-§4.5), written once for every dom0 OS and
//! generic over the platform (`platform::Platform`), which says only what differs.
//!
//! add:
//! 1. nothing if the backend is published already (libxl may call add twice);
//! 2. classify `params` once (`Platform::classify`); what is neither a device nor a file
//!    goes to the `block-<type>` script, or is refused;
//! 3. a device (phy; on FreeBSD also a file used as is): under the `block` lock, the
//!    sharing check on it and its related devices, then publish;
//! 4. a file: under the `block` lock, a left-over record of this backend is undone, the
//!    backend must still be in InitWait, the file is opened in the requested mode, the
//!    devices already made from it go through the sharing check, and a new device is made
//!    (loop, vnd) with its remove record written before it is bound; then publish, undoing
//!    the attach if that fails.
//!
//! remove: the record's device is detached if it is still ours; without a record, a device
//! named by the backend's nodes (upstream's attach) is, if `params` still backs it; a
//! `params` of another type goes to its `block-<type>` script.
//!
//! Inputs of Xen 4.19 and later (`xen-4.19-and-later.md` A.3):
//! * a tapback disk (`vbd3`) is never classified: it goes to `block-tap`, or is refused;
//! * a CD-ROM image (`device-type` `cdrom`), also libxl's empty drive (a zero-length,
//!   mode-0400 `<XEN_RUN_DIR>/empty-cdrom.<domid>`), gets a read-only loop whatever `mode`
//!   says (a device CD-ROM is blkback's to open by `mode`);
//! * a stubdom media change (remove, then add on the same backend path at once) needs
//!   nothing special: remove deletes its record whether or not the kernel detached the
//!   loop at once, and a loop still running down is nobody's use of the file.

use anyhow::{Context, Result, anyhow, bail};

use super::lease::{self, AddLease};
use crate::backend::Backend;
use crate::invocation::Action;
use crate::lock::{self, Lock};
use crate::log;
use crate::mode::Mode;
use crate::platform::{Device, FileTarget, Identity, LeaseDisk, LegacyNodes, Platform, Target};
use crate::record::Record;
use crate::report::{busy, gone};
use crate::request::{
    AddNodes, Frontend, read_only_file, read_only_file_because, refused_write, require_init_wait,
    wait_for_init_wait,
};
use crate::script::Script;
use crate::sharing::{self, SharingCheck};
use crate::watchdog;

/// Runs `block add` or `block remove` for `be` on platform `p`.
pub fn run<P: Platform>(p: &P, action: Action, be: &Backend, script: &Script) -> Result<()> {
    match action {
        Action::Add => add(p, be, script),
        Action::Remove => remove(p, be, script),
    }
}

/// What `params` names, once it is known to be ours.
enum Ours {
    Device(Device),
    File(FileTarget),
}

fn add<P: Platform>(p: &P, be: &Backend, script: &Script) -> Result<()> {
    if is_tapback(be, None) {
        return Err(hand_over_to_block_tap(be, script, None));
    }
    let Some(nodes) = AddNodes::read(be, P::PUBLISHED)? else {
        return Ok(());
    };
    if is_tapback(be, nodes.ty.as_deref()) {
        return Err(hand_over_to_block_tap(be, script, Some(&nodes.params)));
    }
    let target = match p.classify(&nodes.params)? {
        Target::Device(d) => Ours::Device(d),
        Target::File(f) => Ours::File(f),
        Target::Other { what } => {
            return Err(script.hand_over(&nodes.params, &what, nodes.ty.as_deref()));
        }
    };
    let mode = match &target {
        Ours::File(_) => read_only_if_cdrom(be, &nodes.mode)?,
        // blkback opens a device by `mode` (and a guest may then write a CD-ROM): its
        // mode stands, for the sharing check too.
        Ours::Device(_) => nodes.mode.as_str(),
    };
    let check = Frontend::read(be, mode)?.sharing_check(be, p);
    match target {
        Ours::Device(dev) => add_device(p, be, &check, dev),
        Ours::File(file) => add_file(p, be, &check, file),
    }
}

/// libxl's backend kind and `type` of a tapback (blktap3) disk, Xen 4.19+
/// (`backendtype=tap`; libxl_disk.c `libxl__device_from_disk`, libxl_device.c
/// `libxl__device_disk_string_of_backend`).
const TAPBACK_TYPE: &str = "vbd3";

/// The script libxl runs for tapback disks by default (libxl_disk.c `device_disk_add`).
const TAPBACK_SCRIPT: &str = "block-tap";

/// Whether `be` is a tapback disk: its path is under `backend/vbd3` (`XENBUS_TYPE=vbd3`),
/// or its `type` node (`ty`, when read) is `vbd3`.
fn is_tapback(be: &Backend, ty: Option<&str>) -> bool {
    be.path.type_dir.rsplit('/').next() == Some(TAPBACK_TYPE) || ty == Some(TAPBACK_TYPE)
}

/// A tapback disk is `block-tap`'s: its `params` (`aio:<path>`, `vhd:<path>`) is never
/// classified, no loop is made, no `physical-device` written (tapback rejects any whose
/// major is not blktap2's, and waits for `hotplug-status=connected`, which only
/// `block-tap` can give it: blktap `tapback/backend.c`, `frontend.c`). Hands over to
/// `block-tap` in our own script directory (returns only if the exec fails), else the
/// refusal naming it.
fn hand_over_to_block_tap(be: &Backend, script: &Script, params: Option<&str>) -> anyhow::Error {
    match script.helper_named(TAPBACK_SCRIPT) {
        Some(helper) => script.exec(&helper),
        None => anyhow!(
            "{} is a tapback ({TAPBACK_TYPE}) disk{}: it needs the {TAPBACK_SCRIPT} script, \
             which is not installed in {}; block does not attach tapback disks",
            be.path.path,
            params
                .map(|p| format!(" (params {p:?})"))
                .unwrap_or_default(),
            script.dir.display()
        ),
    }
}

/// The mode a file is attached and checked with: `r` for a CD-ROM (`device-type`
/// `cdrom`) whatever `mode` asks, as QEMU's Xen CD-ROM always is (`xen-block.c`
/// `xen_cdrom_realize`: `VDISK_READONLY`); xl never asks otherwise (libxlu_disk.c clears
/// `readwrite` for every CD-ROM). libxl's empty drive, a mode-0400 file, would otherwise
/// be refused as read-only. The loop is then read-only whatever blkback is told: it
/// refuses every write (EPERM) even to an opener for writing. `device-type` is read only
/// when `mode` asks for writing.
fn read_only_if_cdrom<'m>(be: &Backend, mode: &'m str) -> Result<&'m str> {
    if !Mode::parse_request(mode).is_ok_and(Mode::writable) {
        return Ok(mode);
    }
    if be.read("device-type")?.as_deref() != Some("cdrom") {
        return Ok(mode);
    }
    log::debug(&format!(
        "{}: a CD-ROM with mode {mode:?}: attached read-only",
        be.path.path
    ));
    Ok("r")
}

fn claim_lock<P: Platform>(p: &P) -> Result<Lock> {
    Ok(watchdog::claim_lock(&p.lock_dir(), lock::BLOCK)?)
}

fn log_held(lock: &Lock) {
    // bench/run reads this line.
    log::debug(&format!(
        "block lock held for {} us",
        lock.held_for().as_micros()
    ));
}

fn add_device<P: Platform>(
    p: &P,
    be: &Backend,
    check: &SharingCheck<P>,
    dev: Device,
) -> Result<()> {
    let seq = p.diskseq(&dev);
    let noun = if dev.file_mode.is_some() {
        "File"
    } else {
        "Device"
    };
    // A file used as is (FreeBSD): refused read-write when it cannot be written.
    if let Some(perm) = dev.file_mode
        && check.mode.writable()
    {
        if perm & 0o222 == 0 {
            return Err(read_only_file(&dev.path));
        }
        if let Err(e) = p.open_for_writing(&dev)
            && refused_write(&e)
        {
            return Err(read_only_file_because(&dev.path, e));
        }
    }
    let lock = claim_lock(p)?;
    if check.mode != Mode::Force
        && let Some(h) = check.check(&p.related(&dev)?)?
    {
        let what = if h.ident() == dev.ident {
            format!("{noun} {}", dev.path)
        } else {
            p.related_what(&dev, h.dev())
        };
        return Err(busy(sharing::busy_message(&what, check.mode, &h)));
    }
    let pd = p.format_physical_device(dev.ident);
    // --- cluster lease (issue 15): after the local check, recorded before publishing.
    let key = be.path.record_key();
    let lease = AddLease::take(p, LeaseDisk::Device(&dev), check, &key)?;
    lease.save_phy(p, be, &key, &dev.path)?;
    be.write_dev(None, &dev.path, pd.as_deref(), seq)
        .inspect_err(|_| lease.forget_phy(p, &key))?;
    lease.keep();
    // --- end cluster lease
    log_held(&lock);
    Ok(())
}

fn add_file<P: Platform>(
    p: &P,
    be: &Backend,
    check: &SharingCheck<P>,
    file: FileTarget,
) -> Result<()> {
    // Outside the lock: a backend still Initialising is waited for (issue 11 point 5).
    wait_for_init_wait(be)?;
    let lock = claim_lock(p)?;
    let key = be.path.record_key();
    // A record for this backend path without a published device is an attach that never
    // finished (killed, or the backend was torn down and re-created): that device belongs
    // to no one now. Detach it (with its identity checks) instead of forgetting it.
    if let Some(old) = p.load_record(&key)? {
        log::err(&format!("{key}: cleaning up an unfinished earlier attach"));
        p.detach_recorded(&old)?;
        lease::release(p, &old)?; // cluster lease (issue 15)
        p.delete_record(&key)?;
    }
    require_init_wait(be)?;
    let path = file.path.as_str();
    // Upstream's check, for `w` only: `w!` is the administrator's "I know".
    if check.mode == Mode::Write && file.perm & 0o222 == 0 {
        return Err(read_only_file(path));
    }
    let read_only = check.mode == Mode::Read;
    let opened = match p.open_file(&file, read_only) {
        Ok(o) => o,
        Err(e) if !read_only && refused_write(&e) => {
            return Err(read_only_file_because(path, e));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open {path}")),
    };
    if (opened.dev, opened.ino) != (file.dev, file.ino) {
        bail!("{path} was replaced while being attached");
    }
    if check.mode != Mode::Force {
        // Any use of a device already made from the file is a use of the file; so is the
        // file opened by QEMU or tapback (issue 11 point 2).
        let made = p.attached_by(&file)?;
        let own = p.file_identity(&file);
        let mut cands: Vec<Identity> = own.into_iter().collect();
        for a in &made {
            for r in p.related_to_attachment(a.dev) {
                if !cands.contains(&Identity::Dev(r)) {
                    cands.push(Identity::Dev(r));
                }
            }
        }
        if let Some(h) = check.check(&cands)? {
            if Some(h.ident()) == own {
                let what = format!("File {path}");
                return Err(busy(sharing::busy_message(&what, check.mode, &h)));
            }
            let via = made
                .iter()
                .find(|a| a.dev == h.dev())
                .or_else(|| {
                    made.iter()
                        .find(|a| p.related_to_attachment(a.dev).contains(&h.dev()))
                })
                .map(|a| a.label.clone())
                .unwrap_or_else(|| h.dev().to_string());
            let what = format!("File {path} {} {via},\nwhich", P::ATTACHED_VERB);
            return Err(busy(sharing::busy_message(&what, check.mode, &h)));
        }
    }

    // --- cluster lease (issue 15): after the local check, before the device is made;
    // named in the remove record, given back by its drop if the add fails.
    let lease = AddLease::take(p, LeaseDisk::File(&file), check, &key)?;
    let save = |r: &Record| p.save_record(&key, &lease.stamp(r)?);
    // --- end cluster lease
    let attached = p
        .attach(&file, opened, read_only, &be.path.path, &save)
        .inspect_err(|_| {
            let _ = p.delete_record(&key);
        })?;
    let undo = |e: anyhow::Error| -> anyhow::Error {
        // The node naming the device may have been written before the failure.
        if let Err(r) = be.store.rm(&be.path.node(P::ATTACHED_NODE)) {
            log::err(&format!("could not remove {}: {r:#}", P::ATTACHED_NODE));
        }
        if let Err(d) = p.undo_attach(&attached) {
            log::err(&format!(
                "could not undo attach of {}: {d:#}",
                attached.path
            ));
            return e;
        }
        let _ = p.delete_record(&key);
        e
    };
    save(&attached.record).map_err(undo)?;
    let pd = p.format_physical_device(Identity::Dev(attached.rdev));
    be.write_dev(
        Some((P::ATTACHED_NODE, &attached.path)),
        &attached.path,
        pd.as_deref(),
        attached.diskseq,
    )
    .map_err(undo)?;
    lease.keep(); // cluster lease (issue 15)
    log_held(&lock);
    Ok(())
}

fn remove<P: Platform>(p: &P, be: &Backend, script: &Script) -> Result<()> {
    // A tapback disk is block-tap's to undo; without it, nothing of ours was made (add
    // refused it), and the flow below finds nothing.
    if is_tapback(be, None)
        && let Some(helper) = script.helper_named(TAPBACK_SCRIPT)
    {
        return Err(script.exec(&helper));
    }
    let key = be.path.record_key();
    if let Some(rec) = p.load_record(&key)? {
        if rec.kind() == P::RECORD_KIND {
            let _lock = claim_lock(p)?;
            p.detach_recorded(&rec)?;
            lease::release(p, &rec)?; // cluster lease (issue 15): once the device is gone
            p.delete_record(&key)?;
        } else if let Record::Phy(_) = rec {
            // --- cluster lease (issue 15): a phy backend's record only names its lease.
            let _lock = claim_lock(p)?;
            lease::release(p, &rec)?;
            p.delete_record(&key)?;
        } else {
            // Written by another personality (block-iscsi, ...) for this backend: its own
            // remove undoes it, not ours.
            log::err(&format!(
                "{key}: the record is a {} attachment, not a {}: left for its own script",
                rec.kind(),
                P::RECORD_KIND
            ));
        }
        return finish_remove::<P>(be);
    }
    // No record: a phy backend, one attached by the shell script, or nothing we know.
    let target = match be.read("params")? {
        Some(params) => Some(p.classify(&params)?),
        // Nothing to undo, and nowhere to report to (issue 11 point 3).
        None if !be.exists()? => return Err(gone(&be.path)),
        None => None,
    };
    let file = match &target {
        // phy: nothing was attached.
        Some(Target::Device(_)) => return finish_remove::<P>(be),
        Some(Target::Other { .. }) => {
            let ty = be.read("type")?;
            let helper = if is_tapback(be, ty.as_deref()) {
                script.helper_named(TAPBACK_SCRIPT)
            } else {
                script.helper_for(ty.as_deref())
            };
            if let Some(helper) = helper {
                return Err(script.exec(&helper));
            }
            None
        }
        Some(Target::File(f)) => Some(f),
        None => None,
    };
    match be.read(P::ATTACHED_NODE)? {
        Some(node) => {
            let nodes = LegacyNodes {
                node,
                physical_device: be.read("physical-device")?,
                diskseq: be.read("diskseq")?,
            };
            let _lock = claim_lock(p)?;
            p.detach_legacy(&nodes, file)?;
        }
        None => log::debug(&format!(
            "{}: no record and no {} node: nothing to detach",
            be.path.path,
            P::ATTACHED_NODE
        )),
    }
    finish_remove::<P>(be)
}

/// Upstream's NetBSD script removes the backend directory itself; libxl does elsewhere.
fn finish_remove<P: Platform>(be: &Backend) -> Result<()> {
    if P::REMOVES_BACKEND {
        log::debug(&format!("Removing {} from xenstore.", be.path.path));
        be.store.rm(&be.path.path)?;
    }
    Ok(())
}

/// The applet through the platform trait: one table of add, remove and sharing cases, run
/// under Linux, NetBSD and FreeBSD rules (`platform::fake`), with the in-memory store and
/// the real sharing check (so NetBSD's decimal `physical-device` of another backend is
/// parsed by NetBSD's real parser on the way).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::devnum::DevNum;
    use crate::invocation::BackendPath;
    use crate::mountinfo::Mount;
    use crate::platform::fake::{
        Fake, FreeBsdRules, LinuxRules, MADE_MAJOR, Named, NetBsdRules, Rules,
    };
    use crate::report::describe;
    use crate::xs::Store;
    use crate::xs::mem::MemStore;

    const ROOT: &str = "/local/domain/0/backend/vbd";
    const BE: &str = "/local/domain/0/backend/vbd/5/768";
    const DISK: DevNum = DevNum::new(8, 16);
    const PART: DevNum = DevNum::new(8, 17);
    const IMG: &str = "/vm/a.img";
    const IMG_ID: (u64, u64) = (0x71, 12);

    struct World<R: Rules> {
        p: Fake<R>,
        s: MemStore,
    }

    impl<R: Rules> World<R> {
        fn new(tag: &str, params: &str, mode: &str) -> World<R> {
            let p = Fake::<R>::new(tag);
            p.name("/dev/sdb", Named::Dev(DISK));
            p.name("/dev/sdb1", Named::Dev(PART));
            p.related.borrow_mut().insert(DISK, vec![PART]);
            let img = Named::File {
                dev: IMG_ID.0,
                ino: IMG_ID.1,
                perm: 0o644,
            };
            p.name(IMG, img);
            p.name("/vm/link.img", img);
            p.name(
                "/vm/ro.img",
                Named::File {
                    dev: 0x71,
                    ino: 13,
                    perm: 0o444,
                },
            );
            p.name("/vm", Named::Dir);
            let s = MemStore::default();
            s.set(&format!("{BE}/params"), params);
            s.set(&format!("{BE}/mode"), mode);
            s.set(&format!("{BE}/frontend-id"), "5");
            s.set(&format!("{BE}/state"), "2");
            s.set("/local/domain/5/vm", "/vm/five");
            s.set("/local/domain/6/vm", "/vm/six");
            World { p, s }
        }

        /// Another guest's backend using `dev`, spelled as this OS's backends spell it:
        /// `physical-device` only (Linux hex, NetBSD decimal), or `physical-device-path`
        /// (FreeBSD).
        fn guest_uses_dev(&self, dom: u32, path: &str, dev: DevNum, mode: &str) {
            let be = format!("{ROOT}/{dom}/832");
            match R::format(dev) {
                Some(pd) => self.s.set(&format!("{be}/physical-device"), &pd),
                None => self.s.set(&format!("{be}/physical-device-path"), path),
            }
            self.s.set(&format!("{be}/mode"), mode);
        }

        /// Another guest's backend using the image (through a device made from it where
        /// the OS makes one). Returns that device's label.
        fn guest_uses_image(&self, dom: u32, mode: &str) -> String {
            if R::ATTACHES {
                let d = DevNum::new(MADE_MAJOR, 3);
                self.p.made.borrow_mut().insert(d, IMG_ID);
                self.guest_uses_dev(dom, "/dev/made3", d, mode);
                format!("/dev/made3 ({d})")
            } else {
                self.guest_uses_dev(dom, "/vm/link.img", DevNum::new(0, 0), mode);
                String::new()
            }
        }

        fn run(&self, action: Action) -> std::result::Result<(), (&'static str, String)> {
            let be = Backend::new(&self.s, BackendPath::parse(BE, "backend", "vbd").unwrap());
            let script = Script::new("/nonexistent/scripts/block".into(), vec![]);
            super::run(&self.p, action, &be, &script).map_err(|e| describe(&e))
        }

        fn node(&self, n: &str) -> Option<String> {
            self.s.get(&format!("{BE}/{n}"))
        }

        fn record(&self) -> Option<Record> {
            self.p.records.borrow().values().next().cloned()
        }
    }

    enum Expect {
        /// Published at this path (`made` for the device made from the file).
        Connected(&'static str),
        Busy(String),
        Error(&'static str),
    }

    struct Case<R: Rules> {
        name: &'static str,
        params: &'static str,
        mode: &'static str,
        setup: fn(&World<R>) -> String,
        expect: fn(&str) -> Expect,
    }

    fn nothing<R: Rules>(_: &World<R>) -> String {
        String::new()
    }

    fn cases<R: Rules>() -> Vec<Case<R>> {
        vec![
            Case {
                name: "phy alone",
                params: "sdb",
                mode: "w",
                setup: nothing,
                expect: |_| Expect::Connected("/dev/sdb"),
            },
            Case {
                name: "phy used read-write by another guest",
                params: "/dev/sdb",
                mode: "r",
                setup: |w| {
                    w.guest_uses_dev(6, "/dev/sdb", DISK, "w");
                    String::new()
                },
                expect: |_| {
                    Expect::Busy(format!(
                        "Device /dev/sdb is mounted read-write in a guest domain (domain 6, \
                         {ROOT}/6/832),\nand so cannot be mounted read-only now."
                    ))
                },
            },
            Case {
                name: "phy shared read-only",
                params: "/dev/sdb",
                mode: "r",
                setup: |w| {
                    w.guest_uses_dev(6, "/dev/sdb", DISK, "r");
                    String::new()
                },
                expect: |_| Expect::Connected("/dev/sdb"),
            },
            Case {
                name: "phy of the same VM",
                params: "/dev/sdb",
                mode: "w",
                setup: |w| {
                    w.guest_uses_dev(6, "/dev/sdb", DISK, "w");
                    w.s.set("/local/domain/6/vm", "/vm/five");
                    String::new()
                },
                expect: |_| Expect::Connected("/dev/sdb"),
            },
            Case {
                name: "phy whose partition is mounted in dom0",
                params: "/dev/sdb",
                mode: "w",
                setup: |w| {
                    w.p.mounts.borrow_mut().push(Mount {
                        dev: PART,
                        mount_point: "/data".into(),
                        source: "/dev/sdb1".into(),
                        read_only: true,
                    });
                    String::new()
                },
                expect: |_| {
                    Expect::Busy(
                        "Device /dev/sdb (through the related device 8:11) is mounted in the \
                         privileged domain (at /data),\nand so cannot be mounted by a guest."
                            .into(),
                    )
                },
            },
            Case {
                name: "phy in use, w! skips the check",
                params: "/dev/sdb",
                mode: "w!",
                setup: |w| {
                    w.guest_uses_dev(6, "/dev/sdb", DISK, "w");
                    String::new()
                },
                expect: |_| Expect::Connected("/dev/sdb"),
            },
            Case {
                name: "file alone",
                params: IMG,
                mode: "w",
                setup: nothing,
                expect: |_| Expect::Connected(if R::ATTACHES { "/dev/made0" } else { IMG }),
            },
            Case {
                name: "file used by another guest",
                params: IMG,
                mode: "w",
                setup: |w| w.guest_uses_image(6, "r"),
                expect: |via| {
                    let what = if R::ATTACHES {
                        format!("File {IMG} {} {via},\nwhich", R::ATTACHED_VERB)
                    } else {
                        format!("File {IMG}")
                    };
                    Expect::Busy(format!(
                        "{what} is mounted in a guest domain (domain 6, {ROOT}/6/832),\n\
                         and so cannot be mounted now."
                    ))
                },
            },
            Case {
                name: "file shared read-only",
                params: IMG,
                mode: "r",
                setup: |w| w.guest_uses_image(6, "r"),
                expect: |_| Expect::Connected(if R::ATTACHES { "/dev/made0" } else { IMG }),
            },
            Case {
                name: "read-only file asked read-write",
                params: "/vm/ro.img",
                mode: "w",
                setup: nothing,
                expect: |_| {
                    Expect::Busy(
                        "File /vm/ro.img is read-only, and so I will not\nmount it read-write \
                         in a guest domain."
                            .into(),
                    )
                },
            },
            Case {
                name: "read-only file system",
                params: IMG,
                mode: "w",
                setup: |w| {
                    w.p.open_errno.set(Some(nix::libc::EROFS));
                    String::new()
                },
                expect: |_| {
                    Expect::Busy(format!(
                        "File {IMG} is read-only, and so I will not\nmount it read-write in a \
                         guest domain.: {}",
                        std::io::Error::from_raw_os_error(nix::libc::EROFS)
                    ))
                },
            },
            Case {
                name: "missing params",
                params: "/vm/nope.img",
                mode: "w",
                setup: nothing,
                expect: |_| Expect::Error("is a path that does not exist (/vm/nope.img)"),
            },
            Case {
                name: "a directory of an unknown type",
                params: "/vm",
                mode: "w",
                setup: |w| {
                    w.s.set(&format!("{BE}/type"), "weird");
                    String::new()
                },
                expect: |_| Expect::Error("there is no block-weird script for type \"weird\""),
            },
            Case {
                name: "invalid mode",
                params: "/dev/sdb",
                mode: "x",
                setup: nothing,
                expect: |_| Expect::Error("invalid mode"),
            },
            Case {
                name: "frontend-id disagreeing with the path",
                params: "/dev/sdb",
                mode: "w",
                setup: |w| {
                    w.s.set(&format!("{BE}/frontend-id"), "6");
                    String::new()
                },
                expect: |_| Expect::Error("is domain 5's backend"),
            },
            Case {
                name: "publish fails",
                params: IMG,
                mode: "w",
                setup: |w| {
                    w.s.fail_at(&format!("{BE}/physical-device-path"));
                    String::new()
                },
                // (FreeBSD reads that node first, to see if add ran already.)
                expect: |_| {
                    Expect::Error(
                        "xenstore node /local/domain/0/backend/vbd/5/768/physical-device-path",
                    )
                },
            },
        ]
    }

    fn table<R: Rules>() {
        for c in cases::<R>() {
            let w = World::<R>::new(c.name, c.params, c.mode);
            let via = (c.setup)(&w);
            let made_before = w.p.made.borrow().len();
            let what = format!("{}: {}", R::NAME, c.name);
            match ((c.expect)(&via), w.run(Action::Add)) {
                (Expect::Connected(path), Ok(())) => {
                    assert_eq!(
                        w.node("hotplug-status").as_deref(),
                        Some("connected"),
                        "{what}"
                    );
                    assert_eq!(
                        w.node("physical-device-path").as_deref(),
                        Some(path),
                        "{what}"
                    );
                    let ident = w.p.stat_identity(path).unwrap();
                    assert_eq!(w.node("physical-device"), R::format(ident.dev()), "{what}");
                    let made = path.starts_with("/dev/made");
                    assert_eq!(
                        w.node(R::ATTACHED_NODE).is_some(),
                        made,
                        "{what}: the made device is named"
                    );
                    assert_eq!(w.record().is_some(), made, "{what}: record");
                    if let Some(r) = w.record() {
                        assert_eq!(r.kind(), R::RECORD_KIND, "{what}");
                        let node = match &r {
                            Record::Loop(l) => l.device.path.clone(),
                            Record::Vnd(v) => v.node.clone().unwrap_or_default(),
                            _ => String::new(),
                        };
                        assert_eq!(node, path, "{what}");
                        assert_eq!(r.backend(), Some(BE), "{what}");
                    }
                    // Called again (libxl may): nothing changes.
                    let calls = w.p.calls().len();
                    w.run(Action::Add).unwrap();
                    assert_eq!(w.p.calls().len(), calls, "{what}: second add");
                    // Remove undoes it all.
                    w.run(Action::Remove).unwrap();
                    assert_eq!(w.p.made.borrow().len(), made_before, "{what}: remove");
                    assert_eq!(w.record(), None, "{what}: record after remove");
                    assert_eq!(
                        w.s.list(BE).unwrap().is_none(),
                        R::REMOVES_BACKEND,
                        "{what}: backend directory after remove"
                    );
                }
                (expect, Err((status, msg))) => {
                    match expect {
                        Expect::Busy(m) => {
                            assert_eq!((status, msg.as_str()), ("busy", m.as_str()), "{what}")
                        }
                        Expect::Error(m) => {
                            assert_eq!(status, "error", "{what}: {msg}");
                            assert!(msg.contains(m), "{what}: {msg}");
                        }
                        Expect::Connected(_) => panic!("{what}: refused: {status} {msg}"),
                    }
                    // Nothing left behind.
                    assert_eq!(w.node("physical-device-path"), None, "{what}");
                    assert_eq!(w.node("physical-device"), None, "{what}");
                    assert_eq!(w.node(R::ATTACHED_NODE), None, "{what}");
                    assert_eq!(w.record(), None, "{what}: record");
                    assert_eq!(w.p.made.borrow().len(), made_before, "{what}: made");
                }
                (_, Ok(())) => panic!("{what}: added, but should have been refused"),
            }
        }
    }

    #[test]
    fn table_under_linux_rules() {
        table::<LinuxRules>();
    }

    #[test]
    fn table_under_netbsd_rules() {
        table::<NetBsdRules>();
    }

    #[test]
    fn table_under_freebsd_rules() {
        table::<FreeBsdRules>();
    }

    #[test]
    fn netbsd_decimal_physical_device_reaches_the_sharing_check() {
        // 8:16 is makedev(8, 16) = 2064 in NetBSD's spelling; Linux's parser would read
        // "2064" as nothing, so only NetBSD's parser finds the holder.
        let w = World::<NetBsdRules>::new("decimal", "/dev/sdb", "w");
        w.s.set(&format!("{ROOT}/6/832/physical-device"), "2064");
        let (status, msg) = w.run(Action::Add).unwrap_err();
        assert_eq!(status, "busy", "{msg}");
        assert!(msg.contains("(domain 6,"), "{msg}");
        let w = World::<LinuxRules>::new("decimal", "/dev/sdb", "w");
        w.s.set(&format!("{ROOT}/6/832/physical-device"), "2064");
        w.run(Action::Add).unwrap();
    }

    #[test]
    fn an_unfinished_attach_is_undone_before_a_new_one() {
        let w = World::<LinuxRules>::new("stale", IMG, "w");
        w.run(Action::Add).unwrap();
        // The nodes are gone (backend re-created) but the record and device stay.
        w.s.rm(BE).unwrap();
        for (n, v) in [
            ("params", IMG),
            ("mode", "w"),
            ("frontend-id", "5"),
            ("state", "2"),
        ] {
            w.s.set(&format!("{BE}/{n}"), v);
        }
        w.run(Action::Add).unwrap();
        let calls = w.p.calls();
        assert_eq!(
            calls
                .iter()
                .filter(|c| c.starts_with("detach /dev/made0"))
                .count(),
            1,
            "{calls:?}"
        );
        assert_eq!(w.p.made.borrow().len(), 1);
    }

    #[test]
    fn a_file_add_racing_a_remove_is_refused() {
        let w = World::<LinuxRules>::new("closing", IMG, "w");
        w.s.set(&format!("{BE}/state"), "5");
        let (status, msg) = w.run(Action::Add).unwrap_err();
        assert_eq!(status, "error");
        assert!(
            msg.contains("Path closed or removed during hotplug add"),
            "{msg}"
        );
        assert!(w.p.made.borrow().is_empty());
    }

    // Issue 11 point 1: driver domains and same VM on positive evidence.

    /// Guest 6 holds /dev/sdb read-write; guest 5 (us) asks for it read-write.
    fn driver_domain<R: Rules>(tag: &str) -> World<R> {
        let w = World::<R>::new(tag, "/dev/sdb", "w");
        w.guest_uses_dev(6, "/dev/sdb", DISK, "w");
        w
    }

    #[test]
    fn unknown_vms_are_other_vms_and_a_dead_domain_holds_nothing() {
        // Both vm nodes unreadable (EACCES, as in a driver domain): busy, saying why.
        let w = driver_domain::<LinuxRules>("eacces");
        w.s.answer_at("/local/domain/5/vm", "EACCES");
        w.s.answer_at("/local/domain/6/vm", "EACCES");
        let (status, msg) = w.run(Action::Add).unwrap_err();
        assert_eq!(status, "busy", "{msg}");
        assert!(msg.contains("(domain 6, "), "{msg}");
        assert!(
            msg.contains("The VM of domain 5 and domain 6 is unknown") && msg.contains("w!"),
            "{msg}"
        );
        assert_eq!(w.node("physical-device"), None);
        // Both domains exist without vm: the same.
        let w = driver_domain::<LinuxRules>("novm");
        w.s.unset("/local/domain/5/vm");
        w.s.unset("/local/domain/6/vm");
        w.s.set("/local/domain/5/name", "five");
        w.s.set("/local/domain/6/name", "six");
        let (status, msg) = w.run(Action::Add).unwrap_err();
        assert_eq!(status, "busy", "{msg}");
        // Only the holder's unknown: named alone.
        let w = driver_domain::<LinuxRules>("other-unknown");
        w.s.answer_at("/local/domain/6/vm", "EACCES");
        let (_, msg) = w.run(Action::Add).unwrap_err();
        assert!(msg.contains("The VM of domain 6 is unknown"), "{msg}");
        // The holder's domain is gone entirely: dead, its leftover backend holds nothing.
        let w = driver_domain::<LinuxRules>("dead");
        w.s.answer_at("/local/domain/5/vm", "EACCES");
        w.s.rm("/local/domain/6").unwrap();
        w.run(Action::Add).unwrap();
        assert_eq!(w.node("hotplug-status").as_deref(), Some("connected"));
        // w! overrides, unknown or not.
        let w = World::<LinuxRules>::new("force", "/dev/sdb", "w!");
        w.guest_uses_dev(6, "/dev/sdb", DISK, "w");
        w.s.answer_at("/local/domain/6/vm", "EACCES");
        w.run(Action::Add).unwrap();
        // Our own unreadable vm alone is no error, and read-only sharing is unchanged.
        let w = World::<LinuxRules>::new("alone", "/dev/sdb", "w");
        w.s.answer_at("/local/domain/5/vm", "EACCES");
        w.run(Action::Add).unwrap();
        let w = World::<LinuxRules>::new("ro", "/dev/sdb", "r");
        w.guest_uses_dev(6, "/dev/sdb", DISK, "r");
        w.s.answer_at("/local/domain/5/vm", "EACCES");
        w.s.answer_at("/local/domain/6/vm", "EACCES");
        w.run(Action::Add).unwrap();
        // Another disk of our own guest is ours, whatever its vm says.
        let w = World::<LinuxRules>::new("own", "/dev/sdb", "w");
        w.s.answer_at("/local/domain/5/vm", "EACCES");
        w.s.set(&format!("{ROOT}/5/832/physical-device"), "8:10");
        w.s.set(&format!("{ROOT}/5/832/mode"), "w");
        w.run(Action::Add).unwrap();
        // Another error than EACCES on a vm is an error, not an unknown.
        let w = driver_domain::<LinuxRules>("broken");
        w.s.fail_at("/local/domain/6/vm");
        let (status, msg) = w.run(Action::Add).unwrap_err();
        assert_eq!(status, "error", "{msg}");
    }

    // Issue 11 point 2: holders of other backend kinds.

    #[test]
    fn qemu_and_tapback_holders_are_found_by_their_params() {
        let kinds = [
            ("qdisk", "aio:/vm/link.img", "QEMU"),
            ("qdisk", "qcow2:/vm/a.img", "QEMU"),
            ("vbd3", "vhd:/vm/link.img", "tapback"),
            ("vbd3", "aio:/vm/a.img", "tapback"),
        ];
        for (kind, params, server) in kinds {
            let w = World::<LinuxRules>::new("qemu", IMG, "w");
            let be = format!("/local/domain/0/backend/{kind}/6/51712");
            w.s.set(&format!("{be}/params"), params);
            w.s.set(&format!("{be}/mode"), "w");
            w.s.set(&format!("{be}/state"), "4");
            let (status, msg) = w.run(Action::Add).unwrap_err();
            assert_eq!(status, "busy", "{kind} {params}: {msg}");
            assert_eq!(
                msg,
                format!(
                    "File {IMG} is mounted in a guest domain (domain 6, {be}, served by \
                     {server}),\nand so cannot be mounted now."
                ),
                "{kind} {params}"
            );
            assert!(w.p.made.borrow().is_empty());
            // Read-only next to a read-only QEMU user is fine.
            let w = World::<LinuxRules>::new("qemu-ro", IMG, "r");
            w.s.set(&format!("{be}/params"), params);
            w.s.set(&format!("{be}/mode"), "r");
            w.run(Action::Add).unwrap();
        }
        // A device served by QEMU (phy through qdisk) is found by number.
        let w = World::<LinuxRules>::new("qemu-phy", "/dev/sdb", "w");
        let be = "/local/domain/0/backend/qdisk/6/51712";
        w.s.set(&format!("{be}/params"), "raw:/dev/sdb");
        w.s.set(&format!("{be}/mode"), "w");
        let (status, msg) = w.run(Action::Add).unwrap_err();
        assert_eq!(status, "busy", "{msg}");
        assert!(msg.contains("served by QEMU"), "{msg}");
        // Other files, other kinds that name no disk, unparsable params: no holder.
        let w = World::<LinuxRules>::new("qemu-other", IMG, "w");
        for (kind, params) in [
            ("qdisk", "aio:/vm/ro.img"),
            ("vif", "/vm/a.img"),
            ("qdisk", "a.img"),
            ("qdisk", "aio:"),
            ("qdisk", "x y:/vm/a.img"),
        ] {
            let be = format!("/local/domain/0/backend/{kind}/6/51712");
            w.s.set(&format!("{be}/params"), params);
            w.s.set(&format!("{be}/mode"), "w");
        }
        w.run(Action::Add).unwrap();
        // The same VM may share, and a dead domain holds nothing, as for vbd.
        let w = World::<LinuxRules>::new("qemu-same", IMG, "w");
        let be = "/local/domain/0/backend/qdisk/6/51712";
        w.s.set(&format!("{be}/params"), "aio:/vm/a.img");
        w.s.set(&format!("{be}/mode"), "w");
        w.s.set("/local/domain/6/vm", "/vm/five");
        w.run(Action::Add).unwrap();
        let w = World::<LinuxRules>::new("qemu-dead", IMG, "w");
        w.s.set(&format!("{be}/params"), "aio:/vm/a.img");
        w.s.set(&format!("{be}/mode"), "w");
        w.s.rm("/local/domain/6").unwrap();
        w.run(Action::Add).unwrap();
    }

    #[test]
    fn other_kinds_cost_one_listing_each_when_empty() {
        let w = World::<LinuxRules>::new("listings", "/dev/sdb", "w");
        w.s.set("/local/domain/0/backend/vif/6/0/mac", "00:16:3e:00:00:01");
        w.s.set(
            "/local/domain/0/backend/qdisk/6/51712/params",
            "aio:/vm/ro.img",
        );
        w.run(Action::Add).unwrap();
        let reads = w.s.reads();
        assert!(
            reads.iter().any(|r| r == "/local/domain/0/backend"),
            "{reads:?}"
        );
        assert!(
            !reads
                .iter()
                .any(|r| r.starts_with("/local/domain/0/backend/vif")),
            "a kind that names no disk is not read: {reads:?}"
        );
        assert!(
            reads
                .iter()
                .any(|r| r == "/local/domain/0/backend/qdisk/6/51712/params"),
            "{reads:?}"
        );
    }

    // Issue 11 points 3 and 5: removed backends, backends still Initialising.

    #[test]
    fn a_removed_backend_is_an_error_and_is_not_recreated() {
        for action in [Action::Add, Action::Remove] {
            let w = World::<LinuxRules>::new("gone", IMG, "w");
            w.s.rm(BE).unwrap();
            let (status, msg) = w.run(action).unwrap_err();
            assert_eq!(status, "error", "{msg}");
            assert!(msg.contains("was removed"), "{msg}");
            assert!(!w.s.exists(BE), "{BE} recreated");
            assert!(w.p.calls().is_empty(), "{:?}", w.p.calls());
        }
    }

    #[test]
    fn an_initialising_backend_is_waited_for() {
        // State 1, then 2 (after other writes): connected.
        let w = World::<LinuxRules>::new("init", IMG, "w");
        w.s.set(&format!("{BE}/state"), "1");
        w.s.later(&format!("{BE}/hotplug-status-noise"), Some("x"));
        w.s.later(&format!("{BE}/state"), Some("2"));
        w.run(Action::Add).unwrap();
        assert_eq!(w.node("hotplug-status").as_deref(), Some("connected"));
        assert_eq!(
            w.node("physical-device-path").as_deref(),
            Some("/dev/made0")
        );
        // State 1, then Closing, or removed: the removed backend's error, nothing made,
        // nothing written (the removed one not recreated).
        for (change, value) in [("state", Some("5")), ("", None)] {
            let w = World::<LinuxRules>::new("init-gone", IMG, "w");
            w.s.set(&format!("{BE}/state"), "1");
            let path = if change.is_empty() {
                BE.to_string()
            } else {
                format!("{BE}/{change}")
            };
            w.s.later(&path, value);
            let (status, msg) = w.run(Action::Add).unwrap_err();
            assert_eq!(status, "error", "{msg}");
            assert!(
                msg.starts_with("Path closed or removed during hotplug add"),
                "{msg}"
            );
            assert!(w.p.made.borrow().is_empty());
            assert_eq!(w.node("physical-device"), None);
            assert_eq!(w.s.exists(BE), value.is_some(), "{msg}");
        }
        // Stuck at 1 until the deadline: an error that says so.
        let w = World::<LinuxRules>::new("init-stuck", IMG, "w");
        w.s.set(&format!("{BE}/state"), "1");
        let (_, msg) = w.run(Action::Add).unwrap_err();
        assert!(msg.contains("timed out waiting for backend"), "{msg}");
    }

    #[test]
    fn remove_without_a_record_detaches_only_what_params_still_backs() {
        // Attached by upstream's script: a `node`, no record.
        let w = World::<LinuxRules>::new("legacy", IMG, "w");
        let d = DevNum::new(MADE_MAJOR, 4);
        w.p.made.borrow_mut().insert(d, IMG_ID);
        w.s.set(&format!("{BE}/node"), "/dev/made4");
        w.run(Action::Remove).unwrap();
        assert!(w.p.made.borrow().is_empty(), "{:?}", w.p.calls());
        // Backed by another file now: left alone.
        let w = World::<LinuxRules>::new("legacy2", IMG, "w");
        w.p.made.borrow_mut().insert(d, (0x71, 99));
        w.s.set(&format!("{BE}/node"), "/dev/made4");
        w.run(Action::Remove).unwrap();
        assert_eq!(w.p.made.borrow().len(), 1);
        // Another personality's record: left for its own script.
        let w = World::<LinuxRules>::new("foreign", IMG, "w");
        let r = Record::Nbd(crate::record::Nbd {
            backend: Some(BE.into()),
            server: None,
            nbd: "/dev/nbd0".into(),
            pid: None,
            device: None,
        });
        w.p.records.borrow_mut().insert("k".into(), r.clone());
        w.p.save_record(
            &BackendPath::parse(BE, "backend", "vbd")
                .unwrap()
                .record_key(),
            &r,
        )
        .unwrap();
        w.run(Action::Remove).unwrap();
        assert!(w.p.calls().is_empty());
    }

    /// Xen 4.19+ (`xen-4.19-and-later.md` A.3): libxl's empty CD-ROM drive, a zero-length
    /// mode-0400 file, and any CD-ROM asked read-write, are attached read-only and checked
    /// as readers; a disk (no `device-type`, or `disk`) keeps its mode.
    #[test]
    fn cdroms_are_attached_read_only_whatever_the_mode() {
        for rules in ["linux", "netbsd"] {
            for (device_type, mode, ro) in [
                (Some("cdrom"), "r", true),
                (Some("cdrom"), "w", true),
                (Some("cdrom"), "w!", true),
                (Some("disk"), "w", false),
                (None, "w", false),
            ] {
                let what = format!("{rules} {device_type:?} {mode}");
                let calls = match rules {
                    "linux" => cdrom_calls::<LinuxRules>(device_type, mode),
                    _ => cdrom_calls::<NetBsdRules>(device_type, mode),
                };
                assert!(
                    calls
                        .iter()
                        .any(|c| c.starts_with("attach ") && c.ends_with(&format!("ro={ro}"))),
                    "{what}: {calls:?}"
                );
                assert!(
                    !calls
                        .iter()
                        .any(|c| c.starts_with("attach ") && !c.ends_with(&format!("ro={ro}"))),
                    "{what}: {calls:?}"
                );
            }
        }
        // The empty drive: 0400, so a disk asking `w` is refused, a CD-ROM is not.
        let w = World::<LinuxRules>::new("empty-disk", "/vm/ro.img", "w");
        let (status, _) = w.run(Action::Add).unwrap_err();
        assert_eq!(status, "busy");
        let w = World::<LinuxRules>::new("empty-cdrom", "/vm/ro.img", "w");
        w.s.set(&format!("{BE}/device-type"), "cdrom");
        w.run(Action::Add).unwrap();
        assert!(
            w.p.calls()
                .contains(&"attach /dev/made0 /vm/ro.img ro=true".to_string())
        );
        // A CD-ROM is a reader for the sharing check: another reader is fine, a writer
        // is not.
        let w = World::<LinuxRules>::new("cdrom-shared", IMG, "w");
        w.s.set(&format!("{BE}/device-type"), "cdrom");
        w.guest_uses_image(6, "r");
        w.run(Action::Add).unwrap();
        let w = World::<LinuxRules>::new("cdrom-writer", IMG, "r");
        w.s.set(&format!("{BE}/device-type"), "cdrom");
        w.guest_uses_image(6, "w");
        let (status, msg) = w.run(Action::Add).unwrap_err();
        assert_eq!(status, "busy", "{msg}");
        assert!(msg.contains("read-write in a guest domain"), "{msg}");
        // A device CD-ROM asked `w` is opened read-write by blkback: a writer, refused
        // next to a reader.
        let w = World::<LinuxRules>::new("cdrom-phy", "/dev/sdb", "w");
        w.s.set(&format!("{BE}/device-type"), "cdrom");
        w.guest_uses_dev(6, "/dev/sdb", DISK, "r");
        let (status, msg) = w.run(Action::Add).unwrap_err();
        assert_eq!(status, "busy", "{msg}");
        let w = World::<LinuxRules>::new("cdrom-phy-r", "/dev/sdb", "r");
        w.s.set(&format!("{BE}/device-type"), "cdrom");
        w.guest_uses_dev(6, "/dev/sdb", DISK, "r");
        w.run(Action::Add).unwrap();
    }

    fn cdrom_calls<R: Rules>(device_type: Option<&str>, mode: &str) -> Vec<String> {
        let w = World::<R>::new("cdrom", IMG, mode);
        if let Some(t) = device_type {
            w.s.set(&format!("{BE}/device-type"), t);
        }
        w.run(Action::Add).unwrap();
        assert_eq!(w.node("hotplug-status").as_deref(), Some("connected"));
        w.p.calls()
    }

    /// A stubdom media change (Xen 4.20, `a18b50614d`): remove, libxl deletes the backend,
    /// add on the same path with the next medium, round after round: every add connects
    /// the new medium, the record always names the current device, nothing is left.
    #[test]
    fn media_change_on_one_backend_path() {
        media_change::<LinuxRules>();
        media_change::<NetBsdRules>();
    }

    fn media_change<R: Rules>() {
        let w = World::<R>::new("media", IMG, "r");
        w.p.name(
            "/run/xen/empty-cdrom.5",
            Named::File {
                dev: 0x72,
                ino: 1,
                perm: 0o400,
            },
        );
        let media = [IMG, "/run/xen/empty-cdrom.5", "/vm/ro.img", IMG, IMG];
        for (round, medium) in media.iter().enumerate() {
            let what = format!("{} round {round}", R::NAME);
            for (n, v) in [
                ("params", *medium),
                ("mode", "r"),
                ("frontend-id", "5"),
                ("state", "2"),
                ("device-type", "cdrom"),
            ] {
                w.s.set(&format!("{BE}/{n}"), v);
            }
            w.run(Action::Add)
                .unwrap_or_else(|e| panic!("{what}: {e:?}"));
            assert_eq!(w.node("hotplug-status").as_deref(), Some("connected"));
            let node = w.node(R::ATTACHED_NODE).unwrap();
            let (rec_node, rec_params) = match w.record() {
                Some(Record::Loop(l)) => (l.device.path, l.params),
                Some(Record::Vnd(v)) => (v.node.unwrap_or_default(), v.params),
                r => panic!("{what}: {r:?}"),
            };
            assert_eq!(rec_node, node, "{what}");
            assert_eq!(rec_params.as_deref(), Some(*medium), "{what}");
            assert_eq!(w.p.made.borrow().len(), 1, "{what}");
            w.run(Action::Remove).unwrap();
            assert_eq!(w.record(), None, "{what}");
            assert!(w.p.made.borrow().is_empty(), "{what}");
            w.s.rm(BE).unwrap();
        }
        // One detach per remove and none by an add: no add found a stale record.
        let calls = w.p.calls();
        let detaches = calls.iter().filter(|c| c.starts_with("detach ")).count();
        assert_eq!(detaches, media.len(), "{calls:?}");
        let attaches = calls.iter().filter(|c| c.starts_with("attach ")).count();
        assert_eq!(attaches, media.len(), "{calls:?}");
    }

    /// Xen 4.19+ tapback disks: never classified, never attached; handed to `block-tap`
    /// when it is installed (not here), else refused naming it. Whether the backend says
    /// so by its path (`XENBUS_TYPE=vbd3`) or its `type` node, and even when `params`
    /// names a file `block` could attach.
    #[test]
    fn tapback_disks_are_never_attached() {
        const BE3: &str = "/local/domain/0/backend/vbd3/5/768";
        for (path, ty, params) in [
            (BE3, "vbd3", "aio:/vm/a.img"),
            (BE3, "vbd3", IMG),
            (BE, "vbd3", IMG),
            (BE3, "phy", IMG),
        ] {
            let w = World::<LinuxRules>::new("vbd3", params, "w");
            for n in ["params", "mode", "frontend-id", "state"] {
                let v = w.node(n).unwrap();
                w.s.set(&format!("{path}/{n}"), &v);
            }
            w.s.set(&format!("{path}/type"), ty);
            let kind = if path == BE3 { "vbd3" } else { "vbd" };
            let be = Backend::new(&w.s, BackendPath::parse(path, "backend", kind).unwrap());
            let script = Script::new("/nonexistent/scripts/block".into(), vec![]);
            let (status, msg) = super::run(&w.p, Action::Add, &be, &script)
                .map_err(|e| describe(&e))
                .unwrap_err();
            assert_eq!(status, "error");
            assert!(msg.contains("tapback (vbd3) disk"), "{msg}");
            assert!(
                msg.contains(
                    "needs the block-tap script, which is not installed in /nonexistent/scripts"
                ),
                "{msg}"
            );
            assert!(w.p.calls().is_empty(), "{path} {ty}: {:?}", w.p.calls());
            assert_eq!(w.s.get(&format!("{path}/physical-device")), None);
            // Remove finds nothing of ours and succeeds.
            super::run(&w.p, Action::Remove, &be, &script).unwrap();
            assert!(w.p.calls().is_empty(), "{:?}", w.p.calls());
        }
    }
}

/// NetBSD's own platform code (vnd unit choice, overlapping partitions, unconfigure
/// checks) through the applet, over fake system calls, with the real sharing check.
#[cfg(test)]
mod netbsd_tests {
    use std::cell::RefCell;
    use std::collections::{BTreeMap, BTreeSet};
    use std::io;
    use std::path::PathBuf;

    use anyhow::{Result, bail};

    use super::*;
    use crate::devnum::DevNum;
    use crate::invocation::BackendPath;
    use crate::mountinfo::Mount;
    use crate::platform::netbsd::vnd::{MAXPARTITIONS, RAW_PART, parse_vnd_node, vnd_node};
    use crate::platform::netbsd::{NetBsd, Sys};
    use crate::platform::{Device, FileTarget};
    use crate::report::describe;
    use crate::xs::Store;
    use crate::xs::mem::MemStore;

    const BE: &str = "/local/domain/0/backend/vbd/5/768";
    const IMG: &str = "/vm/a.img";
    const OURS: (u64, u64) = (0x71, 12);

    struct FakeSys {
        perm: u32,
        open_errno: Option<i32>,
        disknames: RefCell<String>,
        dev: Vec<String>,
        units: RefCell<BTreeMap<u32, (u64, u64)>>,
        busy_units: BTreeSet<u32>,
        vnconfig_noop: bool,
        unconfig_fails: bool,
        mounts: Vec<Mount>,
        records: RefCell<BTreeMap<String, Record>>,
        calls: RefCell<Vec<String>>,
        lock_dir: PathBuf,
    }

    fn fake(tag: &str) -> FakeSys {
        FakeSys {
            perm: 0o644,
            open_errno: None,
            disknames: RefCell::new("wd0 wd1 vnd0".into()),
            dev: [
                "vnd0d", "vnd1d", "vnd2d", "vnd3d", "rvnd0d", "rvnd1d", "rvnd2d", "rvnd3d", "wd0d",
            ]
            .map(String::from)
            .to_vec(),
            // vnd0 holds some other file.
            units: RefCell::new([(0, (0x71, 99))].into_iter().collect()),
            busy_units: BTreeSet::new(),
            vnconfig_noop: false,
            unconfig_fails: false,
            mounts: Vec::new(),
            records: RefCell::default(),
            calls: RefCell::default(),
            lock_dir: std::env::temp_dir().join(format!("xbh-nbsd-{tag}-{}", std::process::id())),
        }
    }

    impl FakeSys {
        fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }
        fn record(&self) -> Option<Record> {
            self.records.borrow().values().next().cloned()
        }
    }

    impl Drop for FakeSys {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.lock_dir);
        }
    }

    impl Sys for FakeSys {
        fn classify(&self, params: &str) -> Result<Target> {
            Ok(match params {
                IMG => Target::File(FileTarget {
                    path: IMG.into(),
                    dev: OURS.0,
                    ino: OURS.1,
                    perm: self.perm,
                    handle: None,
                }),
                "/dev/wd1e" => Target::Device(Device {
                    path: params.into(),
                    ident: Identity::Dev(DevNum::new(0, 20)),
                    file_mode: None,
                    handle: None,
                }),
                _ => Target::Other {
                    what: format!("a path that does not exist ({params})"),
                },
            })
        }
        fn open_check(&self, path: &str, read_only: bool) -> io::Result<(u64, u64)> {
            self.calls
                .borrow_mut()
                .push(format!("open {path} ro={read_only}"));
            match self.open_errno {
                Some(e) => Err(io::Error::from_raw_os_error(e)),
                None => Ok(OURS),
            }
        }
        fn disknames(&self) -> Result<String> {
            Ok(self.disknames.borrow().clone())
        }
        fn dev_entries(&self) -> Result<Vec<String>> {
            Ok(self.dev.clone())
        }
        fn has_raw_node(&self, unit: u32) -> bool {
            self.dev.contains(&format!("rvnd{unit}d"))
        }
        fn backing_of(&self, unit: u32) -> Result<Option<(u64, u64)>> {
            Ok(self.units.borrow().get(&unit).copied())
        }
        fn stat_block(&self, path: &str) -> Option<DevNum> {
            let u = parse_vnd_node(path)?;
            Some(DevNum::new(14, u64::from(u) * MAXPARTITIONS + RAW_PART))
        }
        fn vnconfig(&self, unit: u32, file: &str, read_only: bool) -> Result<()> {
            let r = if read_only { "-r " } else { "" };
            self.calls
                .borrow_mut()
                .push(format!("vnconfig {r}{} {file}", vnd_node(unit)));
            assert!(
                self.record()
                    .is_some_and(|r| matches!(r, Record::Vnd(v) if v.unit == unit)),
                "recorded before vnconfig"
            );
            if self.busy_units.contains(&unit) {
                bail!("vnconfig: /dev/rvnd{unit}d: VNDIOCSET: Device busy");
            }
            if !self.vnconfig_noop {
                self.units.borrow_mut().insert(unit, OURS);
                self.disknames.borrow_mut().push_str(&format!(" vnd{unit}"));
            }
            Ok(())
        }
        fn vnunconfig(&self, unit: u32) -> Result<()> {
            self.calls
                .borrow_mut()
                .push(format!("vnconfig -u {}", vnd_node(unit)));
            if self.unconfig_fails {
                bail!("vnconfig: VNDIOCCLR: Device busy");
            }
            self.units.borrow_mut().remove(&unit);
            Ok(())
        }
        fn local_mounts(&self) -> Result<Vec<Mount>> {
            Ok(self.mounts.clone())
        }
        fn lock_dir(&self) -> PathBuf {
            self.lock_dir.clone()
        }
        fn save_record(&self, key: &str, rec: &Record) -> Result<()> {
            self.records
                .borrow_mut()
                .insert(key.to_string(), rec.clone());
            Ok(())
        }
        fn load_record(&self, key: &str) -> Result<Option<Record>> {
            Ok(self.records.borrow().get(key).cloned())
        }
        fn delete_record(&self, key: &str) -> Result<()> {
            self.records.borrow_mut().remove(key);
            Ok(())
        }
    }

    fn store(params: &str, mode: &str) -> MemStore {
        let s = MemStore::default();
        s.set(&format!("{BE}/params"), params);
        s.set(&format!("{BE}/mode"), mode);
        s.set(&format!("{BE}/frontend-id"), "5");
        s.set(&format!("{BE}/state"), "2");
        s.set("/local/domain/5/vm", "/vm/five");
        s
    }

    fn run(
        p: &NetBsd<FakeSys>,
        s: &MemStore,
        action: Action,
    ) -> std::result::Result<(), (&'static str, String)> {
        let be = Backend::new(s, BackendPath::parse(BE, "backend", "vbd").unwrap());
        let script = Script::new("/nonexistent/scripts/block".into(), vec![]);
        super::run(p, action, &be, &script).map_err(|e| describe(&e))
    }

    fn node(s: &MemStore, n: &str) -> Option<String> {
        s.get(&format!("{BE}/{n}"))
    }

    #[test]
    fn file_add_configures_the_first_free_unit() {
        let p = NetBsd::new(fake("add"));
        let s = store(IMG, "w");
        run(&p, &s, Action::Add).unwrap();
        assert_eq!(
            p.sys.calls(),
            [
                format!("open {IMG} ro=false"),
                format!("vnconfig /dev/vnd1d {IMG}")
            ]
        );
        assert_eq!(node(&s, "vnd").as_deref(), Some("/dev/vnd1d"));
        assert_eq!(
            node(&s, "physical-device-path").as_deref(),
            Some("/dev/vnd1d")
        );
        assert_eq!(node(&s, "physical-device").as_deref(), Some("3603")); // vnd1d
        assert_eq!(node(&s, "hotplug-status").as_deref(), Some("connected"));
        let rec = p.sys.record().unwrap();
        let Record::Vnd(v) = rec else {
            panic!("{rec:?}")
        };
        assert_eq!((v.unit, v.backing), (1, (0x71, 12)));
        assert_eq!(v.node.as_deref(), Some("/dev/vnd1d"));
        // Called again (libxl never does, but a retry might): nothing happens.
        run(&p, &s, Action::Add).unwrap();
        assert_eq!(p.sys.calls().len(), 2);
    }

    #[test]
    fn read_only_disks_get_read_only_units() {
        let p = NetBsd::new(fake("ro"));
        run(&p, &store(IMG, "r"), Action::Add).unwrap();
        assert_eq!(
            p.sys.calls(),
            [
                format!("open {IMG} ro=true"),
                format!("vnconfig -r /dev/vnd1d {IMG}")
            ]
        );
    }

    #[test]
    fn busy_units_are_skipped_and_exhaustion_reported() {
        let mut sys = fake("busy");
        sys.busy_units = [1, 2].into_iter().collect();
        let p = NetBsd::new(sys);
        let s = store(IMG, "w");
        run(&p, &s, Action::Add).unwrap();
        assert_eq!(node(&s, "vnd").as_deref(), Some("/dev/vnd3d"));
        assert!(matches!(p.sys.record(), Some(Record::Vnd(v)) if v.unit == 3));

        let mut sys = fake("none");
        sys.busy_units = [1, 2, 3].into_iter().collect();
        let p = NetBsd::new(sys);
        let s = store(IMG, "w");
        let (st, msg) = run(&p, &s, Action::Add).unwrap_err();
        assert_eq!(st, "error");
        assert!(msg.contains("no available vnd device"), "{msg}");
        assert!(msg.contains("Device busy"), "{msg}");
        assert_eq!(p.sys.record(), None, "no record of a failed add");
        assert_eq!(node(&s, "hotplug-status"), None);

        let p = NetBsd::new(fake("full"));
        *p.sys.disknames.borrow_mut() = "wd0 vnd0 vnd1 vnd2 vnd3".into();
        let (_, msg) = run(&p, &store(IMG, "w"), Action::Add).unwrap_err();
        assert!(msg.contains("MAKEDEV"), "{msg}");
        assert!(!p.sys.calls().iter().any(|c| c.starts_with("vnconfig")));
    }

    #[test]
    fn vnconfig_success_is_not_trusted() {
        let mut sys = fake("noop");
        sys.vnconfig_noop = true;
        let p = NetBsd::new(sys);
        let s = store(IMG, "w");
        let (_, msg) = run(&p, &s, Action::Add).unwrap_err();
        assert!(msg.contains("did not configure vnd1"), "{msg}");
        assert_eq!(p.sys.record(), None);
        assert_eq!(node(&s, "physical-device"), None);
    }

    #[test]
    fn a_file_already_on_a_unit_used_by_a_guest_is_refused() {
        let sys = fake("shared");
        sys.units.borrow_mut().insert(3, OURS);
        sys.disknames.borrow_mut().push_str(" vnd3");
        let p = NetBsd::new(sys);
        let s = store(IMG, "w");
        // Guest 6 uses vnd3a (14:48), spelled as xbdback reads it: makedev(14, 48).
        let other = "/local/domain/0/backend/vbd/6/768";
        s.set(&format!("{other}/physical-device"), "3632");
        s.set(&format!("{other}/mode"), "r");
        s.set("/local/domain/6/vm", "/vm/six");
        let (st, msg) = run(&p, &s, Action::Add).unwrap_err();
        assert_eq!(st, "busy");
        assert_eq!(
            msg,
            format!(
                "File {IMG} is configured on vnd3,\nwhich is mounted in a guest domain \
                 (domain 6, {other}),\nand so cannot be mounted now."
            )
        );
        assert!(!p.sys.calls().iter().any(|c| c.starts_with("vnconfig")));
        // w! skips the check.
        run(&p, &store(IMG, "w!"), Action::Add).unwrap();
    }

    #[test]
    fn file_add_refusals() {
        let p = NetBsd::new(fake("closing"));
        let s = store(IMG, "w");
        s.set(&format!("{BE}/state"), "5");
        let (_, msg) = run(&p, &s, Action::Add).unwrap_err();
        assert!(
            msg.contains("Path closed or removed during hotplug add"),
            "{msg}"
        );

        let mut sys = fake("perm");
        sys.perm = 0o444;
        let p = NetBsd::new(sys);
        let (st, msg) = run(&p, &store(IMG, "w"), Action::Add).unwrap_err();
        assert_eq!(st, "busy");
        assert!(msg.contains("is read-only"), "{msg}");
        run(&p, &store(IMG, "r"), Action::Add).unwrap();

        let mut sys = fake("erofs");
        sys.open_errno = Some(nix::libc::EROFS);
        let p = NetBsd::new(sys);
        let (st, _) = run(&p, &store(IMG, "w"), Action::Add).unwrap_err();
        assert_eq!(st, "busy");
    }

    #[test]
    fn phy_add_checks_overlapping_partitions() {
        let p = NetBsd::new(fake("phy"));
        let s = store("/dev/wd1e", "w");
        run(&p, &s, Action::Add).unwrap();
        assert_eq!(node(&s, "physical-device").as_deref(), Some("20"));
        assert_eq!(
            node(&s, "physical-device-path").as_deref(),
            Some("/dev/wd1e")
        );
        assert_eq!(node(&s, "vnd"), None);
        // wd1d, the raw partition, mounted read-write in dom0.
        let mut sys = fake("phy2");
        sys.mounts.push(Mount {
            dev: DevNum::new(0, 19),
            mount_point: "/data".into(),
            source: "/dev/wd1d".into(),
            read_only: false,
        });
        let p = NetBsd::new(sys);
        let (st, msg) = run(&p, &store("/dev/wd1e", "r"), Action::Add).unwrap_err();
        assert_eq!(st, "busy");
        assert_eq!(
            msg,
            "Device /dev/wd1e overlaps wd1d,\nwhich is mounted read-write in the privileged \
             domain (at /data),\nand so cannot be mounted read-only by a guest."
        );
        assert!(p.sys.calls().is_empty());
    }

    #[test]
    fn remove_unconfigures_the_recorded_unit_without_params() {
        let p = NetBsd::new(fake("rm"));
        let s = store(IMG, "w");
        run(&p, &s, Action::Add).unwrap();
        s.unset(&format!("{BE}/params"));
        s.unset(&format!("{BE}/vnd"));
        run(&p, &s, Action::Remove).unwrap();
        assert_eq!(p.sys.calls().last().unwrap(), "vnconfig -u /dev/vnd1d");
        assert!(!p.sys.units.borrow().contains_key(&1));
        assert_eq!(p.sys.record(), None);
        assert!(s.list(BE).unwrap().is_none(), "backend directory removed");
        // vnd0, someone else's, untouched.
        assert!(p.sys.units.borrow().contains_key(&0));
    }

    #[test]
    fn remove_leaves_a_reused_unit_alone() {
        let p = NetBsd::new(fake("reused"));
        let s = store(IMG, "w");
        run(&p, &s, Action::Add).unwrap();
        p.sys.units.borrow_mut().insert(1, (0x71, 4242));
        run(&p, &s, Action::Remove).unwrap();
        assert!(!p.sys.calls().iter().any(|c| c.starts_with("vnconfig -u")));
        assert_eq!(p.sys.units.borrow().get(&1), Some(&(0x71, 4242)));
        assert_eq!(p.sys.record(), None);
        assert!(s.list(BE).unwrap().is_none());
    }

    #[test]
    fn remove_of_an_upstream_attach_uses_the_vnd_node() {
        // Configured by upstream's script: no record, a `vnd` node, `params` gone.
        let p = NetBsd::new(fake("legacy"));
        p.sys.units.borrow_mut().insert(2, OURS);
        let s = store(IMG, "w");
        s.unset(&format!("{BE}/params"));
        s.set(&format!("{BE}/vnd"), "/dev/vnd2d");
        run(&p, &s, Action::Remove).unwrap();
        assert_eq!(p.sys.calls(), ["vnconfig -u /dev/vnd2d"]);
        assert!(s.list(BE).unwrap().is_none());
        // With params still there, it must match.
        let p = NetBsd::new(fake("legacy2"));
        p.sys.units.borrow_mut().insert(2, (0x71, 4242));
        let s = store(IMG, "w");
        s.set(&format!("{BE}/vnd"), "/dev/vnd2d");
        run(&p, &s, Action::Remove).unwrap();
        assert!(p.sys.calls().is_empty());
        // A `vnd` node that is not a vnd is never passed to vnconfig.
        let p = NetBsd::new(fake("legacy3"));
        let s = store(IMG, "w");
        s.set(&format!("{BE}/vnd"), "/dev/wd0d");
        run(&p, &s, Action::Remove).unwrap();
        assert!(p.sys.calls().is_empty());
        assert!(s.list(BE).unwrap().is_none());
    }

    #[test]
    fn remove_accepts_pkgsrcs_vnd_node() {
        // NetBSD's pkgsrc (xentools420) writes the unit name, `vnd2`, not `/dev/vnd2d`.
        let p = NetBsd::new(fake("pkgsrc"));
        p.sys.units.borrow_mut().insert(2, OURS);
        let s = store(IMG, "w");
        s.unset(&format!("{BE}/params"));
        s.set(&format!("{BE}/vnd"), "vnd2");
        run(&p, &s, Action::Remove).unwrap();
        assert_eq!(p.sys.calls(), ["vnconfig -u /dev/vnd2d"]);
        assert!(!p.sys.units.borrow().contains_key(&2));
        assert!(s.list(BE).unwrap().is_none());
        // With params still naming the file, the unit must still be backed by it.
        let p = NetBsd::new(fake("pkgsrc2"));
        p.sys.units.borrow_mut().insert(2, (0x71, 4242));
        let s = store(IMG, "w");
        s.set(&format!("{BE}/vnd"), "vnd2");
        run(&p, &s, Action::Remove).unwrap();
        assert!(p.sys.calls().is_empty());
        assert_eq!(p.sys.units.borrow().get(&2), Some(&(0x71, 4242)));
        // Both spellings of one unit, on the same file: the same unconfigure.
        for node in ["vnd2", "/dev/vnd2d"] {
            let p = NetBsd::new(fake("pkgsrc3"));
            p.sys.units.borrow_mut().insert(2, OURS);
            let s = store(IMG, "w");
            s.set(&format!("{BE}/vnd"), node);
            run(&p, &s, Action::Remove).unwrap();
            assert_eq!(p.sys.calls(), ["vnconfig -u /dev/vnd2d"], "{node}");
        }
    }

    #[test]
    fn a_failed_unconfigure_keeps_the_backend_and_the_record() {
        let mut sys = fake("rmfail");
        sys.unconfig_fails = true;
        let p = NetBsd::new(sys);
        let s = store(IMG, "w");
        run(&p, &s, Action::Add).unwrap();
        let (st, msg) = run(&p, &s, Action::Remove).unwrap_err();
        assert_eq!(st, "error");
        assert!(msg.contains("VNDIOCCLR: Device busy"), "{msg}");
        assert!(p.sys.record().is_some(), "kept for a retry");
        assert_eq!(node(&s, "vnd").as_deref(), Some("/dev/vnd1d"));
    }
}

/// FreeBSD's platform code (real `stat`s and symlinks) through the applet.
#[cfg(test)]
mod freebsd_tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use super::*;
    use crate::invocation::BackendPath;
    use crate::mountinfo::Mount;
    use crate::platform::freebsd::{FreeBsd, stat_device, stat_identity};
    use crate::report::describe;
    use crate::xs::mem::MemStore;

    const BE: &str = "/local/domain/0/backend/vbd/5/768";

    /// A scratch directory with an image, a symlink to it and a lock directory.
    struct Scratch(PathBuf);

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
        fn platform(&self, mounts: Vec<Mount>) -> FreeBsd {
            FreeBsd {
                mounts: Box::new(move || Ok(mounts.clone())),
                stat: stat_identity,
                lock_dir: self.0.join("lock"),
            }
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn run_add(
        p: &FreeBsd,
        s: &MemStore,
        params: &str,
        mode: &str,
    ) -> std::result::Result<(), (&'static str, String)> {
        s.unset(&format!("{BE}/physical-device-path"));
        s.set(&format!("{BE}/params"), params);
        s.set(&format!("{BE}/mode"), mode);
        s.set(&format!("{BE}/frontend-id"), "5");
        s.set("/local/domain/5/vm", "/vm/five");
        let be = Backend::new(s, BackendPath::parse(BE, "backend", "vbd").unwrap());
        let script = Script::new("/nonexistent/scripts/block".into(), vec![]);
        super::run(p, Action::Add, &be, &script).map_err(|e| describe(&e))
    }

    #[test]
    fn add_publishes_the_real_path_and_nothing_else() {
        let dir = Scratch::new("add");
        let p = dir.platform(vec![]);
        let s = MemStore::default();
        run_add(&p, &s, &dir.path("link.img"), "w").unwrap();
        let real = fs::canonicalize(dir.path("a.img")).unwrap();
        assert_eq!(
            s.get(&format!("{BE}/physical-device-path")).as_deref(),
            real.to_str(),
            "symlinks resolved"
        );
        assert_eq!(s.get(&format!("{BE}/physical-device")), None);
        assert_eq!(
            s.get(&format!("{BE}/hotplug-status")).as_deref(),
            Some("connected")
        );
        assert!(
            fs::read_dir(dir.0.join("lock")).unwrap().next().is_none(),
            "lock released"
        );
        // A name without a slash is under /dev; devices are fine.
        run_add(&p, &s, "null", "r").unwrap();
        assert_eq!(
            s.get(&format!("{BE}/physical-device-path")).as_deref(),
            Some("/dev/null")
        );
    }

    #[test]
    fn add_refuses_read_only_files_directories_and_mounted_devices() {
        let dir = Scratch::new("refuse");
        let p = dir.platform(vec![]);
        let s = MemStore::default();
        let img = dir.path("a.img");
        fs::set_permissions(&img, fs::Permissions::from_mode(0o444)).unwrap();
        let (st, msg) = run_add(&p, &s, &img, "w").unwrap_err();
        assert_eq!(st, "busy");
        assert!(msg.contains("is read-only"), "{msg}");
        run_add(&p, &s, &img, "r").unwrap();
        let (st, msg) = run_add(&p, &s, &dir.path("lock"), "w").unwrap_err();
        assert_eq!(st, "error");
        assert!(msg.contains("a directory"), "{msg}");
        let null = stat_device("/dev/null").unwrap();
        let p = dir.platform(vec![Mount {
            dev: null,
            mount_point: "/mnt".into(),
            source: "/dev/null".into(),
            read_only: false,
        }]);
        let (st, msg) = run_add(&p, &s, "/dev/null", "r").unwrap_err();
        assert_eq!(st, "busy");
        assert!(msg.contains("in the privileged domain (at /mnt)"), "{msg}");
    }
}
