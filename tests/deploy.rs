//! deploy/: the Kubernetes manifests as Kustomize renders them pass the API
//! schema (kubernetes-validate, offline) and the Pod Security Standards
//! (restricted for the agent container, baseline for the pod, NET_ADMIN the
//! only named exception), and the init container's ruleset arguments agree
//! with the sidecar they fence for.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_yaml::Value;

/// The Kubernetes version the manifests are validated against.
const KUBERNETES: &str = "1.37.0";
const OVERLAYS: [&str; 2] = ["coder", "researcher"];

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--help").output().is_ok()
}

/// `kubectl kustomize DIR`: the objects an overlay (or the base) deploys.
fn render(dir: &Path) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn kustomize_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![repo("deploy/kubernetes/base")];
    dirs.extend(OVERLAYS.map(|o| repo(&format!("deploy/kubernetes/overlays/{o}"))));
    dirs
}

fn validate(file: &Path) -> (bool, String) {
    sh_out(&[
        "python3",
        "-m",
        "kubernetes_validate",
        "--kubernetes-version",
        KUBERNETES,
        "--strict",
        "--quiet",
        file.to_str().unwrap(),
    ])
}

#[test]
fn manifests_pass_kubernetes_validate_offline() {
    let validator = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have("kubectl") || !validator {
        return require_or_skip("kubectl (kustomize) and kubernetes-validate (pip) are needed");
    }
    let dir = TempDir::new("deploy-validate");
    // Positive control: the validator rejects a wrong type and an unknown field.
    let coder = render(&repo("deploy/kubernetes/overlays/coder"));
    for (tag, broken) in [
        (
            "type",
            coder.replace(
                "allowPrivilegeEscalation: false",
                "allowPrivilegeEscalation: \"no\"",
            ),
        ),
        (
            "field",
            coder.replace("dnsPolicy: None", "dnsPolicyy: None"),
        ),
    ] {
        assert_ne!(broken, coder);
        let file = dir.write(&format!("broken-{tag}.yaml"), &broken);
        let (ok, out) = validate(&file);
        assert!(
            !ok,
            "kubernetes-validate passed a broken manifest ({tag}): {out}"
        );
    }
    for kustomization in kustomize_dirs() {
        let name = kustomization.file_name().unwrap().to_str().unwrap();
        let file = dir.write(&format!("{name}.yaml"), &render(&kustomization));
        let (ok, out) = validate(&file);
        assert!(ok, "{}: {out}", kustomization.display());
    }
}

/// Capabilities a baseline pod may add (Pod Security Standards, "Capabilities").
const BASELINE_CAPS: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];
/// The named exceptions to baseline: container and capability.
const EXCEPTIONS: [(&str, &str); 2] = [("fence", "NET_ADMIN"), ("allowdns", "NET_ADMIN")];
/// Volume types the restricted profile allows.
const RESTRICTED_VOLUMES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];
/// Sysctls the baseline profile allows.
const SAFE_SYSCTLS: [&str; 8] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
];

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, key| v.get(*key))
}

fn seq<'a>(v: &'a Value, path: &[&str]) -> Vec<&'a Value> {
    at(v, path)
        .and_then(Value::as_sequence)
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

/// Every container of a pod spec, with where it sits.
fn containers(pod: &Value) -> Vec<(&'static str, &Value)> {
    let mut all = Vec::new();
    for kind in ["initContainers", "containers", "ephemeralContainers"] {
        all.extend(seq(pod, &[kind]).into_iter().map(|c| (kind, c)));
    }
    all
}

fn name(c: &Value) -> &str {
    str_at(c, &["name"]).unwrap_or("?")
}

/// Baseline violations of a pod spec, except the named [`EXCEPTIONS`].
fn baseline(pod: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if at(pod, &[host]).and_then(Value::as_bool) == Some(true) {
            bad.push(format!("pod: {host}"));
        }
    }
    for volume in seq(pod, &["volumes"]) {
        if volume.get("hostPath").is_some() {
            bad.push(format!("volume {}: hostPath", name(volume)));
        }
    }
    for sysctl in seq(pod, &["securityContext", "sysctls"]) {
        let sysctl = str_at(sysctl, &["name"]).unwrap_or("?");
        if !SAFE_SYSCTLS.contains(&sysctl) {
            bad.push(format!("pod: sysctl {sysctl}"));
        }
    }
    let pod_seccomp = str_at(pod, &["securityContext", "seccompProfile", "type"]);
    if pod_seccomp == Some("Unconfined") {
        bad.push("pod: seccomp Unconfined".into());
    }
    for (_, c) in containers(pod) {
        let n = name(c);
        let sc = c.get("securityContext").cloned().unwrap_or(Value::Null);
        if at(&sc, &["privileged"]).and_then(Value::as_bool) == Some(true) {
            bad.push(format!("{n}: privileged"));
        }
        if str_at(&sc, &["seccompProfile", "type"]) == Some("Unconfined") {
            bad.push(format!("{n}: seccomp Unconfined"));
        }
        if str_at(&sc, &["procMount"]).is_some_and(|m| m != "Default") {
            bad.push(format!("{n}: procMount"));
        }
        if str_at(&sc, &["appArmorProfile", "type"]) == Some("Unconfined") {
            bad.push(format!("{n}: AppArmor Unconfined"));
        }
        if let Some(t) = str_at(&sc, &["seLinuxOptions", "type"])
            && !["container_t", "container_init_t", "container_kvm_t"].contains(&t)
        {
            bad.push(format!("{n}: SELinux type {t}"));
        }
        for port in seq(c, &["ports"]) {
            if at(port, &["hostPort"]).and_then(Value::as_u64).unwrap_or(0) != 0 {
                bad.push(format!("{n}: hostPort"));
            }
        }
        for cap in seq(&sc, &["capabilities", "add"]) {
            let cap = cap.as_str().unwrap_or("?");
            if !BASELINE_CAPS.contains(&cap) && !EXCEPTIONS.contains(&(n, cap)) {
                bad.push(format!("{n}: adds capability {cap}"));
            }
        }
    }
    bad
}

