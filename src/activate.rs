//! `activate` and `deactivate`: switch a host's Xen script directory to this binary, and
//! back to exactly what was there.
//!
//! Debian's xen-utils-common owns every file in `/etc/xen/scripts` as a conffile, and Debian
//! Policy §3.9 and §10.7.4 forbid another package to divert or own them
//! (`shared/docs/packaging.md` D.1, D.2). So the package installs nothing there; activation is
//! an explicit admin command. It replaces each script libxl runs (`hotplug/<OS>/links`) with
//! a relative symlink to the personality link in the libexec directory
//! (`/etc/xen/scripts/block` -> `../../../usr/libexec/xen-block-hotplug/block`), keeping the
//! original as `<name>.upstream`, a hard link to the same inode (same bytes, mode, owner,
//! mtime), which `deactivate` renames back. dpkg sees a locally modified conffile and keeps
//! it across `--reinstall` and upgrades of xen-utils-common.
//!
//! * Every step is atomic for libxl: a new link is made beside the script and renamed over
//!   it, the original is kept by `link(2)` before that, and restored by `rename(2)`. At no
//!   moment is a script missing.
//! * All names are checked before anything changes: a refusal leaves the directory as it was.
//! * Both commands are idempotent, and each finishes a run that was interrupted half-way
//!   (an original and its `.upstream` that are the same inode).
//! * Only upstream's scripts and ours are touched. Upstream's: a file the dpkg database
//!   lists as a conffile with the md5 it was shipped with (`dpkg-query`); where no
//!   package database knows the file (a Xen built from source, the BSDs), a shell script that
//!   sources Xen's hotplug libraries. Ours: a symlink into a `xen-block-hotplug` directory
//!   naming a personality or the binary (the layout `make install` has always made).
//!
//! `make install` and `make uninstall` run these same commands (with `--root` for `DESTDIR`),
//! so there is one implementation of the switch.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, anyhow};

use crate::script::DEFAULT_SCRIPT_DIR;

/// Where the binary and its personality links are installed, unless the build says
/// otherwise (`make LIBEXECDIR=...` passes `XBH_LIBEXEC_DIR`).
pub const DEFAULT_LIBEXEC_DIR: &str = match option_env!("XBH_LIBEXEC_DIR") {
    Some(d) => d,
    None => "/usr/libexec/xen-block-hotplug",
};

/// The binary's own name in the libexec directory.
const BINARY: &str = "xen-block-hotplug";

/// Suffix of the kept original (the name `make install` has always used).
const KEPT: &str = ".upstream";

// The scripts this OS's libxl runs that the binary replaces; the same files `make install`
// reads, so the two never disagree.
#[cfg(target_os = "netbsd")]
const LINKS: &str = include_str!("../hotplug/NetBSD/links");
#[cfg(target_os = "freebsd")]
const LINKS: &str = include_str!("../hotplug/FreeBSD/links");
#[cfg(not(any(target_os = "netbsd", target_os = "freebsd")))]
const LINKS: &str = include_str!("../hotplug/Linux/links");

/// The script names, `block` first (the one libxl runs by default).
pub fn script_names() -> Vec<&'static str> {
    LINKS
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Switch this host to xen-block-hotplug and back.
#[derive(clap::Subcommand, Debug)]
pub enum HostCommand {
    /// Replace Xen's block scripts with links to this binary, keeping each original.
    ///
    /// Replaces `block`, `block-iscsi`, `block-nbd` and `block-drbd` that are present in
    /// the Xen script directory with symlinks to the personality links in the libexec
    /// directory, keeping each original as `<name>.upstream`. Refuses, changing nothing,
    /// when a script is neither upstream's (as the package database recorded it, or a Xen
    /// hotplug shell script where no package owns it) nor already ours. Running it again
    /// changes nothing.
    Activate(ActivateArgs),
    /// Put back the scripts `activate` replaced, exactly as they were.
    ///
    /// Renames each `<name>.upstream` back over our link; a link with nothing kept (made
    /// with `--create-missing`) is removed. Refuses, changing nothing, when a script is no
    /// longer ours and a different original is kept beside it. Running it again changes
    /// nothing. The package's prerm runs it on removal.
    Deactivate(Where),
}

