//! The control socket makes exceptions only for callers in allowdns's own
//! network namespace: a root agent in a fenced namespace that can reach the
//! socket's path is refused.

use crate::common;

use common::*;
use hickory_proto::op::ResponseCode;

#[test]
fn grant_from_another_network_namespace_is_refused() {
    refused_from_another_namespace(&[], "ctl");
}

/// The shipped unit runs allowdns unprivileged. The kernel then will not open
/// a root caller's namespace through its pidfd (ptrace rules), and the
/// socket's own namespace must decide alone: root still grants from the
/// host, and still cannot from a fenced namespace.
#[test]
fn an_unprivileged_allowdns_still_tells_namespaces_apart() {
    refused_from_another_namespace(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        "ctl-nobody",
    );
}

fn refused_from_another_namespace(daemon_prefix: &[&str], tag: &str) {
    if !require_root_and(&["ip"]) {
        return;
    }
    let ns = netns::Lab::new(&format!("adns-{tag}"), &["fenced"]);
    let dir = TempDir::new(tag);
    // An unprivileged daemon writes its audit log and socket here.
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let zones = dir.zones(&[("x.test.zone", "$ORIGIN x.test.\n$TTL 300\n@ IN SOA ns. h. 1 3600 600 86400 5\na IN A 192.0.2.1\nb IN A 192.0.2.2\nc IN A 192.0.2.3\n")]);
    let policy = dir.write(
        "p.yaml",
        "agent_name: t\nexpected_outbound:\n  - destination: a.x.test\n",
    );
    let audit = dir.0.join("audit.jsonl");
    let socket = dir.0.join("control.sock");
    let sock = socket.to_str().unwrap();
    let dns = Allowdns::serve_via(
        daemon_prefix,
        &offline_args(
            &policy,
            &zones,
            &["--audit-log", audit.to_str().unwrap(), "--control", sock],
        ),
    );
    let grant = |prefix: &[&str], name: &str| {
        allowdns_via(prefix, &grant_args(sock, "t", name, "1h", "netns test"))
    };
    let fenced = ["ip", "netns", "exec", ns.name("fenced")];

    // Positive control: root in allowdns's own namespace may grant.
    let (ok, stdout, stderr) = grant(&[], "b.x.test");
    assert!(ok, "grant from our own namespace: {stdout}{stderr}");
    assert_rcode(dns.udp, "b.x.test A", ResponseCode::NoError);

    // The same root user, the same socket path, from a fenced namespace: refused.
    let (ok, stdout, stderr) = grant(&fenced, "c.x.test");
    assert!(!ok, "grant from another netns must fail: {stdout}");
    assert!(
        stderr.contains("another network namespace"),
        "the refusal names the reason: {stderr}"
    );
    assert_rcode(dns.udp, "c.x.test A", ResponseCode::NXDomain);
    // Revoking from there is refused too; status stays readable.
    let (ok, _, stderr) = allowdns_via(&fenced, &revoke_args(sock, "t", "b.x.test"));
    assert!(
        !ok && stderr.contains("another network namespace"),
        "{stderr}"
    );
    assert_rcode(dns.udp, "b.x.test A", ResponseCode::NoError);
    let (ok, stdout, stderr) = allowdns_via(&fenced, &["status", "--control", sock]);
    assert!(
        ok && stdout.contains("grant t -> b.x.test"),
        "{stdout}{stderr}"
    );
    assert!(
        dns.stderr().contains("control socket: request refused"),
        "the refusal is logged: {}",
        dns.stderr()
    );

    // The refusal is about the namespace, not the command: from our own it works.
    let (ok, _, stderr) = allowdns_via(&[], &revoke_args(sock, "t", "b.x.test"));
    assert!(ok, "{stderr}");
}
