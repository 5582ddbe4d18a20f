//! SIGHUP reloads policies and zones atomically; a bad file keeps the old set.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

#[test]
fn sighup_swaps_policies_and_keeps_the_old_set_on_errors() {
    let dir = TempDir::new("reload");
    let zones = dir.zones(&[("r.test.zone", "$ORIGIN r.test.\n$TTL 60\n@ IN SOA ns. h. 1 3600 600 86400 5\na IN A 192.0.2.1\nb IN A 192.0.2.2\nkeep IN A 192.0.2.3\n")]);
    let policy = dir.write("p.yaml", "agent_name: r\nexpected_outbound:\n  - destination: a.r.test\n  - destination: keep.r.test\n");
    let dns = Allowdns::serve_offline(&policy, &zones);
    assert_rcode(dns.udp, "a.r.test A", ResponseCode::NoError);
    assert_rcode(dns.udp, "b.r.test A", ResponseCode::NXDomain);

    // Queries never stop while the policy is reloaded, and none goes unanswered.
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, wrong) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, answered, wrong, server) =
            (stop.clone(), answered.clone(), wrong.clone(), dns.udp);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let m = query(server, "keep.r.test", RecordType::A);
                answered.fetch_add(1, Ordering::Relaxed);
                if m.metadata.response_code != ResponseCode::NoError {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    std::fs::write(&policy, "agent_name: r\nexpected_outbound:\n  - destination: b.r.test\n  - destination: keep.r.test\n").unwrap();
    for round in 1..=5 {
        dns.hup();
        dns.wait_for("reloaded", round);
    }
    assert_rcode(dns.udp, "b.r.test A", ResponseCode::NoError);
    assert_rcode(dns.udp, "a.r.test A", ResponseCode::NXDomain);
    let stderr = dns.stderr();
    assert_has(&stderr, "reload: agent r: added b.r.test");
    assert_has(&stderr, "reload: agent r: removed a.r.test");

    // A broken file: the old set stays, and the alert names file:line.
    std::fs::write(
        &policy,
        "agent_name: r\nexpected_outbound:\n  - destination: \"bad..name\"\n",
    )
    .unwrap();
    dns.hup();
    dns.wait_for("RELOAD FAILED", 1);
    assert!(
        dns.stderr().contains(&format!(
            "{}:3: expected_outbound[0].destination",
            policy.display()
        )),
        "{}",
        dns.stderr()
    );
    assert_rcode(dns.udp, "b.r.test A", ResponseCode::NoError);

    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(answered.load(Ordering::Relaxed) > 50, "the load loop ran");
    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "a query failed during reloads"
    );
}