/// Which tree to switch.
#[derive(clap::Args, Debug, Clone)]
pub struct Where {
    /// Work on the tree under DIR (an install root, a chroot); links stay relative so they
    /// resolve inside it.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Xen's script directory, as libxl sees it (absolute).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_SCRIPT_DIR)]
    pub script_dir: PathBuf,
    /// The directory holding the binary and its personality links (absolute).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_LIBEXEC_DIR)]
    pub libexec_dir: PathBuf,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ActivateArgs {
    #[command(flatten)]
    pub place: Where,
    /// Also link names that are absent from the script directory (`make install` into an
    /// empty tree). Without it an absent script is left absent.
    #[arg(long)]
    pub create_missing: bool,
    /// Replace a script that is neither upstream's nor ours too (it is kept and restored by
    /// `deactivate` like any other).
    #[arg(long)]
    pub force: bool,
}

/// Runs an activate or deactivate command: a line per script on stdout; a refusal or
/// failure on stderr with exit status 1.
pub fn run(cmd: HostCommand) -> ExitCode {
    let (verb, result) = match cmd {
        HostCommand::Activate(a) => (
            "activate",
            Host::open(&a.place).and_then(|h| h.activate(&a)),
        ),
        HostCommand::Deactivate(w) => ("deactivate", Host::open(&w).and_then(|h| h.deactivate())),
    };
    match result {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xen-block-hotplug {verb}: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// What a script path holds now.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    Absent,
    /// Our symlink, with its text.
    Ours(PathBuf),
    /// Upstream's script; why we know.
    Upstream(String),
    /// Neither; why not.
    Other(String),
}

/// What to do to one script.
#[derive(Debug, PartialEq, Eq)]
enum Act {
    Nothing,
    /// Make our link; `keep`: first hard-link the present file to `<name>.upstream`.
    Link {
        keep: bool,
    },
    /// Our link, pointed at the right personality link.
    Relink,
    /// Rename `<name>.upstream` over the script.
    Restore,
    /// Remove our link (nothing was there before it).
    Remove,
    /// Remove `<name>.upstream`, a second name of the script itself (an interrupted run).
    DropKept,
}

struct Step {
    name: &'static str,
    act: Act,
    note: String,
}

/// One tree: the root, the script directory and the libexec directory in it.
pub struct Host {
    root: PathBuf,
    script_dir: PathBuf,
    libexec_dir: PathBuf,
    /// The dpkg database's conffiles: (package, path, md5), read once per command.
    conffiles: Vec<Conffile>,
}

#[derive(Debug, PartialEq, Eq)]
struct Conffile {
    package: String,
    path: String,
    md5: String,
}

impl Host {
    /// Errors: a directory that is not absolute or contains `..` (links are computed from
    /// the path's components, so it must be literal).
    pub fn new(w: &Where) -> Result<Host> {
        for (what, p) in [
            ("--script-dir", &w.script_dir),
            ("--libexec-dir", &w.libexec_dir),
        ] {
            if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
                return Err(anyhow!(
                    "{what} {}: must be an absolute path without '..'",
                    p.display()
                ));
            }
        }
        Ok(Host {
            root: w.root.clone(),
            script_dir: w.script_dir.clone(),
            libexec_dir: w.libexec_dir.clone(),
            conffiles: Vec::new(),
        })
    }

    /// Reads the conffiles dpkg recorded under `--root`, through `dpkg-query` (the database
    /// format is dpkg's own business). No dpkg database there: none.
    /// Errors: a database that exists but cannot be queried (then nothing can be judged).
    fn load_conffiles(&mut self) -> Result<()> {
        let admindir = self.root.join("var/lib/dpkg");
        if !admindir.join("status").exists() {
            return Ok(());
        }
        let out = Command::new("dpkg-query")
            .arg(format!("--admindir={}", admindir.display()))
            .args(["-W", "-f", "P ${Package}\\n${Conffiles}\\n"])
            .output()
            .context("running dpkg-query to find what Xen's package installed")?;
        if !out.status.success() {
            return Err(anyhow!(
                "dpkg-query --admindir={}: {}",
                admindir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        self.conffiles = parse_conffiles(&String::from_utf8_lossy(&out.stdout));
        Ok(())
    }

    /// `new`, with the package database read. Errors: as `new` and `load_conffiles`.
    pub fn open(w: &Where) -> Result<Host> {
        let mut h = Host::new(w)?;
        h.load_conffiles()?;
        Ok(h)
    }

    fn in_root(&self, p: &Path) -> PathBuf {
        self.root.join(p.strip_prefix("/").unwrap_or(p))
    }

    /// The script directory as this process reaches it.
    fn dir(&self) -> PathBuf {
        self.in_root(&self.script_dir)
    }

    /// The link text for `name`: relative, so a tree under `--root` resolves inside it.
    fn link_text(&self, name: &str) -> PathBuf {
        let mut t = PathBuf::new();
        for c in self.script_dir.components() {
            if matches!(c, Component::Normal(_)) {
                t.push("..");
            }
        }
        t.push(
            self.libexec_dir
                .strip_prefix("/")
                .unwrap_or(&self.libexec_dir),
        );
        t.push(name);
        t
    }

    /// Replaces the scripts (see the module docs). Returns a line per script.
    /// Errors: every refusal, naming the file and why, with nothing changed; or the first
    /// failed file operation.
    pub fn activate(&self, a: &ActivateArgs) -> Result<Vec<String>> {
        let names = script_names();
        let mut steps = Vec::new();
        let mut refusals = Vec::new();
        for (i, &name) in names.iter().enumerate() {
            match self.plan_activate(name, i == 0, a) {
                Ok(s) => steps.push(s),
                Err(r) => refusals.push(r),
            }
        }
        self.apply(steps, refusals)
    }

    /// Restores the scripts (see the module docs). Returns a line per script.
    /// Errors: as `activate`.
    pub fn deactivate(&self) -> Result<Vec<String>> {
        let mut steps = Vec::new();
        let mut refusals = Vec::new();
        for name in script_names() {
            match self.plan_deactivate(name) {
                Ok(s) => steps.push(s),
                Err(r) => refusals.push(r),
            }
        }
        let mut lines = self.apply(steps, refusals)?;
        for name in script_names() {
            if let Some(l) = self.tidy_dpkg_new(name)? {
                lines.push(l);
            }
        }
        Ok(lines)
    }

    /// dpkg follows a conffile that is a symlink (`conffderef` in dpkg's configure.c): while
    /// activated, a reinstall or upgrade of xen-utils-common looks for its new version beside
    /// our binary, finds none and leaves the one it unpacked as `<name>.dpkg-new` in the
    /// script directory, its record of the conffile unchanged. Once the original is back,
    /// a `.dpkg-new` with the same bytes is that reinstall's leftover and is removed; a
    /// different one is a newer version dpkg never installed: left, and named.
    /// Errors: a leftover that cannot be read or removed.
    fn tidy_dpkg_new(&self, name: &str) -> Result<Option<String>> {
        let path = self.dir().join(name);
        let new = self.dir().join(format!("{name}.dpkg-new"));
        let Ok(new_bytes) = fs::read(&new) else {
            return Ok(None);
        };
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_file())
            && fs::read(&path).is_ok_and(|cur| cur == new_bytes)
        {
            fs::remove_file(&new).with_context(|| format!("removing {}", new.display()))?;
            return Ok(Some(format!(
                "{}: removed, the same as {name} (left by a reinstall of Xen's package while active)",
                new.display()
            )));
        }
        Ok(Some(format!(
            "{}: a newer version of {name} that dpkg unpacked while this was active and never \
             installed; reinstall Xen's package (apt-get install --reinstall xen-utils-common) \
             to install it",
            new.display()
        )))
    }

    fn plan_activate(
        &self,
        name: &'static str,
        required: bool,
        a: &ActivateArgs,
    ) -> Result<Step, String> {
        let path = self.dir().join(name);
        let kept = self.dir().join(format!("{name}{KEPT}"));
        let want = self.link_text(name);
        let step = |act, note: &str| {
            Ok(Step {
                name,
                act,
                note: note.to_string(),
            })
        };
        let found = self.classify(name);
        let act = match found {
            Found::Ours(ref text) if *text == want => return step(Act::Nothing, "already active"),
            Found::Ours(_) => Act::Relink,
            Found::Absent if exists(&kept) => Act::Link { keep: false },
            Found::Absent if a.create_missing => Act::Link { keep: false },
            Found::Absent if required => {
                return Err(format!(
                    "{}: does not exist, so Xen's tools are not installed here (Debian: \
                     xen-utils-common); activate replaces the scripts, it does not add them",
                    path.display()
                ));
            }
            Found::Absent => return step(Act::Nothing, "absent, left absent"),
            Found::Other(why) if !a.force => {
                return Err(format!(
                    "{}: {why}; not replacing it (--force replaces it anyway, keeping it as \
                     {name}{KEPT})",
                    path.display()
                ));
            }
            Found::Upstream(_) | Found::Other(_) => match same_file(&path, &kept) {
                Some(true) => Act::Link { keep: false },
                Some(false) => {
                    return Err(format!(
                        "{}: {} exists too and is a different file; which one is the original? \
                         Move the wrong one away",
                        path.display(),
                        kept.display()
                    ));
                }
                None => Act::Link { keep: true },
            },
        };
        // Never point libxl at a missing program: every disk attach would fail.
        let target = self.in_root(&self.libexec_dir).join(name);
        let runnable = fs::metadata(&target)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if !runnable {
            return Err(format!(
                "{}: not an executable (is xen-block-hotplug installed completely?)",
                target.display()
            ));
        }
        let note = match (&act, found) {
            (Act::Relink, _) => "active; link pointed at the personality link".to_string(),
            (Act::Link { keep: true }, Found::Upstream(why)) => {
                format!("activated; the original ({why}) kept as {name}{KEPT}")
            }
            (Act::Link { keep: true }, _) => {
                format!("activated (--force); the original kept as {name}{KEPT}")
            }
            (_, Found::Absent) if exists(&kept) => format!("activated; {name}{KEPT} already kept"),
            (_, Found::Absent) => "activated (nothing was there)".to_string(),
            _ => format!("activated; {name}{KEPT} already kept"),
        };
        Ok(Step { name, act, note })
    }

    fn plan_deactivate(&self, name: &'static str) -> Result<Step, String> {
        let path = self.dir().join(name);
        let kept = self.dir().join(format!("{name}{KEPT}"));
        let has_kept = exists(&kept);
        let (act, note) = match self.classify(name) {
            Found::Ours(_) if has_kept => (Act::Restore, format!("restored from {name}{KEPT}")),
            Found::Ours(_) => (
                Act::Remove,
                "link removed (nothing was there before)".into(),
            ),
            Found::Absent if has_kept => (Act::Restore, format!("restored from {name}{KEPT}")),
            Found::Absent => (Act::Nothing, "not active".into()),
            Found::Upstream(_) | Found::Other(_) if !has_kept => {
                (Act::Nothing, "not active".into())
            }
            Found::Upstream(_) | Found::Other(_) => match same_file(&path, &kept) {
                Some(true) => (
                    Act::DropKept,
                    format!("not active; removed the extra name {name}{KEPT}"),
                ),
                _ => {
                    return Err(format!(
                        "{}: not our link any more (a package upgrade or an admin replaced it), \
                         and {} holds the original activate kept; keep the one you want and \
                         remove the other",
                        path.display(),
                        kept.display()
                    ));
                }
            },
        };
        Ok(Step { name, act, note })
    }

    fn apply(&self, steps: Vec<Step>, refusals: Vec<String>) -> Result<Vec<String>> {
        if !refusals.is_empty() {
            return Err(anyhow!("nothing changed:\n  {}", refusals.join("\n  ")));
        }
        let dir = self.dir();
        let mut lines = Vec::new();
        for s in steps {
            let path = dir.join(s.name);
            if let Err(e) = self.apply_step(&s) {
                // Each step is whole, and both commands finish a half-done run: say what is
                // done, so the admin knows the state and that running again is safe.
                let done = if lines.is_empty() {
                    "nothing changed".to_string()
                } else {
                    format!("already done:\n  {}", lines.join("\n  "))
                };
                return Err(anyhow!(
                    "{e:#}\n{done}\nFix the cause and run the command again."
                ));
            }
            lines.push(format!("{}: {}", path.display(), s.note));
        }
        // The renames must survive a crash right after we report them.
        if let Ok(d) = fs::File::open(&dir) {
            d.sync_all()
                .with_context(|| format!("syncing {}", dir.display()))?;
        }
        Ok(lines)
    }

    fn apply_step(&self, s: &Step) -> Result<()> {
        let dir = self.dir();
        let path = dir.join(s.name);
        let kept = dir.join(format!("{}{KEPT}", s.name));
        match s.act {
            Act::Nothing => Ok(()),
            Act::Link { keep } => {
                if keep {
                    fs::hard_link(&path, &kept).with_context(|| {
                        format!("keeping {} as {}", path.display(), kept.display())
                    })?;
                }
                self.put_link(s.name)
            }
            Act::Relink => self.put_link(s.name),
            Act::Restore => fs::rename(&kept, &path)
                .with_context(|| format!("restoring {} from {}", path.display(), kept.display())),
            Act::Remove => {
                fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
            }
            Act::DropKept => {
                fs::remove_file(&kept).with_context(|| format!("removing {}", kept.display()))
            }
        }
    }

    /// Our link for `name`, made beside it and renamed over it (atomic for libxl).
    fn put_link(&self, name: &str) -> Result<()> {
        let dir = self.dir();
        let tmp = dir.join(format!(".{name}.xen-block-hotplug-new"));
        let _ = fs::remove_file(&tmp);
        symlink(self.link_text(name), &tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        let path = dir.join(name);
        fs::rename(&tmp, &path).with_context(|| {
            let _ = fs::remove_file(&tmp);
            format!("replacing {}", path.display())
        })
    }

    fn classify(&self, name: &str) -> Found {
        let path = self.dir().join(name);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Found::Absent,
            Err(e) => return Found::Other(format!("cannot be examined: {e}")),
        };
        if meta.file_type().is_symlink() {
            return match fs::read_link(&path) {
                Ok(t) if is_our_link(&t) => Found::Ours(t),
                Ok(t) => Found::Other(format!(
                    "a symbolic link to {}, which is not xen-block-hotplug",
                    t.display()
                )),
                Err(e) => Found::Other(format!("cannot read the link: {e}")),
            };
        }
        if !meta.is_file() {
            return Found::Other("not a regular file".into());
        }
        let installed = self.script_dir.join(name);
        let installed = installed.to_string_lossy();
        if let Some(c) = self.conffiles.iter().find(|c| c.path == installed) {
            let (pkg, md5) = (&c.package, &c.md5);
            return match md5sum(&path) {
                Ok(m) if m == *md5 => Found::Upstream(format!("as {pkg} installed it")),
                Ok(_) => Found::Other(format!(
                    "changed since {pkg} installed it (its md5 is not the {md5} dpkg recorded)"
                )),
                Err(e) => Found::Other(format!(
                    "cannot compare it with what {pkg} installed: {e:#}"
                )),
            };
        }
        match fs::read(&path) {
            Ok(text) if is_xen_hotplug_script(&text) => {
                Found::Upstream("a Xen hotplug script no package owns".into())
            }
            Ok(_) => Found::Other(
                "not a Xen hotplug script (no package owns it, and it does not source Xen's \
                 block-common.sh or hotplugpath.sh)"
                    .into(),
            ),
            Err(e) => Found::Other(format!("cannot be read: {e}")),
        }
    }
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

/// Whether two names are one inode (`None` when `b` does not exist).
fn same_file(a: &Path, b: &Path) -> Option<bool> {
    let mb = fs::symlink_metadata(b).ok()?;
    let ma = fs::symlink_metadata(a).ok()?;
    Some(ma.dev() == mb.dev() && ma.ino() == mb.ino())
}

/// Ours: a symlink whose last two components are `xen-block-hotplug/<script or binary>`,
/// judged on the text alone, so a link left dangling by a removed binary is still ours.
fn is_our_link(text: &Path) -> bool {
    let mut c = text.components().rev();
    let (Some(Component::Normal(file)), Some(Component::Normal(dir))) = (c.next(), c.next()) else {
        return false;
    };
    let file = file.to_string_lossy();
    dir == BINARY && (file == BINARY || script_names().contains(&file.as_ref()))
}

/// Xen's hotplug scripts source the libraries beside them (`block-common.sh` on Linux,
/// `hotplugpath.sh` on the BSDs; Xen's `tools/hotplug/<OS>`). Only consulted when no
/// package database knows the file.
fn is_xen_hotplug_script(text: &[u8]) -> bool {
    let has = |needle: &[u8]| text.windows(needle.len()).any(|w| w == needle);
    text.starts_with(b"#!") && (has(b"block-common.sh") || has(b"hotplugpath.sh"))
}

/// The conffiles in `dpkg-query -W -f 'P ${Package}\n${Conffiles}\n'` output: a `P <package>`
/// line, then one ` <path> <md5>[ obsolete]` line per conffile (dpkg-query(1), deb-control(5)).
/// Obsolete entries and `newconffile` placeholders are not a record of what was shipped and
/// are skipped.
fn parse_conffiles(out: &str) -> Vec<Conffile> {
    let mut package = None;
    let mut found = Vec::new();
    for line in out.lines() {
        if let Some(p) = line.strip_prefix("P ") {
            package = Some(p.trim().to_string());
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(path), Some(md5), None, Some(package)) = (f.next(), f.next(), f.next(), &package)
        else {
            continue;
        };
        if md5.len() == 32 && md5.bytes().all(|b| b.is_ascii_hexdigit()) {
            found.push(Conffile {
                package: package.clone(),
                path: path.to_string(),
                md5: md5.to_string(),
            });
        }
    }
    found
}

/// The md5 of a file, by coreutils' `md5sum` (Essential on Debian, where dpkg's records are
/// compared).
fn md5sum(path: &Path) -> Result<String> {
    let out = Command::new("md5sum")
        .arg("--")
        .arg(path)
        .output()
        .context("running md5sum")?;
    if !out.status.success() {
        return Err(anyhow!(
            "md5sum: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("md5sum printed nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_records() {
        let out = "P foo\n /etc/xen/scripts/block 0123456789abcdef0123456789abcdef\n \
                   /etc/xen/scripts/block-nbd 0123456789abcdef0123456789abcdef obsolete\n\
                   P bar\n /etc/xen/scripts/block-drbd newconffile\n\
                   P baz\n\n";
        assert_eq!(
            parse_conffiles(out),
            vec![Conffile {
                package: "foo".into(),
                path: "/etc/xen/scripts/block".into(),
                md5: "0123456789abcdef0123456789abcdef".into()
            }]
        );
        assert_eq!(parse_conffiles(""), vec![]);
    }

    #[test]
    fn our_links_by_text() {
        for t in [
            "../../../usr/libexec/xen-block-hotplug/block",
            "/usr/local/libexec/xen-block-hotplug/block-nbd",
            "../../../usr/libexec/xen-block-hotplug/xen-block-hotplug",
        ] {
            assert!(is_our_link(Path::new(t)), "{t}");
        }
        for t in [
            "/usr/libexec/other/block",
            "xen-block-hotplug",
            "/opt/xen-block-hotplug/vif-bridge",
            "block",
        ] {
            assert!(!is_our_link(Path::new(t)), "{t}");
        }
    }

    #[test]
    fn link_text_is_relative_to_the_script_dir() {
        let h = Host::new(&Where {
            root: "/".into(),
            script_dir: "/etc/xen/scripts".into(),
            libexec_dir: "/usr/libexec/xen-block-hotplug".into(),
        })
        .unwrap();
        assert_eq!(
            h.link_text("block"),
            Path::new("../../../usr/libexec/xen-block-hotplug/block")
        );
        assert!(
            Host::new(&Where {
                root: "/".into(),
                script_dir: "etc/xen".into(),
                libexec_dir: "/usr/libexec/x".into()
            })
            .is_err()
        );
        assert!(
            Host::new(&Where {
                root: "/".into(),
                script_dir: "/etc/../xen".into(),
                libexec_dir: "/usr/libexec/x".into()
            })
            .is_err()
        );
    }

    // ---- the commands on a private tree (`--root`), as make install and the package use them

    use std::collections::BTreeMap;

    struct Tree(PathBuf);

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const UPSTREAM: &str = "#!/bin/bash\n\ndir=$(dirname \"$0\")\n. \"$dir/block-common.sh\"\n";

    /// A root with Debian's layout: block, block-iscsi, block-nbd (no block-drbd, as
    /// xen-utils-common ships), block-common.sh, and the installed binary with its
    /// personality links.
    fn tree(tag: &str) -> Tree {
        let t =
            Tree(std::env::temp_dir().join(format!("xbh-activate-{tag}-{}", std::process::id())));
        let _ = fs::remove_dir_all(&t.0);
        let scripts = t.0.join("etc/xen/scripts");
        let lib = t.0.join("usr/libexec/xen-block-hotplug");
        fs::create_dir_all(&scripts).unwrap();
        fs::create_dir_all(&lib).unwrap();
        for (n, body) in [
            ("block", UPSTREAM.to_string()),
            ("block-iscsi", format!("{UPSTREAM}# iscsi\n")),
            ("block-nbd", format!("{UPSTREAM}# nbd\n")),
            ("block-common.sh", "# library\n".to_string()),
        ] {
            let p = scripts.join(n);
            fs::write(&p, body).unwrap();
            let mode = if n.ends_with(".sh") { 0o644 } else { 0o755 };
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        }
        fs::write(lib.join(BINARY), "binary").unwrap();
        fs::set_permissions(lib.join(BINARY), fs::Permissions::from_mode(0o755)).unwrap();
        for n in script_names() {
            symlink(BINARY, lib.join(n)).unwrap();
        }
        t
    }

    fn host(t: &Tree) -> Host {
        Host::open(&Where {
            root: t.0.clone(),
            script_dir: "/etc/xen/scripts".into(),
            libexec_dir: "/usr/libexec/xen-block-hotplug".into(),
        })
        .unwrap()
    }

    fn args(t: &Tree) -> ActivateArgs {
        ActivateArgs {
            place: Where {
                root: t.0.clone(),
                script_dir: "/etc/xen/scripts".into(),
                libexec_dir: "/usr/libexec/xen-block-hotplug".into(),
            },
            create_missing: false,
            force: false,
        }
    }

    /// Everything about the script directory that a restore must reproduce: per name, the
    /// link text, or the inode, mode, mtime (ns) and bytes.
    fn snapshot(t: &Tree) -> BTreeMap<String, String> {
        let dir = t.0.join("etc/xen/scripts");
        fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let m = fs::symlink_metadata(e.path()).unwrap();
                let v = if m.file_type().is_symlink() {
                    format!("-> {}", fs::read_link(e.path()).unwrap().display())
                } else {
                    format!(
                        "ino {} mode {:o} mtime {}.{} {:?}",
                        m.ino(),
                        m.mode(),
                        m.mtime(),
                        m.mtime_nsec(),
                        fs::read_to_string(e.path()).unwrap()
                    )
                };
                (e.file_name().to_string_lossy().into_owned(), v)
            })
            .collect()
    }

    fn link(name: &str) -> String {
        format!("-> ../../../usr/libexec/xen-block-hotplug/{name}")
    }

    #[test]
    fn activate_keeps_originals_and_deactivate_restores_them_exactly() {
        let t = tree("cycle");
        let before = snapshot(&t);
        let h = host(&t);
        let out = h.activate(&args(&t)).unwrap();
        let active = snapshot(&t);
        for n in ["block", "block-iscsi", "block-nbd"] {
            assert_eq!(active[n], link(n));
            // the kept original is the very inode that was there
            assert_eq!(active[&format!("{n}{KEPT}")], before[n]);
        }
        assert!(!active.contains_key("block-drbd"), "absent stays absent");
        assert!(!active.contains_key("block-drbd.upstream"));
        assert_eq!(active["block-common.sh"], before["block-common.sh"]);
        assert_eq!(active.len(), before.len() + 3);
        assert!(
            out.iter()
                .any(|l| l.ends_with("block-drbd: absent, left absent")),
            "{out:?}"
        );
        // the links resolve to the personality links
        let target = fs::canonicalize(t.0.join("etc/xen/scripts/block")).unwrap();
        assert_eq!(
            target,
            fs::canonicalize(t.0.join("usr/libexec/xen-block-hotplug/xen-block-hotplug")).unwrap()
        );

        // idempotent
        let again = h.activate(&args(&t)).unwrap();
        assert_eq!(snapshot(&t), active);
        assert!(
            again
                .iter()
                .filter(|l| l.ends_with("already active"))
                .count()
                == 3,
            "{again:?}"
        );

        h.deactivate().unwrap();
        assert_eq!(snapshot(&t), before, "restored exactly");
        let again = h.deactivate().unwrap();
        assert_eq!(snapshot(&t), before);
        assert!(again.iter().all(|l| l.ends_with("not active")), "{again:?}");
    }

    #[test]
    fn a_foreign_script_is_refused_and_nothing_changes() {
        let t = tree("foreign");
        let nbd = t.0.join("etc/xen/scripts/block-nbd");
        fs::write(&nbd, "#!/bin/sh\necho my own nbd script\n").unwrap();
        let before = snapshot(&t);
        let e = host(&t).activate(&args(&t)).unwrap_err().to_string();
        assert!(e.starts_with("nothing changed:"), "{e}");
        assert!(e.contains("block-nbd: not a Xen hotplug script"), "{e}");
        assert!(e.contains("--force"), "{e}");
        assert!(
            !e.contains("scripts/block:"),
            "only the foreign one is named: {e}"
        );
        assert_eq!(snapshot(&t), before);

        // a symlink elsewhere is foreign too
        fs::remove_file(&nbd).unwrap();
        symlink("/opt/other/block-nbd", &nbd).unwrap();
        let before = snapshot(&t);
        let e = host(&t).activate(&args(&t)).unwrap_err().to_string();
        assert!(e.contains("a symbolic link to /opt/other/block-nbd"), "{e}");
        assert_eq!(snapshot(&t), before);

        // --force takes it, and deactivate puts that very link back
        let mut a = args(&t);
        a.force = true;
        let out = host(&t).activate(&a).unwrap();
        assert!(
            out.iter()
                .any(|l| l.contains("block-nbd: activated (--force)")),
            "{out:?}"
        );
        assert_eq!(snapshot(&t)["block-nbd"], link("block-nbd"));
        host(&t).deactivate().unwrap();
        assert_eq!(snapshot(&t), before);
    }

    #[test]
    fn dpkg_records_decide_what_is_upstream() {
        let t = tree("dpkg");
        let block = t.0.join("etc/xen/scripts/block");
        let md5 = md5sum(&block).unwrap();
        fs::create_dir_all(t.0.join("var/lib/dpkg")).unwrap();
        fs::write(
            t.0.join("var/lib/dpkg/status"),
            format!(
                "Package: xen-utils-common\nStatus: install ok installed\nVersion: 1\n\
                 Architecture: all\nMaintainer: m <m@example.org>\nDescription: d\n\
                 Conffiles:\n /etc/xen/scripts/block {md5}\n"
            ),
        )
        .unwrap();
        let out = host(&t).activate(&args(&t)).unwrap();
        assert!(
            out.iter()
                .any(|l| l.contains("as xen-utils-common installed it")),
            "{out:?}"
        );
        host(&t).deactivate().unwrap();

        // one byte changed: no longer what the package shipped, even though it looks like a
        // Xen script
        fs::write(&block, format!("{UPSTREAM}#\n")).unwrap();
        let before = snapshot(&t);
        let e = host(&t).activate(&args(&t)).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "changed since xen-utils-common installed it (its md5 is not the {md5}"
            )),
            "{e}"
        );
        assert_eq!(snapshot(&t), before);
    }

    #[test]
    fn an_interrupted_run_is_finished() {
        let t = tree("interrupted");
        let dir = t.0.join("etc/xen/scripts");
        let before = snapshot(&t);
        // activate stopped after keeping block, before linking it
        fs::hard_link(dir.join("block"), dir.join("block.upstream")).unwrap();
        host(&t).deactivate().unwrap();
        assert_eq!(snapshot(&t), before, "deactivate drops the extra name");

        fs::hard_link(dir.join("block"), dir.join("block.upstream")).unwrap();
        host(&t).activate(&args(&t)).unwrap();
        let s = snapshot(&t);
        assert_eq!(s["block"], link("block"));
        assert_eq!(s["block.upstream"], before["block"]);
        host(&t).deactivate().unwrap();
        assert_eq!(snapshot(&t), before);
    }

    #[test]
    fn a_replaced_link_with_a_different_original_kept_is_refused() {
        let t = tree("upgraded");
        let block = t.0.join("etc/xen/scripts/block");
        host(&t).activate(&args(&t)).unwrap();
        // an upgrade whose admin took the maintainer's new version
        fs::remove_file(&block).unwrap();
        fs::write(&block, format!("{UPSTREAM}# 4.18\n")).unwrap();
        let before = snapshot(&t);
        let e = host(&t).deactivate().unwrap_err().to_string();
        assert!(e.contains("block: not our link any more"), "{e}");
        assert_eq!(snapshot(&t), before);
        let e = host(&t).activate(&args(&t)).unwrap_err().to_string();
        assert!(
            e.contains("block.upstream exists too and is a different file"),
            "{e}"
        );
        assert_eq!(snapshot(&t), before);
    }

    #[test]
    fn absent_scripts_and_missing_targets() {
        // no Xen tools: refused, nothing made
        let t = tree("absent");
        let dir = t.0.join("etc/xen/scripts");
        fs::remove_file(dir.join("block")).unwrap();
        let before = snapshot(&t);
        let e = host(&t).activate(&args(&t)).unwrap_err().to_string();
        assert!(
            e.contains("block: does not exist, so Xen's tools are not installed"),
            "{e}"
        );
        assert_eq!(snapshot(&t), before);

        // make install into an empty tree: every name linked, and removed again
        let mut a = args(&t);
        a.create_missing = true;
        host(&t).activate(&a).unwrap();
        let s = snapshot(&t);
        for n in script_names() {
            assert_eq!(s[n], link(n));
        }
        assert!(!s.contains_key("block.upstream"));
        host(&t).deactivate().unwrap();
        assert_eq!(snapshot(&t), before);

        // a personality link missing from the libexec directory: never link to nothing
        fs::remove_file(t.0.join("usr/libexec/xen-block-hotplug/block-iscsi")).unwrap();
        fs::write(dir.join("block"), UPSTREAM).unwrap();
        let before = snapshot(&t);
        let e = host(&t).activate(&args(&t)).unwrap_err().to_string();
        assert!(
            e.contains("xen-block-hotplug/block-iscsi: not an executable"),
            "{e}"
        );
        assert_eq!(snapshot(&t), before);
    }

    #[test]
    fn what_dpkg_left_beside_a_symlinked_conffile_is_tidied() {
        let t = tree("dpkg-new");
        let dir = t.0.join("etc/xen/scripts");
        let before = snapshot(&t);
        host(&t).activate(&args(&t)).unwrap();
        // a reinstall: the same bytes; an upgrade: different ones
        fs::copy(dir.join("block.upstream"), dir.join("block.dpkg-new")).unwrap();
        fs::write(
            dir.join("block-nbd.dpkg-new"),
            format!("{UPSTREAM}# newer\n"),
        )
        .unwrap();
        let out = host(&t).deactivate().unwrap();
        let after = snapshot(&t);
        assert!(!after.contains_key("block.dpkg-new"), "{out:?}");
        assert!(
            out.iter()
                .any(|l| l.contains("block-nbd.dpkg-new: a newer version")),
            "{out:?}"
        );
        assert!(after.contains_key("block-nbd.dpkg-new"));
        fs::remove_file(dir.join("block-nbd.dpkg-new")).unwrap();
        assert_eq!(snapshot(&t), before);
    }

    #[test]
    fn a_failure_half_way_says_what_is_done_and_a_rerun_finishes() {
        let t = tree("halfway");
        let dir = t.0.join("etc/xen/scripts");
        let before = snapshot(&t);
        // something in the way of block-iscsi's new link
        let blocker = dir.join(".block-iscsi.xen-block-hotplug-new");
        fs::create_dir_all(blocker.join("x")).unwrap();
        let e = host(&t).activate(&args(&t)).unwrap_err().to_string();
        assert!(
            e.contains("creating") && e.contains(".block-iscsi.xen-block-hotplug-new"),
            "{e}"
        );
        assert!(
            e.contains("already done:\n  ") && e.contains("scripts/block: activated"),
            "{e}"
        );
        assert!(
            e.ends_with("Fix the cause and run the command again."),
            "{e}"
        );
        fs::remove_dir_all(&blocker).unwrap();
        host(&t).activate(&args(&t)).unwrap();
        let s = snapshot(&t);
        assert_eq!(s["block-iscsi"], link("block-iscsi"));
        assert_eq!(s["block-iscsi.upstream"], before["block-iscsi"]);
        host(&t).deactivate().unwrap();
        assert_eq!(snapshot(&t), before);
    }

    #[test]
    fn a_link_from_an_older_install_is_ours() {
        // `make install` before the personality links pointed the scripts at the binary
        let t = tree("legacy");
        let dir = t.0.join("etc/xen/scripts");
        let before = snapshot(&t);
        fs::rename(dir.join("block"), dir.join("block.upstream")).unwrap();
        symlink(
            "../../../usr/libexec/xen-block-hotplug/xen-block-hotplug",
            dir.join("block"),
        )
        .unwrap();
        host(&t).activate(&args(&t)).unwrap();
        assert_eq!(snapshot(&t)["block"], link("block"));
        host(&t).deactivate().unwrap();
        assert_eq!(snapshot(&t), before);
    }
}
