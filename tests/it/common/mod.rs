//! Test harness: real parts only, one module per kind:
//! - [`upstream`]: a hickory authoritative server that records every question;
//! - [`process`]: the real allowdns binary on port 0, read up to its
//!   "listening on" line, killed on drop, and the audit log it writes;
//! - [`client`]: real DNS clients (hickory-proto over UDP/TCP, and dig);
//! - [`netns`]: network-namespace labs;
//! - [`readme`]: the README's marked examples.
//!
//! Every name is re-exported here, so a test says `common::query(...)`.

pub mod client;
pub mod netns;
pub mod process;
pub mod readme;
pub mod upstream;

pub use client::*;
pub use netns::in_ns;
pub use process::*;
pub use readme::*;
pub use upstream::*;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

pub fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("allowdns-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// A `zones` directory holding `(file name, text)` zone files.
    pub fn zones(&self, files: &[(&str, &str)]) -> PathBuf {
        let zones = self.0.join("zones");
        std::fs::create_dir_all(&zones).unwrap();
        for (name, text) in files {
            std::fs::write(zones.join(name), text).unwrap();
        }
        zones
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// In CI a missing prerequisite is a failure; elsewhere the test skips loudly.
pub fn require_or_skip(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and a prerequisite is missing: {reason}");
    }
    eprintln!("SKIPPED (not in CI): {reason}");
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Runs a command; panics with its stderr unless it succeeds.
pub fn sh(args: &[&str]) {
    let (ok, out) = sh_out(args);
    assert!(ok, "{args:?}: {out}");
}

/// Runs a command: whether it succeeded, and its stdout then stderr.
pub fn sh_out(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Every tool on PATH, or false after [`require_or_skip`] names the first
/// one missing (and its Debian package, which .ci/run installs).
pub fn require_tools(tools: &[&str]) -> bool {
    let missing = tools.iter().find(|tool| {
        !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let Some(tool) = missing else { return true };
    let package = match *tool {
        "ip" => "iproute2",
        "nft" => "nftables",
        "dig" => "dnsutils",
        "pasta" => "passt",
        "iodined" => "iodine",
        "getent" => "libc-bin",
        "unshare" | "mount" | "setpriv" => "util-linux",
        "sysctl" => "procps",
        "bwrap" => "bubblewrap",
        "setcap" => "libcap2-bin",
        other => other,
    };
    require_or_skip(&format!(
        "{} needs `{tool}` (Debian package {package})",
        test_name()
    ));
    false
}

/// Root, or false after [`require_or_skip`].
pub fn require_root() -> bool {
    if is_root() {
        return true;
    }
    require_or_skip(&format!("{} needs root", test_name()));
    false
}

/// Root and every tool: what a network-namespace test needs.
pub fn require_root_and(tools: &[&str]) -> bool {
    require_root() && require_tools(tools)
}

/// The running test's name (the harness names its thread after it).
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string()
}

/// All tests share one process: a test that times itself takes the machine
/// [`alone`], while network labs and kennel worlds hold it [`share`]d for
/// their life, so none is being built, run or torn down meanwhile.
static MACHINE: RwLock<()> = RwLock::new(());

thread_local! {
    /// This thread is [`alone`] (it needs no share), and how many shares it holds.
    static ALONE: Cell<bool> = const { Cell::new(false) };
    static SHARES: Cell<usize> = const { Cell::new(0) };
}

/// The machine to this test alone, until dropped.
pub struct Alone {
    _guard: RwLockWriteGuard<'static, ()>,
}

pub fn alone() -> Alone {
    let guard = MACHINE.write().unwrap_or_else(|e| e.into_inner());
    ALONE.set(true);
    Alone { _guard: guard }
}

impl Drop for Alone {
    fn drop(&mut self) {
        ALONE.set(false);
    }
}

/// A share of the machine, until dropped; the first on a thread takes the
/// lock (a second would wait behind a waiting [`alone`]).
pub struct Share {
    _guard: Option<RwLockReadGuard<'static, ()>>,
}

pub fn share() -> Share {
    let held = SHARES.get();
    SHARES.set(held + 1);
    if ALONE.get() || held > 0 {
        return Share { _guard: None };
    }
    Share {
        _guard: Some(MACHINE.read().unwrap_or_else(|e| e.into_inner())),
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        SHARES.set(SHARES.get().saturating_sub(1));
    }
}

/// Asserts that `text` holds `needle`, showing all of `text` when it does not.
#[track_caller]
pub fn assert_has(text: &str, needle: &str) {
    assert!(text.contains(needle), "no {needle:?} in:\n{text}");
}

/// Asserts that `text` does not hold `needle`, showing all of `text` when it does.
#[track_caller]
pub fn assert_lacks(text: &str, needle: &str) {
    assert!(!text.contains(needle), "{needle:?} in:\n{text}");
}