#[test]
fn reloads_under_load_drop_nothing_and_never_show_a_partial_policy() {
    // Timed: no lab is built, run or torn down meanwhile.
    let _alone = common::alone();
    let dir = TempDir::new("reload-load");
    let zones = dir.zones(&[("r.test.zone", "$ORIGIN r.test.\n$TTL 60\n@ IN SOA ns. h. 1 3600 600 86400 5\nkeep IN A 192.0.2.3\nnever IN A 192.0.2.4\n")]);
    // Two large versions; the one name that must always resolve comes last,
    // so a partly compiled policy would be caught denying it.
    let version = |tag: &str| {
        let mut text = String::from("agent_name: r\nexpected_outbound:\n");
        for i in 0..20_000 {
            text.push_str(&format!("  - destination: h{i}.{tag}.r.test\n"));
        }
        text.push_str("  - destination: keep.r.test\n");
        text
    };
    let (v1, v2) = (version("one"), version("two"));
    let policy = dir.write("p.yaml", &v1);
    let dns = Allowdns::serve_offline(&policy, &zones);

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new([
        AtomicUsize::new(0), // answered
        AtomicUsize::new(0), // wrong
    ]);
    // Four UDP clients and one TCP client (hickory's server, on the runtime).
    let clients: Vec<_> = (0..5)
        .map(|t| {
            let (stop, counts) = (stop.clone(), counts.clone());
            let (server, tcp) = if t == 4 {
                (dns.tcp, true)
            } else {
                (dns.udp, false)
            };
            std::thread::spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let (name, want) = match (t + i) % 3 {
                        0 => ("never.r.test", ResponseCode::NXDomain),
                        1 => ("h7.one.r.test", ResponseCode::NXDomain), // no such record, or denied
                        _ => ("keep.r.test", ResponseCode::NoError),
                    };
                    let ask = Ask {
                        tcp,
                        ..Ask::default()
                    };
                    let got = query_with(server, name, RecordType::A, ask)
                        .metadata
                        .response_code;
                    counts[0].fetch_add(1, Ordering::Relaxed);
                    if got != want {
                        counts[1].fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for round in 1..=20 {
        std::fs::write(&policy, if round % 2 == 1 { &v2 } else { &v1 }).unwrap();
        dns.hup();
        dns.wait_for("reloaded", round);
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join()
            .expect("a query went unanswered (client timed out)");
    }
    let (answered, wrong) = (
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed),
    );
    eprintln!("{answered} queries answered across 20 reloads of a 20,001-rule policy");
    assert!(answered > 200, "the load ran ({answered})");
    assert_eq!(
        wrong, 0,
        "{wrong} of {answered} answers were wrong during reloads"
    );
}

#[test]
fn zone_reloads_take_effect_and_a_bad_zone_is_refused_with_file_line_and_audited() {
    let dir = TempDir::new("reload-zone");
    let zones = dir.0.join("zones");
    std::fs::create_dir(&zones).unwrap();
    let zone = zones.join("z.test.zone");
    let head = "$ORIGIN z.test.\n$TTL 60\n@ IN SOA ns. h. 1 3600 600 86400 5\na IN A 192.0.2.1\n";
    std::fs::write(&zone, head).unwrap();
    let policy = dir.write(
        "p.yaml",
        "agent_name: z\nallowed_dynamic_resolution:\n  - \"*.z.test\"\n",
    );
    let audit = dir.0.join("audit.jsonl");
    let dns = Allowdns::offline_audit(&policy, &zones, &audit, &[]);
    assert_rcode(dns.udp, "b.z.test A", ResponseCode::NXDomain);

    // A zone-only change: the new record answers after SIGHUP.
    std::fs::write(&zone, format!("{head}b IN A 192.0.2.2\n")).unwrap();
    dns.hup();
    dns.wait_for("reloaded", 1);
    assert_rcode(dns.udp, "b.z.test A", ResponseCode::NoError);

    // logrotate moves the log, then reloads: the log is reopened by its path.
    let rotated = dir.0.join("audit.jsonl.1");
    std::fs::rename(&audit, &rotated).unwrap();
    // A broken zone: refused whole; the headline names file:line.
    std::fs::write(
        &zone,
        format!("{head}b IN A 192.0.2.2\nc IN A not-an-address\n"),
    )
    .unwrap();
    dns.hup();
    dns.wait_for("RELOAD FAILED", 1);
    let stderr = dns.stderr();
    let headline = stderr
        .lines()
        .find(|l| l.contains("[!] RELOAD FAILED, the previous policies stay in force"))
        .unwrap_or_else(|| panic!("no headline in:\n{stderr}"));
    assert!(
        headline.contains(&format!("{}:6", zone.display())),
        "the headline names the zone file and line: {headline}"
    );
    assert_rcode(dns.udp, "b.z.test A", ResponseCode::NoError);

    let (_, _) = dns.terminate();
    let (old, new) = (read_audit(&rotated), read_audit(&audit));
    assert!(
        new.iter()
            .any(|r| r["qname"] == "b.z.test" && r["rcode"] == "NOERROR"),
        "the reopened log has the queries after the rotation: {new:?}"
    );
    let events: Vec<_> = old
        .into_iter()
        .chain(new)
        .filter(|r| r.get("event").is_some())
        .collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds, ["reload", "reload_failed"], "{events:?}");
    let errors = events[1]["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains(&zone.display().to_string())),
        "{errors:?}"
    );
}

/// A ConfigMap volume as kubelet lays it out and updates it (its
/// AtomicWriter): each version in a `..<timestamp>` directory, `..data` a
/// symlink to the current one, every key a symlink through `..data`. An
/// update writes a new version directory, points `..data_tmp` at it, renames
/// that over `..data`, then removes the old version; no file is written in place.
struct ConfigMap {
    root: std::path::PathBuf,
    version: Option<String>,
    serial: usize,
}

impl ConfigMap {
    fn new(root: std::path::PathBuf, files: &[(&str, &str)]) -> ConfigMap {
        std::fs::create_dir(&root).unwrap();
        let mut map = ConfigMap {
            root,
            version: None,
            serial: 0,
        };
        map.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), map.root.join(name)).unwrap();
        }
        map
    }

    fn update(&mut self, files: &[(&str, &str)]) {
        self.serial += 1;
        let version = format!("..2026_12_07_00_00_00.{}", 1000 + self.serial);
        let dir = self.root.join(&version);
        std::fs::create_dir(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let tmp = self.root.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.root.join("..data")).unwrap();
        if let Some(old) = self.version.replace(version) {
            std::fs::remove_dir_all(self.root.join(old)).unwrap();
        }
    }
}

const WATCH_ZONE: &str = "$ORIGIN w.test.\n$TTL 60\n@ IN SOA ns. h. 1 3600 600 86400 5\nkeep IN A 192.0.2.3\nnew IN A 192.0.2.4\n";
const WATCH_V1: &str = "agent_name: w\nexpected_outbound:\n  - destination: keep.w.test\n";
const WATCH_V2: &str = "agent_name: w\nexpected_outbound:\n  - destination: keep.w.test\n  - destination: new.w.test\n";