/// Restricted violations of one container (with its pod's settings).
fn restricted(pod: &Value, c: &Value) -> Vec<String> {
    let n = name(c);
    let mut bad = Vec::new();
    let sc = c.get("securityContext").cloned().unwrap_or(Value::Null);
    let psc = pod.get("securityContext").cloned().unwrap_or(Value::Null);
    let either = |key: &str| at(&sc, &[key]).or_else(|| at(&psc, &[key]));
    if at(&sc, &["allowPrivilegeEscalation"]).and_then(Value::as_bool) != Some(false) {
        bad.push(format!("{n}: allowPrivilegeEscalation is not false"));
    }
    if either("runAsNonRoot").and_then(Value::as_bool) != Some(true) {
        bad.push(format!("{n}: runAsNonRoot is not true"));
    }
    if either("runAsUser").and_then(Value::as_u64) == Some(0) {
        bad.push(format!("{n}: runAsUser 0"));
    }
    let seccomp = str_at(&sc, &["seccompProfile", "type"])
        .or_else(|| str_at(&psc, &["seccompProfile", "type"]));
    if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
        bad.push(format!(
            "{n}: seccompProfile is not RuntimeDefault or Localhost"
        ));
    }
    let drops: Vec<&str> = seq(&sc, &["capabilities", "drop"])
        .into_iter()
        .filter_map(Value::as_str)
        .collect();
    if !drops.contains(&"ALL") {
        bad.push(format!("{n}: capabilities do not drop ALL"));
    }
    for cap in seq(&sc, &["capabilities", "add"]) {
        if cap.as_str() != Some("NET_BIND_SERVICE") {
            bad.push(format!("{n}: adds capability {cap:?}"));
        }
    }
    for volume in seq(pod, &["volumes"]) {
        let kinds: Vec<&str> = volume
            .as_mapping()
            .map(|m| m.keys().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(kind) = kinds
            .iter()
            .find(|k| **k != "name" && !RESTRICTED_VOLUMES.contains(k))
        {
            bad.push(format!("volume {}: type {kind}", name(volume)));
        }
    }
    bad
}

fn pod_of(objects: &[Value]) -> &Value {
    objects
        .iter()
        .find(|o| str_at(o, &["kind"]) == Some("Deployment"))
        .and_then(|d| at(d, &["spec", "template", "spec"]))
        .expect("a Deployment with a pod template")
}

fn container<'a>(pod: &'a Value, wanted: &str) -> &'a Value {
    containers(pod)
        .into_iter()
        .map(|(_, c)| c)
        .find(|c| name(c) == wanted)
        .unwrap_or_else(|| panic!("no container {wanted}"))
}

fn objects(text: &str) -> Vec<Value> {
    text.split("\n---\n")
        .map(|doc| serde_yaml::from_str::<Value>(doc).unwrap())
        .collect()
}

/// A copy of `v` with the value at `path` set (maps created on the way).
fn with(v: &Value, path: &[&str], new: Value) -> Value {
    let mut copy = v.clone();
    let mut here = &mut copy;
    for key in &path[..path.len() - 1] {
        here = here
            .as_mapping_mut()
            .unwrap()
            .entry(Value::from(*key))
            .or_insert_with(|| Value::Mapping(Default::default()));
    }
    here.as_mapping_mut()
        .unwrap()
        .insert(Value::from(path[path.len() - 1]), new);
    copy
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap()
}

