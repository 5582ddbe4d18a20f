//! What CMD sees of the host's files: the private mounts, the paths shared
//! back with `--ro-bind`/`--bind`, and what its host uid may reach. `run`
//! uses it to say what the kennel is, to warn before CMD starts, and to give
//! CMD a PATH it can use.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Mounted empty and private in the kennel (when they exist on the host).
pub const PRIVATE: [&str; 4] = ["/tmp", "/run", "/var/tmp", "/dev/shm"];

/// CMD's PATH when none of the caller's directories is usable inside.
const FALLBACK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The kennel as CMD will see it.
pub struct View {
    /// CMD's host uid and gid.
    pub uid: u32,
    pub gid: u32,
    /// Canonical host paths shared at the same path inside.
    pub shared: Vec<PathBuf>,
}

impl View {
    /// Why `path` (a host path) is not visible to CMD, or `None` when it is
    /// (or does not exist).
    pub fn hidden(&self, path: &Path) -> Option<String> {
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if self.shared.iter().any(|s| path.starts_with(s)) {
            return None;
        }
        if let Some(m) = PRIVATE.iter().find(|m| path.starts_with(m)) {
            return Some(format!("{m} is private in the kennel"));
        }
        if path.exists() && !self.reachable(&path) {
            return Some(format!("host uid {} cannot reach it", self.uid));
        }
        None
    }

    /// Whether CMD's uid may search every directory down to `path` and
    /// read (or, for a directory, search) `path` itself. No ACLs, no groups
    /// beyond `gid`: the kennel drops supplementary groups.
    fn reachable(&self, path: &Path) -> bool {
        let may = |p: &Path, bit: u32| {
            std::fs::metadata(p).is_ok_and(|m| {
                let mode = m.mode();
                let bits = if m.uid() == self.uid {
                    mode >> 6
                } else if m.gid() == self.gid {
                    mode >> 3
                } else {
                    mode
                };
                self.uid == 0 || bits & bit != 0
            })
        };
        let last = if path.is_dir() { 0o1 } else { 0o4 };
        path.ancestors().skip(1).all(|dir| may(dir, 0o1)) && may(path, last)
    }

    /// CMD's PATH: the caller's directories that CMD can reach, and the ones
    /// dropped, each with the reason.
    pub fn path_inside(&self, host: Option<&OsStr>) -> (String, Vec<(PathBuf, String)>) {
        let (mut kept, mut dropped) = (Vec::new(), Vec::new());
        for dir in host.map(std::env::split_paths).into_iter().flatten() {
            if !dir.is_absolute() {
                dropped.push((dir, "not an absolute path".into()));
            } else if kept.contains(&dir) || dropped.iter().any(|(d, _)| *d == dir) {
                continue;
            } else if let Some(why) = self.hidden(&dir) {
                dropped.push((dir, why));
            } else {
                kept.push(dir);
            }
        }
        let joined = std::env::join_paths(&kept)
            .ok()
            .and_then(|p| p.into_string().ok())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| FALLBACK_PATH.into());
        (joined, dropped)
    }

    /// One line: what the kennel is, for the start of `run`.
    pub fn summary(&self, upstream: &str, home: Option<&Path>) -> String {
        let home = home
            .filter(|h| self.hidden(h).is_some())
            .map(|h| {
                format!(
                    ", nor {} (host uid {} cannot reach it)",
                    h.display(),
                    self.uid
                )
            })
            .unwrap_or_default();
        let shared = if self.shared.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = self
                .shared
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            format!("; shared from the host: {}", list.join(", "))
        };
        format!(
            "CMD runs as root inside the kennel (host uid {}) with a private /tmp, /run, /var/tmp \
             and /dev/shm: the host's are not visible{home}{shared}; DNS via allowdns at {}, upstream: {upstream}",
            self.uid,
            super::DNS.ip(),
        )
    }

    /// What CMD will not find where the caller expects it: its working
    /// directory, its program, and arguments naming host paths.
    pub fn warnings(
        &self,
        cwd: Option<&Path>,
        command: &[String],
        path_inside: &str,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let hint = |p: &Path| format!("share it with --ro-bind {} (or --bind)", p.display());
        if let Some(cwd) = cwd
            && let Some(why) = self.hidden(cwd)
        {
            out.push(format!(
                "the working directory {} is not visible in the kennel ({why}): CMD starts in /; {}",
                cwd.display(),
                hint(cwd)
            ));
        }
        let resolve = |arg: &str| -> Option<PathBuf> {
            let p = Path::new(arg);
            let full = if p.is_absolute() {
                p.to_path_buf()
            } else {
                cwd?.join(p)
            };
            full.symlink_metadata().is_ok().then_some(full)
        };
        // A path CMD is given that the host has and the kennel hides, and why.
        let unseen = |arg: &str| -> Option<(PathBuf, String)> {
            let full = resolve(arg)?;
            let why = self.hidden(&full)?;
            Some((full, why))
        };
        let Some((program, args)) = command.split_first() else {
            return out;
        };
        if program.contains('/') {
            if let Some((full, why)) = unseen(program) {
                out.push(format!(
                    "CMD {} is not visible in the kennel ({why}); {}",
                    full.display(),
                    hint(&full)
                ));
            }
        } else {
            let host = std::env::var_os("PATH");
            let outside = find(program, host.as_deref());
            let inside = find(program, Some(OsStr::new(path_inside)));
            match (&outside, &inside) {
                (Some(o), Some(i)) if o != i => out.push(format!(
                    "CMD '{program}' is {} in the kennel, not {} ({})",
                    i.display(),
                    o.display(),
                    self.hidden(o).unwrap_or_default()
                )),
                (Some(o), None) => out.push(format!(
                    "CMD '{program}' is {} on the host, which the kennel cannot reach ({}); \
                     in the kennel's PATH it is not found",
                    o.display(),
                    self.hidden(o).unwrap_or_default()
                )),
                _ => {}
            }
        }
        for arg in args.iter().filter(|a| !a.starts_with('-')) {
            if let Some((full, why)) = unseen(arg) {
                out.push(format!(
                    "argument '{arg}' names the host path {}, which is not visible in the kennel ({why}); {}",
                    full.display(),
                    hint(&full)
                ));
            }
        }
        out
    }
}

