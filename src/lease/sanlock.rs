//! The binding to libsanlock, loaded at run time (`dlopen`), so that a host with
//! `LEASES=none` runs without libsanlock installed (README "Cluster leases").
//!
//! Structures and calls as declared in Debian 12's libsanlock-dev 3.8.5 (`sanlock.h`,
//! `sanlock_resource.h`, `sanlock_admin.h`); return values are 0 or a negative errno or
//! `SANLK_*` code (`sanlock_rv.h`). The client library (`libsanlock_client.so.1`, package
//! libsanlock-client1) is preferred: it talks to the daemon only. `libsanlock.so.1` has
//! the same calls plus direct disk access. Either reaches the daemon at
//! `$SANLOCK_RUN_DIR/sanlock.sock` (default `/run/sanlock`), as its own clients do.

use std::ffi::{CStr, c_char, c_int};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::{Result, anyhow, bail};

pub const NAME_LEN: usize = 48;
pub const PATH_LEN: usize = 1024;

// sanlock.h
pub const RES_SHARED: u32 = 0x4;
pub const RES_PERSISTENT: u32 = 0x8;
/// 1 MiB alignment with 512-byte sectors: 2000 hosts, 1 MiB per lease.
pub const ALIGN1M_SECTOR512: u32 = 0x10 | 0x100;
// sanlock_resource.h
pub const ACQUIRE_ORPHAN_ONLY: u32 = 0x4;
pub const ACQUIRE_OWNER_NOWAIT: u32 = 0x8;
// sanlock_admin.h
pub const REM_UNUSED: u32 = 0x2;
pub const CONFIG_USED_BY_ORPHANS: u32 = 0x4;
pub const HOST_MASK: u32 = 0xf;
pub const HOST_LIVE: u32 = 3;
pub const HOST_FAIL: u32 = 4;
// sanlock_rv.h: a lease held by a live host, or one whose owner must first time out.
pub const ACQUIRE_IDLIVE: i32 = -243;
pub const ACQUIRE_OWNED: i32 = -244;
pub const ACQUIRE_OTHER: i32 = -245;
pub const ACQUIRE_SHRETRY: i32 = -246;
pub const ACQUIRE_OWNED_RETRY: i32 = -247;

/// The byte size of one lease area (`ALIGN1M`).
pub const LEASE_SIZE: u64 = 1 << 20;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Disk {
    pub path: [c_char; PATH_LEN],
    pub offset: u64,
    pub pad1: u32,
    pub pad2: u32,
}

/// `struct sanlk_resource` followed by exactly one `sanlk_disk` (its flexible array).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Resource {
    pub lockspace_name: [c_char; NAME_LEN],
    pub name: [c_char; NAME_LEN],
    pub lver: u64,
    pub data64: u64,
    pub data32: u32,
    pub unused: u32,
    pub flags: u32,
    pub num_disks: u32,
    pub disk: Disk,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Lockspace {
    pub name: [c_char; NAME_LEN],
    pub host_id: u64,
    pub flags: u32,
    pub disk: Disk,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Host {
    pub host_id: u64,
    pub generation: u64,
    pub timestamp: u64,
    pub io_timeout: u32,
    pub flags: u32,
}

fn fill(dst: &mut [c_char], s: &str, what: &str) -> Result<()> {
    // Names may use every byte (no terminator needed); paths need their NUL.
    let room = if dst.len() == PATH_LEN {
        PATH_LEN - 1
    } else {
        dst.len()
    };
    if s.len() > room || s.contains('\0') {
        bail!("{what} {s:?} does not fit sanlock's {room} bytes");
    }
    for (d, b) in dst.iter_mut().zip(s.bytes()) {
        *d = b as c_char;
    }
    Ok(())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow!("lease path {} is not UTF-8", p.display()))
}

impl Disk {
    pub fn new(path: &Path, offset: u64) -> Result<Disk> {
        let mut d = Disk {
            path: [0; PATH_LEN],
            offset,
            pad1: 0,
            pad2: 0,
        };
        // sanlock's string forms escape ':' and spaces; the struct takes the path as is.
        fill(&mut d.path, path_str(path)?, "lease path")?;
        Ok(d)
    }
}

impl Resource {
    /// One resource lease at `offset` of `path`.
    pub fn new(
        lockspace: &str,
        name: &str,
        path: &Path,
        offset: u64,
        flags: u32,
    ) -> Result<Resource> {
        let mut r = Resource {
            lockspace_name: [0; NAME_LEN],
            name: [0; NAME_LEN],
            lver: 0,
            data64: 0,
            data32: 0,
            unused: 0,
            flags,
            num_disks: 1,
            disk: Disk::new(path, offset)?,
        };
        fill(&mut r.lockspace_name, lockspace, "lockspace name")?;
        fill(&mut r.name, name, "resource name")?;
        Ok(r)
    }
}

