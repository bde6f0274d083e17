//! NetBSD dom0 (interface doc §4.4). phy: the device itself; file: a free `vnd(4)` unit
//! configured with `vnconfig`; xbdback reads `physical-device` as a decimal `dev_t`.
//!
//! Unlike upstream, add checks sharing (as on Linux), configures read-only units for
//! read-only disks, verifies that the unit really is backed by the file (`vnconfig` exits 0
//! when it cannot open it), and writes `physical-device-path`; remove unconfigures the unit
//! even when `params` is gone, and never one that another file has taken since.
//!
//! `NetBsd` implements the platform over `Sys`, the few system calls and tools involved,
//! so that NetBSD's rules run (and are tested) on every OS; `Kernel` is the real `Sys`,
//! built on NetBSD only: mounts from `getvfsstat(2)`, `hw.disknames` from
//! `sysctlbyname(3)`, the file behind a unit from `VNDIOCGET`, and `/usr/sbin/vnconfig`.

pub mod vnd;

use std::io;
use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};

use crate::devnum::DevNum;
use crate::log;
use crate::mountinfo::Mount;
use crate::record::{self, Record};

use super::{
    Attached, Attachment, Device, FileTarget, Identity, LegacyNodes, Opened, Platform, Target,
};
use vnd::{
    disk_partitions, free_vnd_units, is_disk_partition, overlapping_partitions, parse_vnd_node,
    sibling_partition, vnd_node, vnd_raw_node, vnd_units_in_use, vnd_units_with_nodes,
};

/// The system calls and tools the NetBSD platform needs.
pub trait Sys {
    /// What `params` names.
    fn classify(&self, params: &str) -> Result<Target>;
    /// Opens `path` as `vnconfig` will (read-write unless `read_only`) and says which
    /// file was opened, `(st_dev, st_ino)`.
    fn open_check(&self, path: &str, read_only: bool) -> io::Result<(u64, u64)>;
    /// `sysctl -n hw.disknames`.
    fn disknames(&self) -> Result<String>;
    /// The names in `/dev`.
    fn dev_entries(&self) -> Result<Vec<String>>;
    /// Whether the unit's raw node (`/dev/rvndNd`) exists, so it can be asked.
    fn has_raw_node(&self, unit: u32) -> bool;
    /// The file backing a unit, `(st_dev, st_ino)`; `None` when it is not configured.
    fn backing_of(&self, unit: u32) -> Result<Option<(u64, u64)>>;
    /// The device number of a block node.
    fn stat_block(&self, path: &str) -> Option<DevNum>;
    /// `vnconfig [-r] /dev/vndNd file`.
    fn vnconfig(&self, unit: u32, file: &str, read_only: bool) -> Result<()>;
    /// `vnconfig -u /dev/vndNd`.
    fn vnunconfig(&self, unit: u32) -> Result<()>;
    /// The dom0 mounts backed by block devices.
    fn local_mounts(&self) -> Result<Vec<Mount>>;
    /// Where the `block` lock lives.
    fn lock_dir(&self) -> PathBuf {
        crate::lock::lock_dir()
    }
    /// The remove records.
    fn save_record(&self, key: &str, rec: &Record) -> Result<()> {
        Ok(record::save(key, rec)?)
    }
    fn load_record(&self, key: &str) -> Result<Option<Record>> {
        Ok(record::load(key)?)
    }
    fn delete_record(&self, key: &str) -> Result<()> {
        Ok(record::delete(key)?)
    }
}

/// The NetBSD platform over the system `S`.
pub struct NetBsd<S> {
    pub sys: S,
}

impl<S: Sys> NetBsd<S> {
    pub fn new(sys: S) -> Self {
        NetBsd { sys }
    }