/// `name` in the directories of `path`, as a shell would find it.
pub fn find(name: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> View {
        View {
            uid: 65534,
            gid: 65534,
            shared: vec![PathBuf::from("/tmp/shared-for-unit-test")],
        }
    }

    #[test]
    fn private_mounts_hide_except_what_is_shared() {
        let v = view();
        assert_eq!(
            v.hidden(Path::new("/tmp/lab/agent.py")).as_deref(),
            Some("/tmp is private in the kennel")
        );
        assert!(v.hidden(Path::new("/var/tmp/x")).is_some());
        assert!(v.hidden(Path::new("/tmp/shared-for-unit-test/a")).is_none());
        assert!(v.hidden(Path::new("/usr/bin")).is_none());
        assert!(v.hidden(Path::new("/tmpfoo")).is_none());
    }

    #[test]
    fn path_inside_drops_what_cmd_cannot_use() {
        let v = view();
        let (path, dropped) = v.path_inside(Some(OsStr::new("/tmp/bin:/usr/bin:rel:/bin")));
        assert_eq!(path, "/usr/bin:/bin");
        let names: Vec<_> = dropped
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        assert_eq!(names, ["/tmp/bin", "rel"]);
        let (path, _) = v.path_inside(Some(OsStr::new("/tmp/only")));
        assert_eq!(path, FALLBACK_PATH);
    }

    #[test]
    fn warnings_name_the_hidden_cwd_and_arguments() {
        let v = view();
        let dir = std::env::temp_dir().join(format!("allowdns-view-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("agent.py"), "").unwrap();
        let arg = dir.join("agent.py").display().to_string();
        let w = v.warnings(
            Some(&dir),
            &["sh".into(), arg.clone(), "--x".into()],
            "/usr/bin:/bin",
        );
        let _ = std::fs::remove_dir_all(&dir);
        if !dir.starts_with("/tmp") {
            return;
        }
        assert!(
            w.iter()
                .any(|l| l.contains("working directory") && l.contains("CMD starts in /")),
            "{w:?}"
        );
        assert!(
            w.iter()
                .any(|l| l.contains(&format!("argument '{arg}'")) && l.contains("--ro-bind")),
            "{w:?}"
        );
    }
}