impl Lockspace {
    pub fn new(name: &str, host_id: u64, path: &Path) -> Result<Lockspace> {
        let mut l = Lockspace {
            name: [0; NAME_LEN],
            host_id,
            flags: ALIGN1M_SECTOR512,
            disk: Disk::new(path, 0)?,
        };
        fill(&mut l.name, name, "lockspace name")?;
        Ok(l)
    }
}

type FnVoid = unsafe extern "C" fn() -> c_int;
type FnAcquire =
    unsafe extern "C" fn(c_int, c_int, u32, c_int, *mut *mut Resource, *mut u8) -> c_int;
type FnRelease = unsafe extern "C" fn(c_int, c_int, u32, c_int, *mut *mut Resource) -> c_int;
type FnLs = unsafe extern "C" fn(*mut Lockspace, u32) -> c_int;
type FnAddLsTimeout = unsafe extern "C" fn(*mut Lockspace, u32, u32) -> c_int;
type FnWriteLs = unsafe extern "C" fn(*mut Lockspace, c_int, u32, u32) -> c_int;
type FnWriteRes = unsafe extern "C" fn(*mut Resource, c_int, c_int, u32) -> c_int;
type FnReadOwners = unsafe extern "C" fn(*mut Resource, u32, *mut *mut Host, *mut c_int) -> c_int;
type FnGetHosts =
    unsafe extern "C" fn(*const c_char, u64, *mut *mut Host, *mut c_int, u32) -> c_int;
type FnSetConfig = unsafe extern "C" fn(*const c_char, u32, u32, *mut u8) -> c_int;
type FnStrerror = unsafe extern "C" fn(c_int) -> *const c_char;

/// The loaded library with the calls this project uses.
pub struct Sanlock {
    // Kept alive for the function pointers below.
    _lib: libloading::Library,
    register: FnVoid,
    acquire: FnAcquire,
    release: FnRelease,
    add_lockspace_timeout: FnAddLsTimeout,
    inq_lockspace: FnLs,
    rem_lockspace: FnLs,
    write_lockspace: FnWriteLs,
    write_resource: FnWriteRes,
    read_resource_owners: FnReadOwners,
    get_hosts: FnGetHosts,
    set_config: FnSetConfig,
    strerror: FnStrerror,
}

/// The libraries tried, in order.
pub const LIBRARIES: [&str; 2] = ["libsanlock_client.so.1", "libsanlock.so.1"];

/// A failed sanlock call: its return code and what was being done.
#[derive(Debug)]
pub struct Error {
    pub rv: i32,
    pub msg: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

impl Sanlock {
    /// Loads libsanlock. Errors say which package provides it.
    pub fn load() -> Result<Sanlock> {
        let mut errs = Vec::new();
        for name in LIBRARIES {
            // SAFETY: libsanlock's initialisers only set up its own state; it is a plain C
            // library with no constructors that depend on ours.
            match unsafe { libloading::Library::new(name) } {
                Ok(lib) => return Sanlock::bind(lib).map_err(|e| anyhow!("{name}: {e}")),
                Err(e) => errs.push(e.to_string()),
            }
        }
        bail!(
            "LEASES=sanlock but libsanlock cannot be loaded (install Debian's sanlock and \
             libsanlock-client1 packages): {}",
            errs.join("; ")
        )
    }

    fn bind(lib: libloading::Library) -> Result<Sanlock> {
        // SAFETY: each symbol is looked up with the C prototype declared for it in
        // libsanlock-dev 3.8.5's headers (see the type aliases above).
        unsafe {
            macro_rules! sym {
                ($n:literal) => {
                    *lib.get(concat!($n, "\0").as_bytes())
                        .map_err(|e| anyhow!("symbol {}: {e}", $n))?
                };
            }
            Ok(Sanlock {
                register: sym!("sanlock_register"),
                acquire: sym!("sanlock_acquire"),
                release: sym!("sanlock_release"),
                add_lockspace_timeout: sym!("sanlock_add_lockspace_timeout"),
                inq_lockspace: sym!("sanlock_inq_lockspace"),
                rem_lockspace: sym!("sanlock_rem_lockspace"),
                write_lockspace: sym!("sanlock_write_lockspace"),
                write_resource: sym!("sanlock_write_resource"),
                read_resource_owners: sym!("sanlock_read_resource_owners"),
                get_hosts: sym!("sanlock_get_hosts"),
                set_config: sym!("sanlock_set_config"),
                strerror: sym!("sanlock_strerror"),
                _lib: lib,
            })
        }
    }