    /// Unconfigures `unit` if it is still backed by `backing` (when known).
    fn unconfigure(&self, unit: u32, backing: Option<(u64, u64)>) -> Result<()> {
        match (self.sys.backing_of(unit)?, backing) {
            (None, _) => {
                log::debug(&format!("vnd{unit} is not configured: nothing to undo"));
                Ok(())
            }
            (Some(now), Some(ours)) if now != ours => {
                log::err(&format!(
                    "not unconfiguring vnd{unit}: it is now backed by another file"
                ));
                Ok(())
            }
            _ => {
                self.sys.vnunconfig(unit)?;
                log::debug(&format!("unconfigured vnd{unit}"));
                Ok(())
            }
        }
    }
}

impl<S: Sys> Platform for NetBsd<S> {
    const ATTACHED_NODE: &'static str = "vnd";
    const ATTACHED_VERB: &'static str = "is configured on";
    const RECORD_KIND: &'static str = "vnd";
    const REMOVES_BACKEND: bool = true;

    fn classify(&self, params: &str) -> Result<Target> {
        self.sys.classify(params)
    }

    fn related(&self, dev: &Device) -> Result<Vec<Identity>> {
        let rdev = dev.ident.dev();
        // A partition overlaps the raw partition of its disk and the other way round.
        let devs = if is_disk_partition(&dev.path, &self.sys.disknames()?) {
            overlapping_partitions(rdev)
        } else {
            vec![rdev]
        };
        Ok(devs.into_iter().map(Identity::Dev).collect())
    }

    fn related_what(&self, dev: &Device, via: DevNum) -> String {
        format!(
            "Device {} overlaps {},\nwhich",
            dev.path,
            sibling_partition(&dev.path, via)
        )
    }

    fn open_file(&self, file: &FileTarget, read_only: bool) -> io::Result<Opened> {
        let (dev, ino) = self.sys.open_check(&file.path, read_only)?;
        Ok(Opened {
            file: None,
            dev,
            ino,
        })
    }

    /// Other units backed by the same file: any use of any of their partitions is a use
    /// of the file.
    fn attached_by(&self, file: &FileTarget) -> Result<Vec<Attachment>> {
        let mut out = Vec::new();
        for u in vnd_units_in_use(&self.sys.disknames()?) {
            if !self.sys.has_raw_node(u) {
                log::debug(&format!("vnd{u} has no {}: skipped", vnd_raw_node(u)));
                continue;
            }
            if self.sys.backing_of(u)? == Some((file.dev, file.ino)) {
                let node = vnd_node(u);
                let rdev = self.sys.stat_block(&node).ok_or_else(|| {
                    anyhow!(
                        "vnd{u} is backed by {}, but {node} is not a block device",
                        file.path
                    )
                })?;
                out.push(Attachment {
                    label: format!("vnd{u}"),
                    dev: rdev,
                });
            }
        }
        Ok(out)
    }

    fn related_to_attachment(&self, dev: DevNum) -> Vec<DevNum> {
        disk_partitions(dev)
    }

