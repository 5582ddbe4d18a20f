//! The shipped units pass `systemd-analyze verify`, and the main unit's
//! exposure rating stays at 2.0 or lower.
//!
//! Needs `systemd-analyze` (Debian package `systemd`): fails under CI=true
//! without it, skips loudly elsewhere.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn analyze(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The units as shipped, with ExecStart pointing at the binary under test,
/// and template instances for one agent namespace.
fn units() -> Option<TempDir> {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        require_or_skip("systemd-analyze is not installed (apt-get install systemd)");
        return None;
    }
    let dir = TempDir::new("systemd");
    for (unit, as_name) in [
        ("allowdns.service", "allowdns.service"),
        ("allowdns@.service", "allowdns@agent1.service"),
        ("allowdns-fence@.service", "allowdns-fence@agent1.service"),
    ] {
        let text = std::fs::read_to_string(repo(&format!("systemd/{unit}"))).unwrap();
        assert!(text.contains("/usr/local/bin/allowdns"));
        dir.write(as_name, &text.replace("/usr/local/bin/allowdns", bin()));
    }
    Some(dir)
}

#[test]
fn units_verify_cleanly() {
    let Some(dir) = units() else { return };
    let (ok, out) = analyze(
        &dir.0,
        &[
            "verify",
            "./allowdns.service",
            "./allowdns@agent1.service",
            "./allowdns-fence@agent1.service",
        ],
    );
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify:\n{out}"
    );
}

#[test]
fn main_unit_exposure_is_at_most_2() {
    let Some(dir) = units() else { return };
    let (_, out) = analyze(
        &dir.0,
        &["security", "--offline=true", "./allowdns.service"],
    );
    let level: f64 = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    eprintln!("allowdns.service exposure: {level}");
    assert!(level <= 2.0, "exposure {level} > 2.0:\n{out}");
}