    /// What a return code means: the errno's text for -1..-199, sanlock's name for its
    /// own codes (`sanlock_rv.h`), with the number.
    pub fn describe(&self, rv: i32) -> String {
        if rv < 0 && rv > -200 {
            return format!("{} ({rv})", std::io::Error::from_raw_os_error(-rv));
        }
        // SAFETY: sanlock_strerror returns a pointer to a static string (or NULL).
        let s = unsafe {
            let p = (self.strerror)(rv);
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        format!("{s} ({rv})").trim().to_string()
    }

    fn check(&self, rv: c_int, what: impl FnOnce() -> String) -> std::result::Result<(), Error> {
        if rv >= 0 {
            return Ok(());
        }
        Err(Error {
            rv,
            msg: format!("{}: sanlock: {}", what(), self.describe(rv)),
        })
    }

    /// Whether the daemon accepts connections on its socket (`run_dir()/sanlock.sock`; a
    /// stopped daemon leaves the file behind): without it every request fails with ENOENT
    /// or ECONNREFUSED, which `inq_lockspace` would report as "not joined".
    pub fn daemon_listening(&self) -> bool {
        std::os::unix::net::UnixStream::connect(
            std::path::Path::new(&run_dir()).join("sanlock.sock"),
        )
        .is_ok()
    }

    /// Registers this process with the daemon: leases acquired on the returned connection
    /// belong to this process (persistent ones become the host's orphans when it exits).
    pub fn register(&self) -> std::result::Result<Client<'_>, Error> {
        // SAFETY: no arguments; returns a new socket fd or a negative code.
        let fd = unsafe { (self.register)() };
        self.check(fd, || {
            format!(
                "cannot reach the sanlock daemon (socket in {}): is it running?",
                run_dir()
            )
        })?;
        // SAFETY: a fresh fd that we alone own from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Client { lib: self, fd })
    }

    /// Joins the lockspace (blocks until sanlock holds this host's delta lease: about
    /// 2 × io_timeout, 20 s by default). 0 or -EEXIST (already joined) is success.
    pub fn add_lockspace(
        &self,
        ls: &mut Lockspace,
        io_timeout: u32,
    ) -> std::result::Result<(), Error> {
        // SAFETY: ls points to a valid, initialised struct sanlk_lockspace.
        let rv = unsafe { (self.add_lockspace_timeout)(ls, 0, io_timeout) };
        if rv == -nix::libc::EEXIST {
            return Ok(());
        }
        self.check(rv, || "cannot join the lockspace".into())
    }

    /// Whether this host has joined the lockspace (0), is joining (-EINPROGRESS), or not
    /// (-ENOENT); other codes are errors.
    pub fn inq_lockspace(&self, ls: &mut Lockspace) -> i32 {
        // SAFETY: as in add_lockspace.
        unsafe { (self.inq_lockspace)(ls, 0) }
    }

    pub fn rem_lockspace(&self, ls: &mut Lockspace, flags: u32) -> std::result::Result<(), Error> {
        // SAFETY: as in add_lockspace.
        let rv = unsafe { (self.rem_lockspace)(ls, flags) };
        self.check(rv, || "cannot leave the lockspace".into())
    }

    /// Marks the lockspace as in use while this host has orphan leases in it
    /// (`SANLK_CONFIG_USED_BY_ORPHANS`): if the host then loses its lease storage, sanlock
    /// keeps the lockspace instead of leaving it cleanly, so the watchdog (when there is
    /// one) resets the host before others may take its disks.
    pub fn set_used_by_orphans(&self, lockspace: &str) -> std::result::Result<(), Error> {
        let name = std::ffi::CString::new(lockspace).map_err(|_| Error {
            rv: -nix::libc::EINVAL,
            msg: "lockspace name contains NUL".into(),
        })?;
        // SAFETY: a valid C string; this command takes no data.
        let rv = unsafe {
            (self.set_config)(
                name.as_ptr(),
                0,
                CONFIG_USED_BY_ORPHANS,
                std::ptr::null_mut(),
            )
        };
        self.check(rv, || "cannot configure the lockspace".into())
    }

    /// Formats the lockspace's delta leases (the daemon writes them).
    pub fn write_lockspace(
        &self,
        ls: &mut Lockspace,
        io_timeout: u32,
    ) -> std::result::Result<(), Error> {
        // SAFETY: as in add_lockspace; max_hosts 0 means "derived from the ALIGN flags".
        let rv = unsafe { (self.write_lockspace)(ls, 0, 0, io_timeout) };
        self.check(rv, || "cannot write the lockspace".into())
    }