    fn attach(
        &self,
        file: &FileTarget,
        _opened: Opened,
        read_only: bool,
        backend: &str,
        save: &dyn Fn(&Record) -> Result<()>,
    ) -> Result<Attached> {
        let path = &file.path;
        let backing = (file.dev, file.ino);
        let in_use = vnd_units_in_use(&self.sys.disknames()?);
        let entries = self.sys.dev_entries()?;
        let free = free_vnd_units(
            &vnd_units_with_nodes(entries.iter().map(String::as_str)),
            &in_use,
        );
        let mut rec = record::Vnd {
            backend: Some(backend.to_string()),
            params: Some(path.clone()),
            backing,
            unit: 0,
            node: None,
        };
        let mut unit = None;
        let mut last_err: Option<anyhow::Error> = None;
        for u in free {
            // Recorded before vnconfig runs, so a kill at any point leaves a record that
            // finds the unit (remove checks the backing before unconfiguring).
            rec.unit = u;
            rec.node = Some(vnd_node(u));
            save(&Record::Vnd(rec.clone()))?;
            if let Err(e) = self.sys.vnconfig(u, path, read_only) {
                log::debug(&format!("vnd{u}: {e:#}"));
                last_err = Some(e);
                continue;
            }
            match self.sys.backing_of(u) {
                Ok(Some(b)) if b == backing => {
                    unit = Some(u);
                    break;
                }
                Ok(Some(_)) => {
                    // Someone outside the lock took the unit between our look and vnconfig.
                    last_err = Some(anyhow!("vnd{u} was configured for another file meanwhile"));
                }
                Ok(None) => {
                    // vnconfig exits 0 when it cannot open the file.
                    bail!("vnconfig did not configure vnd{u} with {path} (see the hotplug log)");
                }
                Err(e) => return Err(e.context(format!("cannot check vnd{u} after vnconfig"))),
            }
        }
        let Some(unit) = unit else {
            return Err(match last_err {
                Some(e) => e.context("no available vnd device"),
                None => anyhow!(
                    "no available vnd device: every /dev/vnd*d unit is in use \
                     (create more with `cd /dev && sh MAKEDEV vndN`)"
                ),
            });
        };
        let node = vnd_node(unit);
        let Some(rdev) = self.sys.stat_block(&node) else {
            if let Err(u) = self.sys.vnunconfig(unit) {
                log::err(&format!("could not undo vnconfig of vnd{unit}: {u:#}"));
            }
            bail!("{node} is not a block device");
        };
        Ok(Attached {
            path: node,
            rdev,
            diskseq: None,
            handle: None,
            record: Record::Vnd(rec),
        })
    }

    fn undo_attach(&self, attached: &Attached) -> Result<()> {
        let unit = parse_vnd_node(&attached.path)
            .ok_or_else(|| anyhow!("{} is not a vnd unit", attached.path))?;
        self.sys.vnunconfig(unit)
    }

    fn detach_recorded(&self, rec: &Record) -> Result<()> {
        let Record::Vnd(v) = rec else {
            bail!("a remove record of kind {} is not a vnd", rec.kind());
        };
        self.unconfigure(v.unit, Some(v.backing))
    }

    /// Configured by upstream's script (or before an upgrade): trust the `vnd` node, but
    /// check it against `params` while that still names the file.
    fn detach_legacy(&self, nodes: &LegacyNodes, file: Option<&FileTarget>) -> Result<()> {
        match parse_vnd_node(&nodes.node) {
            Some(unit) => self.unconfigure(unit, file.map(|f| (f.dev, f.ino))),
            None => {
                log::err(&format!(
                    "vnd node {:?} is not a vnd device: not unconfiguring it",
                    nodes.node
                ));
                Ok(())
            }
        }
    }

    /// Upstream's `physical-device` (decimal, what xbdback acts on).
    fn format_physical_device(&self, dev: Identity) -> Option<String> {
        Some(vnd::format_physical_device(dev.dev()))
    }

    fn parse_physical_device(&self, value: &str) -> Option<DevNum> {
        vnd::parse_physical_device(value)
    }

    fn stat_identity(&self, path: &str) -> Option<Identity> {
        self.sys.stat_block(path).map(Identity::Dev)
    }

    fn local_mounts(&self) -> Result<Vec<Mount>> {
        self.sys.local_mounts()
    }

    fn lock_dir(&self) -> PathBuf {
        self.sys.lock_dir()
    }

    fn save_record(&self, key: &str, rec: &Record) -> Result<()> {
        self.sys.save_record(key, rec)
    }

    fn load_record(&self, key: &str) -> Result<Option<Record>> {
        self.sys.load_record(key)
    }

    fn delete_record(&self, key: &str) -> Result<()> {
        self.sys.delete_record(key)
    }
}

/// The real NetBSD kernel and tools.
#[cfg(target_os = "netbsd")]
pub use kernel::Kernel;

#[cfg(target_os = "netbsd")]
mod kernel {
    use std::ffi::CStr;
    use std::fs::{self, File, OpenOptions};
    use std::io;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::process::{Command, Stdio};

    use anyhow::{Context, Result, bail};
    use nix::libc;

