//! `serve --watch`: a second trigger for the SIGHUP reload, fired when a
//! policy, zone or config file changes.
//!
//! The directories that hold them are watched, not the files: kubelet updates
//! a mounted ConfigMap by writing a new `..2024_…` directory and renaming a
//! fresh `..data` symlink over the old one, so `agent.yaml -> ..data/agent.yaml`
//! never changes itself. Events are debounced (kubelet's swap is several
//! events), and the reload itself is [`crate::ops::reload::reload`], so a bad
//! file keeps the old set in force exactly as with SIGHUP.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher, event::ModifyKind};

use crate::config::Settings;

/// Quiet time after the last event before reloading.
const QUIET: Duration = Duration::from_millis(200);
/// A directory that never goes quiet still reloads this often.
const MAX_DELAY: Duration = Duration::from_secs(2);

/// Why the watch could not start, naming the directory.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {}: {source}", path.display())]
pub struct WatchError {
    pub path: PathBuf,
    #[source]
    pub source: notify::Error,
}

/// `--watch` when given, else on when any policy path is a directory (a
/// mounted ConfigMap is one).
pub fn wanted(flag: Option<bool>, settings: &Settings) -> bool {
    flag.unwrap_or_else(|| settings.policies.iter().any(|p| p.is_dir()))
}

/// One watched directory, and which of its entries matter.
#[derive(Debug)]
struct Target {
    dir: PathBuf,
    /// `None`: every entry (a policy or zones directory).
    names: Option<Vec<OsString>>,
}

/// A running inotify watch; [`Watch::changed`] yields once per settled change.
pub struct Watch {
    _watcher: RecommendedWatcher,
    dirty: Arc<tokio::sync::Notify>,
}

impl Watch {
    /// Watches the directories of the policies, zones and config file.
    pub fn start(config: Option<&Path>, settings: &Settings) -> Result<Watch, WatchError> {
        let targets = Arc::new(targets(config, settings));
        // The audit log may share a directory with what is watched: its own
        // writes must not trigger reloads (each reload writes an audit event).
        let ignore = settings.audit_log.clone();
        let dirty = Arc::new(tokio::sync::Notify::new());
        let (mark, relevant) = (dirty.clone(), targets.clone());
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            match res {
                Ok(event) if matters(&event, &relevant, ignore.as_deref()) => mark.notify_one(),
                Ok(_) => {}
                // A queue overflow or a lost watch: events may be missed, so reload.
                Err(e) => {
                    tracing::warn!("policy watch: {e}; reloading to be safe");
                    mark.notify_one();
                }
            }
        })
        .map_err(|source| WatchError {
            path: PathBuf::new(),
            source,
        })?;
        for target in targets.iter() {
            watcher
                .watch(&target.dir, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError {
                    path: target.dir.clone(),
                    source,
                })?;
            tracing::info!(dir = %target.dir.display(), "watching for policy changes");
        }
        Ok(Watch {
            _watcher: watcher,
            dirty,
        })
    }

    /// Returns once something changed and then stayed quiet for [`QUIET`]
    /// (or [`MAX_DELAY`] passed).
    pub async fn changed(&self) {
        self.dirty.notified().await;
        let first = Instant::now();
        while first.elapsed() < MAX_DELAY
            && tokio::time::timeout(QUIET, self.dirty.notified())
                .await
                .is_ok()
        {}
    }
}

/// The next settled change, or never when there is no watch.
pub async fn changed(watch: Option<&Watch>) {
    match watch {
        Some(watch) => watch.changed().await,
        None => std::future::pending().await,
    }
}

fn targets(config: Option<&Path>, settings: &Settings) -> Vec<Target> {
    let mut targets: Vec<Target> = Vec::new();
    let mut add = |dir: PathBuf, name: Option<OsString>| {
        let existing = targets.iter_mut().find(|t| t.dir == dir);
        match (existing, name) {
            (Some(t), Some(name)) => {
                if let Some(names) = &mut t.names {
                    names.push(name);
                }
            }
            (Some(t), None) => t.names = None,
            (None, name) => targets.push(Target {
                dir,
                names: name.map(|n| vec![n]),
            }),
        }
    };
    let files = settings.policies.iter().map(PathBuf::as_path).chain(config);
    for path in files {
        if path.is_dir() {
            add(path.to_path_buf(), None);
        } else if let Some(name) = path.file_name() {
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            add(dir, Some(name.to_os_string()));
        }
    }
    if let Some(zones) = &settings.zones {
        add(zones.clone(), None);
    }
    targets
}

fn matters(event: &notify::Event, targets: &[Target], ignore: Option<&Path>) -> bool {
    // Reading the files (our own reload) must not count as a change.
    if matches!(
        event.kind,
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_))
    ) {
        return false;
    }
    if event.need_rescan() {
        return true;
    }
    event.paths.iter().any(|path| {
        if Some(path.as_path()) == ignore {
            return false;
        }
        targets.iter().any(|t| {
            if path == &t.dir {
                return true;
            }
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return false;
            };
            parent == t.dir
                && t.names.as_ref().is_none_or(|names| {
                    // kubelet's `..data` swap changes what every file points to.
                    names.iter().any(|n| n == name) || name.as_encoded_bytes().starts_with(b"..")
                })
        })
    })
}