    /// Formats one resource lease area (the daemon writes it).
    pub fn write_resource(&self, res: &mut Resource) -> std::result::Result<(), Error> {
        // SAFETY: res is a valid sanlk_resource with its one disk.
        let rv = unsafe { (self.write_resource)(res, 0, 0, 0) };
        self.check(rv, || "cannot write a resource lease".into())
    }

    /// The hosts holding `res` (host ids and generations), read from disk by the daemon.
    pub fn read_owners(&self, res: &Resource) -> std::result::Result<Vec<Host>, Error> {
        let mut r = *res;
        self.host_list(
            |hss, n| {
                // SAFETY: r is valid; on success sanlock stores a malloc'd array in *hss.
                unsafe { (self.read_resource_owners)(&mut r, 0, hss, n) }
            },
            "cannot read the lease's owners",
        )
    }

    /// The hosts of the lockspace that this daemon has seen, with their state (`host_id`
    /// 0: all of them).
    pub fn get_hosts(
        &self,
        lockspace: &str,
        host_id: u64,
    ) -> std::result::Result<Vec<Host>, Error> {
        let name = std::ffi::CString::new(lockspace).map_err(|_| Error {
            rv: -nix::libc::EINVAL,
            msg: "lockspace name contains NUL".into(),
        })?;
        self.host_list(
            |hss, n| {
                // SAFETY: name is a valid C string; the array is malloc'd by sanlock.
                unsafe { (self.get_hosts)(name.as_ptr(), host_id, hss, n, 0) }
            },
            "cannot list the lockspace's hosts",
        )
    }

    fn host_list(
        &self,
        call: impl FnOnce(*mut *mut Host, *mut c_int) -> c_int,
        what: &str,
    ) -> std::result::Result<Vec<Host>, Error> {
        let mut hss: *mut Host = std::ptr::null_mut();
        let mut n: c_int = 0;
        let rv = call(&mut hss, &mut n);
        let mut out = Vec::new();
        if !hss.is_null() {
            // SAFETY: sanlock returned n hosts in a malloc'd array, freed here once.
            unsafe {
                for i in 0..usize::try_from(n).unwrap_or(0) {
                    out.push(*hss.add(i));
                }
                nix::libc::free(hss.cast());
            }
        }
        self.check(rv, || what.to_string())?;
        Ok(out)
    }
}

/// A registered connection: the process's leases live as long as it (persistent ones
/// longer, as the host's orphans).
pub struct Client<'a> {
    lib: &'a Sanlock,
    fd: OwnedFd,
}

impl Client<'_> {
    fn sock(&self) -> c_int {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }

    pub fn acquire(&self, res: &Resource, flags: u32) -> std::result::Result<(), Error> {
        let mut r = *res;
        let mut p: *mut Resource = &mut r;
        // SAFETY: one valid resource; no options.
        let rv =
            unsafe { (self.lib.acquire)(self.sock(), -1, flags, 1, &mut p, std::ptr::null_mut()) };
        self.lib.check(rv, || "cannot acquire the lease".into())
    }

    pub fn release(&self, res: &Resource) -> std::result::Result<(), Error> {
        let mut r = *res;
        let mut p: *mut Resource = &mut r;
        // SAFETY: one valid resource held on this connection.
        let rv = unsafe { (self.lib.release)(self.sock(), -1, 0, 1, &mut p) };
        self.lib.check(rv, || "cannot release the lease".into())
    }
}

/// Where the daemon's socket is: `$SANLOCK_RUN_DIR`, else `/run/sanlock` (libsanlock's rule).
pub fn run_dir() -> String {
    std::env::var("SANLOCK_RUN_DIR").unwrap_or_else(|_| "/run/sanlock".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_c_headers() {
        // sanlock.h: 1024 + 8 + 4 + 4; 48 + 48 + 8 + 8 + 4 * 4 then the disk; the
        // lockspace's disk follows name, host_id and flags (padded to 8).
        assert_eq!(std::mem::size_of::<Disk>(), 1040);
        assert_eq!(std::mem::offset_of!(Resource, disk), 128);
        assert_eq!(std::mem::offset_of!(Lockspace, disk), 64);
        assert_eq!(std::mem::size_of::<Host>(), 32);
    }

    #[test]
    fn names_and_paths_must_fit() {
        let p = Path::new("/srv/l/x");
        assert!(Resource::new(&"a".repeat(48), "r", p, 0, 0).is_ok());
        assert!(Resource::new(&"a".repeat(49), "r", p, 0, 0).is_err());
        let long = format!("/{}", "a".repeat(1023));
        assert!(Disk::new(Path::new(&long), 0).is_err());
        assert!(Disk::new(Path::new(&long[..1023]), 0).is_ok());
    }
}