    use super::super::{Device, FileTarget, Identity, Target, bsd, expand, or_unusable};
    use super::vnd::{self as nb, VndUser};
    use crate::devnum::DevNum;
    use crate::log;
    use crate::mountinfo::Mount;

    const VNCONFIG: &str = "/usr/sbin/vnconfig";

    /// The running NetBSD kernel.
    pub struct Kernel;

    pub fn stat_block_device(path: &str) -> Option<DevNum> {
        if !path.starts_with('/') {
            return None;
        }
        let meta = fs::metadata(path).ok()?;
        if !meta.file_type().is_block_device() {
            return None;
        }
        nb::split_dev(meta.rdev())
    }

    impl super::Sys for Kernel {
        fn classify(&self, params: &str) -> Result<Target> {
            classify(params)
        }

        fn open_check(&self, path: &str, read_only: bool) -> io::Result<(u64, u64)> {
            let f = OpenOptions::new().read(true).write(!read_only).open(path)?;
            let m = f.metadata()?;
            Ok((m.dev(), m.ino()))
        }

        fn disknames(&self) -> Result<String> {
            disknames()
        }

        fn dev_entries(&self) -> Result<Vec<String>> {
            Ok(fs::read_dir("/dev")
                .context("cannot list /dev")?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect())
        }

        fn has_raw_node(&self, unit: u32) -> bool {
            fs::symlink_metadata(nb::vnd_raw_node(unit)).is_ok()
        }

        fn backing_of(&self, unit: u32) -> Result<Option<(u64, u64)>> {
            backing_of(unit)
        }

        fn stat_block(&self, path: &str) -> Option<DevNum> {
            stat_block_device(path)
        }

        fn vnconfig(&self, unit: u32, file: &str, read_only: bool) -> Result<()> {
            vnconfig(unit, file, read_only)
        }

        fn vnunconfig(&self, unit: u32) -> Result<()> {
            vnunconfig(unit)
        }

        fn local_mounts(&self) -> Result<Vec<Mount>> {
            local_mounts()
        }
    }

    /// Every mount backed by a block device, from `getvfsstat(2)` (no waiting on stale
    /// network filesystems), each device found by a `stat` of its `/dev` source.
    fn local_mounts() -> Result<Vec<Mount>> {
        // SAFETY: `statvfs` is the struct getvfsstat fills, plain integers and byte
        // arrays, and the call is given the buffer's own size in bytes.
        let stats = unsafe {
            bsd::mount_table("getvfsstat", |buf: *mut libc::statvfs, bytes| {
                libc::getvfsstat(buf, bytes, libc::MNT_NOWAIT)
            })
        }?;
        Ok(stats
            .iter()
            .filter_map(|s| {
                bsd::device_mount(
                    stat_block_device,
                    &s.f_mntfromname,
                    &s.f_mntonname,
                    s.f_flag & libc::ST_RDONLY != 0,
                )
            })
            .collect())
    }

    fn classify(params: &str) -> Result<Target> {
        let path = expand(params);
        let meta = match or_unusable(fs::metadata(&path), &path, "stat")? {
            Ok(m) => m,
            Err(other) => return Ok(other),
        };
        let real = fs::canonicalize(&path)
            .ok()
            .and_then(|p| p.to_str().map(str::to_string))
            .unwrap_or_else(|| path.clone());
        let ft = meta.file_type();
        Ok(if ft.is_block_device() {
            match nb::split_dev(meta.rdev()) {
                Some(rdev) => Target::Device(Device {
                    path: real,
                    ident: Identity::Dev(rdev),
                    file_mode: None,
                    handle: None,
                }),
                None => bail!(
                    "{real} has a device number NetBSD cannot spell: {}",
                    meta.rdev()
                ),
            }
        } else if ft.is_file() {
            Target::File(FileTarget {
                path: real,
                dev: meta.dev(),
                ino: meta.ino(),
                perm: meta.mode(),
                handle: None,
            })
        } else {
            let kind = if ft.is_dir() {
                "a directory"
            } else if ft.is_char_device() {
                "a character device (use the block device, without the r)"
            } else {
                "neither a block device nor a regular file"
            };
            Target::Other {
                what: format!("{kind} ({real})"),
            }
        })
    }