#[test]
fn pods_meet_restricted_for_the_agent_and_baseline_with_net_admin_named() {
    if !have("kubectl") {
        return require_or_skip("kubectl (kustomize) is needed to render the overlays");
    }
    let coder = objects(&render(&repo("deploy/kubernetes/overlays/coder")));
    let pod = pod_of(&coder);
    // Positive control: the checkers catch what they are for.
    let agent_index = seq(pod, &["containers"])
        .iter()
        .position(|c| name(c) == "agent")
        .unwrap();
    let mut escalating = pod.clone();
    let agent = &mut escalating["containers"][agent_index]["securityContext"];
    *agent = with(agent, &["allowPrivilegeEscalation"], Value::Bool(true));
    *agent = with(agent, &["capabilities", "add"], yaml("[NET_ADMIN]"));
    let found = restricted(&escalating, &escalating["containers"][agent_index]);
    assert!(
        found.iter().any(|f| f.contains("allowPrivilegeEscalation"))
            && found.iter().any(|f| f.contains("NET_ADMIN")),
        "{found:?}"
    );
    assert!(
        baseline(&escalating)
            .iter()
            .any(|f| f == "agent: adds capability NET_ADMIN"),
        "NET_ADMIN is excepted only for fence and allowdns"
    );
    let host = with(pod, &["hostNetwork"], Value::Bool(true));
    assert_eq!(baseline(&host), ["pod: hostNetwork"]);
    let sysadmin = {
        let mut p = pod.clone();
        let sidecar = &mut p["initContainers"][1]["securityContext"];
        *sidecar = with(sidecar, &["capabilities", "add"], yaml("[SYS_ADMIN]"));
        p
    };
    assert_eq!(baseline(&sysadmin), ["allowdns: adds capability SYS_ADMIN"]);
    // The sidecar itself is not restricted (it holds NET_ADMIN): the checker says so.
    assert!(!restricted(pod, container(pod, "allowdns")).is_empty());

    for overlay in OVERLAYS {
        let objects = objects(&render(&repo(&format!(
            "deploy/kubernetes/overlays/{overlay}"
        ))));
        let pod = pod_of(&objects);
        assert_eq!(baseline(pod), Vec::<String>::new(), "{overlay}: baseline");
        let agent = container(pod, "agent");
        assert_eq!(
            restricted(pod, agent),
            Vec::<String>::new(),
            "{overlay}: restricted"
        );
        assert_eq!(str_at(pod, &["dnsPolicy"]), Some("None"));
        assert_eq!(
            seq(pod, &["dnsConfig", "nameservers"]),
            [&Value::from("127.0.0.1")]
        );
        assert_eq!(
            at(pod, &["automountServiceAccountToken"]).and_then(Value::as_bool),
            Some(false)
        );

        // The fence lets out exactly the sidecar's uid and opens its metrics port.
        let sidecar = container(pod, "allowdns");
        let fence = container(pod, "fence");
        let uid = at(sidecar, &["securityContext", "runAsUser"])
            .and_then(Value::as_u64)
            .unwrap();
        let agent_uid = at(agent, &["securityContext", "runAsUser"])
            .and_then(Value::as_u64)
            .unwrap();
        assert_ne!(uid, agent_uid, "the agent must not share the sidecar's uid");
        let args: Vec<&str> = seq(fence, &["args"])
            .into_iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            args.contains(&format!("--sidecar-uid={uid}").as_str()),
            "{args:?}"
        );
        let metrics = seq(sidecar, &["ports"])[0]["containerPort"]
            .as_u64()
            .unwrap();
        assert!(
            args.contains(&format!("--open-tcp={metrics}").as_str()),
            "{args:?}"
        );
        assert_eq!(
            str_at(sidecar, &["restartPolicy"]),
            Some("Always"),
            "allowdns is a native sidecar, running before the agent starts"
        );
        assert_eq!(
            at(sidecar, &["securityContext", "readOnlyRootFilesystem"]).and_then(Value::as_bool),
            Some(true)
        );
        let annotations = at(pod_template_metadata(&objects), &["annotations"]).unwrap();
        assert_eq!(annotations["prometheus.io/scrape"], Value::from("true"));
        assert_eq!(
            annotations["prometheus.io/port"],
            Value::from(metrics.to_string())
        );
        assert!(
            objects
                .iter()
                .any(|o| str_at(o, &["kind"]) == Some("NetworkPolicy")),
            "{overlay}: a NetworkPolicy"
        );
    }
}

fn pod_template_metadata(objects: &[Value]) -> &Value {
    objects
        .iter()
        .find(|o| str_at(o, &["kind"]) == Some("Deployment"))
        .and_then(|d| at(d, &["spec", "template", "metadata"]))
        .unwrap()
}

#[test]
fn overlay_policies_load_and_their_sidecar_ruleset_lets_only_allowdns_out() {
    let config = repo("deploy/kubernetes/base/allowdns.yaml");
    for overlay in OVERLAYS {
        let policy = repo(&format!(
            "deploy/kubernetes/overlays/{overlay}/{overlay}.yaml"
        ));
        let out = Command::new(bin())
            .args(["nft-ruleset", "--config"])
            .arg(&config)
            .arg("--policy")
            .arg(&policy)
            .args(["--sidecar-uid", "65532", "--open-tcp", "9153"])
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{overlay}: {stderr}");
        assert!(
            stdout.contains(
                "output meta skuid 65532 ip daddr 10.96.0.10 meta l4proto { udp, tcp } th dport 53 accept"
            ),
            "{stdout}"
        );
        assert!(stdout.contains("input tcp dport 9153 accept"), "{stdout}");
        // DNS from anyone else still goes only to allowdns.
        assert!(stdout.contains("\"DNS only to allowdns\""), "{stdout}");
    }
}
