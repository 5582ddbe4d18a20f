//! The shipped units and drop-ins pass `systemd-analyze verify`, and the
//! exposure ratings stay at 2.0 or lower, with and without the drop-ins.
//!
//! Needs `systemd-analyze` (Debian package `systemd`): fails under CI=true
//! without it, skips loudly elsewhere.

use crate::common;

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
/// template instances for one agent namespace, and the given drop-ins of
/// `systemd/allowdns.service.d/` installed next to the main unit (where
/// `systemd-analyze` looks for them, as it would in /etc/systemd/system).
fn units(dropins: &[&str]) -> Option<TempDir> {
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
    if !dropins.is_empty() {
        std::fs::create_dir(dir.0.join("allowdns.service.d")).unwrap();
    }
    for file in dropins {
        let text = std::fs::read_to_string(repo(&format!("systemd/allowdns.service.d/{file}")))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        // Shipped as an example so that copying the directory does not enable it.
        let name = file.strip_suffix(".example").unwrap_or(file);
        dir.write(&format!("allowdns.service.d/{name}"), &text);
    }
    Some(dir)
}

const FIREWALL: &str = "firewall.conf";
const NETNS: &str = "firewall-netns.conf.example";

fn verify(dir: &TempDir) {
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
fn units_verify_cleanly() {
    let Some(dir) = units(&[]) else { return };
    verify(&dir);
    for unit in ["allowdns.service", "allowdns@agent1.service"] {
        let text = std::fs::read_to_string(dir.0.join(unit)).unwrap();
        assert!(text.contains("\nLimitNOFILE=65536\n"), "{unit}");
    }
}

#[test]
fn units_verify_cleanly_with_the_firewall_dropins() {
    let Some(dir) = units(&[FIREWALL, NETNS]) else {
        return;
    };
    verify(&dir);
}

/// `systemd-analyze security`: the overall exposure level, and the report.
fn exposure(dir: &TempDir, unit: &str) -> (f64, String) {
    let (_, out) = analyze(
        &dir.0,
        &["security", "--offline=true", &format!("./{unit}")],
    );
    let level: f64 = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    (level, out)
}

/// Whether the report marks `check` as exposed (✗) or not (✓).
fn exposed(report: &str, check: &str) -> bool {
    let line = report
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(check))
        .unwrap_or_else(|| panic!("no {check} in:\n{report}"));
    line.starts_with('✗')
}

#[test]
fn main_unit_exposure_is_at_most_2() {
    let Some(dir) = units(&[]) else { return };
    let (level, out) = exposure(&dir, "allowdns.service");
    eprintln!("allowdns.service exposure: {level}");
    assert!(level <= 2.0, "exposure {level} > 2.0:\n{out}");
    assert!(!exposed(&out, "CapabilityBoundingSet=~CAP_NET_ADMIN"));
    // Attribution reads other users' /proc/PID/fd (docs/attribution.md).
    assert!(
        exposed(&out, "CapabilityBoundingSet=~CAP_SYS_PTRACE"),
        "{out}"
    );
}

#[test]
fn firewall_dropin_adds_net_admin_and_keeps_exposure_at_most_2() {
    let Some(dir) = units(&[FIREWALL]) else {
        return;
    };
    let (level, out) = exposure(&dir, "allowdns.service");
    eprintln!("allowdns.service + {FIREWALL} exposure: {level}");
    assert!(level <= 2.0, "exposure {level} > 2.0:\n{out}");
    // Added to the unit's capabilities, not replacing them.
    assert!(
        exposed(&out, "CapabilityBoundingSet=~CAP_NET_ADMIN"),
        "{out}"
    );
    assert!(
        exposed(
            &out,
            "CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE|BROADCAST|RAW)"
        ),
        "{out}"
    );
    assert!(!exposed(&out, "CapabilityBoundingSet=~CAP_SYS_ADMIN"));
    assert!(!exposed(&out, "RestrictNamespaces=~net"));
}

#[test]
fn netns_dropin_allows_only_network_namespaces() {
    let Some(dir) = units(&[FIREWALL, NETNS]) else {
        return;
    };
    let (level, out) = exposure(&dir, "allowdns.service");
    eprintln!("allowdns.service + {FIREWALL} + {NETNS} exposure: {level}");
    assert!(level <= 2.0, "exposure {level} > 2.0:\n{out}");
    assert!(
        exposed(&out, "CapabilityBoundingSet=~CAP_SYS_ADMIN"),
        "{out}"
    );
    assert!(
        exposed(&out, "CapabilityBoundingSet=~CAP_NET_ADMIN"),
        "{out}"
    );
    assert!(exposed(&out, "RestrictNamespaces=~net"), "{out}");
    // Reset out of the lists, to stay at 2.0 next to CAP_SYS_ADMIN.
    assert!(
        !exposed(&out, "CapabilityBoundingSet=~CAP_SYS_PTRACE"),
        "{out}"
    );
    for other in ["user", "pid", "mnt", "uts", "ipc", "cgroup"] {
        assert!(
            !exposed(&out, &format!("RestrictNamespaces=~{other}")),
            "{other}:\n{out}"
        );
    }
}

#[test]
fn template_unit_exposure_is_at_most_2() {
    let Some(dir) = units(&[]) else { return };
    let (level, out) = exposure(&dir, "allowdns@agent1.service");
    eprintln!("allowdns@agent1.service exposure: {level}");
    assert!(level <= 2.0, "exposure {level} > 2.0:\n{out}");
}