    /// `hw.disknames`, as `sysctl -n hw.disknames` prints it.
    fn disknames() -> Result<String> {
        let name = c"hw.disknames";
        for _ in 0..8 {
            let mut len: libc::size_t = 0;
            // SAFETY: a null old pointer asks for the size; nothing is written.
            let r = unsafe {
                libc::sysctlbyname(
                    name.as_ptr(),
                    std::ptr::null_mut(),
                    &mut len,
                    std::ptr::null(),
                    0,
                )
            };
            if r != 0 {
                return Err(io::Error::last_os_error()).context("sysctl hw.disknames");
            }
            let mut buf = vec![0u8; len + 64];
            let mut got: libc::size_t = buf.len();
            // SAFETY: `buf` has `got` writable bytes; the kernel writes at most that many.
            let r = unsafe {
                libc::sysctlbyname(
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    &mut got,
                    std::ptr::null(),
                    0,
                )
            };
            if r != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOMEM) {
                    continue; // a disk appeared between the two calls
                }
                return Err(e).context("sysctl hw.disknames");
            }
            buf.truncate(got.min(buf.len()));
            let text = CStr::from_bytes_until_nul(&buf)
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_else(|_| String::from_utf8_lossy(&buf).into_owned());
            return Ok(text);
        }
        bail!("sysctl hw.disknames keeps growing")
    }

    /// The file backing a vnd unit, as `(st_dev, st_ino)`, or `None` when the unit is not
    /// configured (`VNDIOCGET` on its raw partition, as `vnconfig -l` does).
    fn backing_of(unit: u32) -> Result<Option<(u64, u64)>> {
        let node = nb::vnd_raw_node(unit);
        let f = match OpenOptions::new().read(true).open(&node) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot open {node}")),
        };
        vnd_get(&f).with_context(|| format!("VNDIOCGET on {node}"))
    }

    fn vnd_get(f: &File) -> io::Result<Option<(u64, u64)>> {
        let mut vnu = VndUser {
            vnu_unit: -1,
            ..VndUser::default()
        };
        // SAFETY: VNDIOCGET reads and writes one `struct vnd_user`, which `VndUser` mirrors
        // (its size is encoded in the request and checked by a unit test).
        let r = unsafe {
            libc::ioctl(
                f.as_raw_fd(),
                nb::VNDIOCGET as libc::c_ulong,
                &mut vnu as *mut VndUser,
            )
        };
        if r == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok((vnu.vnu_ino != 0).then_some((vnu.vnu_dev, vnu.vnu_ino)))
    }

    fn run(cmd: &mut Command) -> Result<()> {
        let shown = format!("{cmd:?}");
        log::debug(&format!("running {shown}"));
        let out = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("cannot run {shown}"))?;
        if out.status.success() {
            // vnconfig only warns, and exits 0, when it cannot open the file: keep its words
            // in the hotplug log for the error that follows.
            let warn = String::from_utf8_lossy(&out.stderr);
            if !warn.trim().is_empty() {
                log::err(&format!("{shown}: {}", warn.trim()));
            }
            return Ok(());
        }
        let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if msg.is_empty() {
            msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        bail!("{shown} failed ({}): {msg}", out.status)
    }

    fn vnconfig(unit: u32, file: &str, read_only: bool) -> Result<()> {
        let mut cmd = Command::new(VNCONFIG);
        if read_only {
            cmd.arg("-r");
        }
        run(cmd.arg(nb::vnd_node(unit)).arg(file))
    }

    fn vnunconfig(unit: u32) -> Result<()> {
        run(Command::new(VNCONFIG).arg("-u").arg(nb::vnd_node(unit)))
    }
}
