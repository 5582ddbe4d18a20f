//! `allowdns check`: loads what `serve` would, reports every error with file:line.

use crate::common;

use std::process::Command;

use common::*;

fn check(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .arg("check")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_shipped_demo_policy_and_zones_load() {
    let (code, stdout, stderr) = check(&[
        "--policy",
        repo("policies").to_str().unwrap(),
        "--zones",
        repo("zones").to_str().unwrap(),
        "--upstream",
        "127.0.0.1:53",
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_has(&stdout, "agent 'travel_agent_v1', 3 name rule(s)");
    assert_has(&stdout, "ok: 3 zone(s)");
}

#[test]
fn every_error_is_reported_with_file_line_and_field() {
    let dir = TempDir::new("check");
    let bad = dir.write(
        "bad.yaml",
        r#"agent_name: broken
expected_outbound:
  - destination: "api.example.com"
  - destination: "bad..name"
    port: 443
  - destination: "10.0.0.1/8"
allowed_dynamic_resolution:
  - "*.com"
"#,
    );
    let typo = dir.write(
        "typo.yaml",
        "agent_name: t\nclients: [10.9.0.0/16]\nexpected_outbund: []\n",
    );
    let zones = dir.zones(&[(
        "nosoa.test.zone",
        "$ORIGIN nosoa.test.\nwww 300 IN A 192.0.2.1\n",
    )]);

    let (code, _, stderr) = check(&[
        "--policy",
        bad.to_str().unwrap(),
        "--policy",
        typo.to_str().unwrap(),
        "--zones",
        zones.to_str().unwrap(),
        "--upstream",
        "127.0.0.1:53",
    ]);
    assert_eq!(code, 1, "{stderr}");
    let bad = bad.display().to_string();
    let typo = typo.display().to_string();
    for want in [
        format!("error: {bad}:4: expected_outbound[1].destination: empty label in 'bad..name'"),
        format!("error: {bad}:4: expected_outbound[1].protocol: port 443 needs a protocol"),
        format!("error: {bad}:6: expected_outbound[2].destination: '10.0.0.1/8' has host bits set"),
        format!("warning: {bad}:8: allowed_dynamic_resolution[0]: over-broad"),
        format!("error: {typo}:3: unknown field `expected_outbund`"),
        "has no SOA record at its apex".to_string(),
        "error(s) found".to_string(),
    ] {
        assert!(stderr.contains(&want), "missing {want:?} in:\n{stderr}");
    }
    // check starts nothing, so it does not say that nothing was started.
    assert_lacks(&stderr, "nothing was started");
}

#[test]
fn config_file_errors_name_the_line() {
    let dir = TempDir::new("config");
    let policy = dir.write("p.yaml", "agent_name: a\n");
    let config = dir.write(
        "allowdns.yaml",
        "listen:\n  - 127.0.0.1:5300\n  - not-an-address\npolicies: [p.yaml]\nupstream:\n  servers: [127.0.0.1]\n",
    );
    let (code, _, stderr) = check(&["--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert_has(
        &stderr,
        &format!(
            "{}:3: listen[1]: 'not-an-address' is not an address",
            config.display()
        ),
    );

    let config = dir.write("unknown.yaml", "policies: [p.yaml]\nlisen: []\n");
    let (code, _, stderr) = check(&["--config", config.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_has(
        &stderr,
        &format!("{}:2: unknown field `lisen`", config.display()),
    );

    // A good config, with paths relative to the config file.
    let config = dir.write(
        "good.yaml",
        "listen: [127.0.0.1:5300]\npolicies: [p.yaml]\nupstream:\n  servers: [127.0.0.1]\n",
    );
    let (code, stdout, stderr) = check(&["--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert_has(&stdout, "agent 'a'");
    let _ = policy;
}

#[test]
fn serve_refuses_to_start_on_bad_input() {
    let dir = TempDir::new("serve-bad");
    let bad = dir.write(
        "bad.yaml",
        "agent_name: x\nexpected_outbound:\n  - destination: \"a b\"\n",
    );
    let out = Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:53",
            "--policy",
        ])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_has(
        &stderr,
        &format!("{}:3: expected_outbound[0].destination", bad.display()),
    );
}

#[test]
fn registry_suffixes_warn_and_bad_offsets_name_the_value() {
    let dir = TempDir::new("check-psl");
    let policy = dir.write(
        "p.yaml",
        "agent_name: a\nexpected_outbound:\n  - destination: ok.example.com\n    expires: \"2099-01-01T00:00:00+99:99\"\n  - destination: b.example.com\n    expires: \"2099-01-01t00:00:00z\"\nallowed_dynamic_resolution:\n  - \"*.com.ar\"\n  - \"*.r2.dev\"\n  - \"*.bucket.r2.dev\"\n",
    );
    let (code, _, stderr) = check(&["--policy", policy.to_str().unwrap(), "--upstream", "none"]);
    assert_eq!(code, 1, "{stderr}");
    let p = policy.display().to_string();
    for want in [
        format!(
            "error: {p}:4: expected_outbound[0].expires: '2099-01-01T00:00:00+99:99' is not an RFC 3339 time"
        ),
        format!("warning: {p}:8: allowed_dynamic_resolution[0]: over-broad"),
        format!("warning: {p}:9: allowed_dynamic_resolution[1]: over-broad"),
    ] {
        assert!(stderr.contains(&want), "missing {want:?} in:\n{stderr}");
    }
    assert!(
        !stderr.contains(":10:"),
        "*.bucket.r2.dev is one bucket:\n{stderr}"
    );
    assert!(
        !stderr.contains("expected_outbound[1]"),
        "lower case t and z are RFC 3339:\n{stderr}"
    );
}

#[test]
fn choices_name_file_line_field_and_the_valid_values() {
    let dir = TempDir::new("check-choices");
    let policy = dir.write(
        "p.yaml",
        "agent_name: a\nmode: lurn\nexpected_outbound:\n  - destination: \"bad..name\"\n  - destination: ok.example\n    port: 443\n    protocol: tcpp\nfirewall:\n  family: inet4\ninbound:\n  - port: 80\n    protocol: Udp\n  - protocol: sctp\n    port: 81\n",
    );
    let (code, _, stderr) = check(&["--policy", policy.to_str().unwrap(), "--upstream", "none"]);
    assert_eq!(code, 1, "{stderr}");
    let p = policy.display().to_string();
    // The first from the parser, the rest salvaged: every one with its line.
    for want in [
        format!(
            "error: {p}:2: mode: unknown variant `lurn`, expected one of `enforce`, `learn`, `monitor`"
        ),
        format!("error: {p}:4: expected_outbound[0].destination: empty label in 'bad..name'"),
        format!(
            "error: {p}:7: expected_outbound[1].protocol: unknown variant `tcpp`, expected `TCP` or `UDP`"
        ),
        format!(
            "error: {p}:9: firewall.family: unknown variant `inet4`, expected one of `inet`, `ip`, `ip6`"
        ),
        format!(
            "error: {p}:13: inbound[1].protocol: unknown variant `sctp`, expected `TCP` or `UDP`"
        ),
    ] {
        assert!(stderr.contains(&want), "missing {want:?} in:\n{stderr}");
    }
    assert_eq!(stderr.matches("error:").count(), 5, "{stderr}");

    // Positive control: the valid spellings load, protocols in any case.
    let good = dir.write(
        "good.yaml",
        "agent_name: a\nmode: learn\nexpected_outbound:\n  - destination: ok.example\n    port: 443\n    protocol: Tcp\ninbound:\n  - port: 80\n    protocol: udp\n",
    );
    let (code, stdout, stderr) = check(&["--policy", good.to_str().unwrap(), "--upstream", "none"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_has(&stderr, "mode: learn:");
}

#[test]
fn a_yaml_tag_is_not_a_choice() {
    // serde's derived enums read a tag as the variant: `mode: !learn` (no
    // value) would load as learn mode, the fence off.
    let dir = TempDir::new("check-tags");
    let (code, _, stderr) = {
        // Positive control: the same word as a value is learn mode.
        let plain = dir.write("plain.yaml", "agent_name: a\nmode: learn\n");
        check(&["--policy", plain.to_str().unwrap(), "--upstream", "none"])
    };
    assert_eq!(code, 0, "{stderr}");
    for (name, text) in [
        ("mode.yaml", "agent_name: a\nmode: !learn\n"),
        ("family.yaml", "agent_name: a\nfirewall:\n  family: !ip6\n"),
        (
            "protocol.yaml",
            "agent_name: a\ninbound:\n  - port: 80\n    protocol: !udp\n",
        ),
    ] {
        let policy = dir.write(name, text);
        let (code, stdout, stderr) =
            check(&["--policy", policy.to_str().unwrap(), "--upstream", "none"]);
        assert_eq!(code, 1, "{name} must not load:\n{stdout}{stderr}");
        assert_has(&stderr, name);
    }
}

#[test]
fn a_misindented_policy_says_where_entries_go() {
    let dir = TempDir::new("check-indent");
    let good = "agent_name: a\nexpected_outbound:\n  - destination: a.example\n  - destination: b.example\n";
    let bad = good.replace("  - destination: b", "   - destination: b");
    // Positive control: the policy indented right loads.
    let ok = dir.write("ok.yaml", good);
    let (code, _, stderr) = check(&["--upstream", "none", "--policy", ok.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let policy = dir.write("p.yaml", &bad);
    let (code, _, stderr) = check(&["--upstream", "none", "--policy", policy.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert_has(
        &stderr,
        &format!(
            "{}:4: did not find expected '-' indicator: in the list of `expected_outbound` (line 2), \
             an entry starts with `- ` at column 3 and its fields line up at column 5; line 4 starts at column 4",
            policy.display()
        ),
    );
}
