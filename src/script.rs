//! The running script: how it was invoked, where its siblings live, how to hand over.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::anyhow;

/// Where libxl looks for scripts, unless the build says otherwise (`make XEN_SCRIPT_DIR=`).
pub const DEFAULT_SCRIPT_DIR: &str = match option_env!("XEN_SCRIPT_DIR") {
    Some(d) => d,
    None => "/etc/xen/scripts",
};

pub struct Script {
    /// The path we were invoked as (argv[0]), the prefix of every log message.
    pub invoked: String,
    /// The directory holding the sibling scripts (`block-<type>` helpers).
    pub dir: PathBuf,
    /// The arguments after argv[0], as given.
    pub args: Vec<OsString>,
}

impl Script {
    pub fn new(invoked: String, args: Vec<OsString>) -> Script {
        let dir = match Path::new(&invoked).parent() {
            Some(p) if invoked.contains('/') && !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from(DEFAULT_SCRIPT_DIR),
        };
        Script { invoked, dir, args }
    }

    /// The `block-<type>` helper for a backend `type`, if one is installed and executable
    /// (upstream's tail `[ -x $XEN_SCRIPT_DIR/block-$t ] && block-$t $command`).
    pub fn helper_for(&self, ty: Option<&str>) -> Option<PathBuf> {
        let ty = ty?;
        if ty.is_empty()
            || matches!(ty, "phy" | "file")
            || !ty
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        self.helper_named(&format!("block-{ty}"))
    }

    /// The sibling script `name` (`block-tap`), if it is installed and executable.
    pub fn helper_named(&self, name: &str) -> Option<PathBuf> {
        let path = self.dir.join(name);
        let meta = std::fs::metadata(&path).ok()?;
        use std::os::unix::fs::PermissionsExt;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(path)
    }

    /// Replaces this process with `helper`, same arguments and environment. Returns only
    /// on failure.
    pub fn exec(&self, helper: &Path) -> anyhow::Error {
        crate::log::debug(&format!("handing over to {}", helper.display()));
        let err = Command::new(helper).arg0(helper).args(&self.args).exec();
        anyhow!("cannot execute {}: {err}", helper.display())
    }
}

impl Script {
    /// `params` is neither ours to attach nor a device: hand over to the `block-<type>`
    /// helper when one is installed (returns only if the exec fails), else the refusal
    /// naming the path and what it is.
    pub fn hand_over(&self, params: &str, what: &str, ty: Option<&str>) -> anyhow::Error {
        match self.helper_for(ty) {
            Some(helper) => self.exec(&helper),
            None => no_helper(params, what, ty),
        }
    }
}

/// The refusal when no helper can take over.
pub fn no_helper(params: &str, what: &str, ty: Option<&str>) -> anyhow::Error {
    anyhow!(
        "params {params:?} is {what}, not a block device or a regular file{}",
        match ty {
            Some(t) if !matches!(t, "phy" | "file" | "") =>
                format!(", and there is no block-{t} script for type {t:?}"),
            _ => String::new(),
        }
    )
}