/// A ConfigMap of policies and a zones directory, and allowdns serving them.
fn watched(tag: &str, extra: &[&str]) -> (TempDir, ConfigMap, Allowdns) {
    let dir = TempDir::new(tag);
    let zones = dir.zones(&[("w.test.zone", WATCH_ZONE)]);
    let map = ConfigMap::new(dir.0.join("policy"), &[("agent.yaml", WATCH_V1)]);
    let audit = dir.0.join("audit.jsonl");
    let dns = Allowdns::offline_audit(&map.root, &zones, &audit, extra);
    (dir, map, dns)
}

#[test]
fn watch_follows_a_configmap_symlink_swap_within_2s_and_drops_no_query() {
    // Timed: no lab is built, run or torn down meanwhile.
    let _alone = common::alone();
    // Positive control: an allowdns without the watch, on the same kind of
    // volume, never sees the swap, so the checks below can tell.
    let (_control_dir, mut control_map, control) = watched("watch-control", &["--watch=false"]);
    let (_dir, mut map, dns) = watched("watch", &[]);
    for server in [control.udp, dns.udp] {
        assert_rcode(server, "keep.w.test A", ResponseCode::NoError);
        assert_rcode(server, "new.w.test A", ResponseCode::NXDomain);
    }
    assert!(
        dns.stderr().contains("watching for policy changes"),
        "{}",
        dns.stderr()
    );

    // A bounded query loop runs across the swap; every query must be answered.
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, wrong) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, answered, wrong, server) =
            (stop.clone(), answered.clone(), wrong.clone(), dns.udp);
        std::thread::spawn(move || {
            for _ in 0..200_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let m = query(server, "keep.w.test", RecordType::A);
                answered.fetch_add(1, Ordering::Relaxed);
                if m.metadata.response_code != ResponseCode::NoError {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(200));

    control_map.update(&[("agent.yaml", WATCH_V2)]);
    map.update(&[("agent.yaml", WATCH_V2)]);
    let swapped = std::time::Instant::now();
    let deadline = swapped + std::time::Duration::from_secs(2);
    while rcode(dns.udp, "new.w.test", RecordType::A) != ResponseCode::NoError {
        assert!(
            std::time::Instant::now() < deadline,
            "the swapped-in policy is not in force 2 s later:\n{}",
            dns.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let took = swapped.elapsed();
    eprintln!("swap to new policy in force: {} ms", took.as_millis());
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();

    assert!(answered.load(Ordering::Relaxed) > 50, "the load loop ran");
    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "a query failed across the swap"
    );
    let stderr = dns.stderr();
    // kubelet's swap is several events; they make one reload, and the
    // reload's own reads of the files make none.
    assert_eq!(
        stderr.matches("policy files changed: reloading").count(),
        1,
        "{stderr}"
    );
    assert_has(&stderr, "reload: agent w: added new.w.test");
    // The control, well past the 2 s, still has the old policy.
    assert_rcode(control.udp, "new.w.test A", ResponseCode::NXDomain);
    assert!(
        !control.stderr().contains("reloading"),
        "{}",
        control.stderr()
    );
}

#[test]
fn watch_keeps_the_old_policy_when_a_broken_one_is_swapped_in() {
    let (dir, mut map, dns) = watched("watch-broken", &["--metrics", "127.0.0.1:0"]);
    // Positive control: a good swap is picked up by the watch.
    map.update(&[("agent.yaml", WATCH_V2)]);
    dns.wait_for("reloaded", 1);
    assert_rcode(dns.udp, "new.w.test A", ResponseCode::NoError);

    map.update(&[(
        "agent.yaml",
        "agent_name: w\nexpected_outbound:\n  - destination: \"bad..name\"\n",
    )]);
    dns.wait_for("RELOAD FAILED", 1);
    // The previous policy stays in force.
    assert_rcode(dns.udp, "new.w.test A", ResponseCode::NoError);
    assert_rcode(dns.udp, "keep.w.test A", ResponseCode::NoError);
    let stderr = dns.stderr();
    assert_has(&stderr, "agent.yaml:3: expected_outbound[0].destination");

    let audit = dir.0.join("audit.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let failed = loop {
        let events = read_audit(&audit);
        if let Some(e) = events.iter().find(|e| e["event"] == "reload_failed") {
            break e.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reload_failed in {events:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(
        failed["errors"][0]
            .as_str()
            .unwrap()
            .contains("agent.yaml:3"),
        "{failed}"
    );
    let metrics = dns.scrape("/metrics");
    assert_has(&metrics, "allowdns_reload_failures_total 1");
}
