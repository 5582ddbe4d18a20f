//! deploy/: the Kubernetes manifests as Kustomize renders them pass the API
//! schema (kubernetes-validate, offline) and the Pod Security Standards
//! (restricted for the agent container, baseline for the pod, NET_ADMIN the
//! only named exception), and the init container's ruleset arguments agree
//! with the sidecar they fence for.

use crate::common;

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

        // The policy and config are mounted into the fence and the sidecar, never the agent.
        assert!(
            seq(agent, &["volumeMounts"])
                .iter()
                .all(|m| !str_at(m, &["name"]).unwrap_or("").starts_with("allowdns")),
            "{overlay}: the agent mounts allowdns's files"
        );
        assert_eq!(at(pod, &["shareProcessNamespace"]), None);

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
        assert_has(
            &stdout,
            "output meta skuid 65532 ip daddr 10.96.0.10 meta l4proto { udp, tcp } th dport 53 accept",
        );
        assert_has(&stdout, "input tcp dport 9153 accept");
        // DNS from anyone else still goes only to allowdns.
        assert_has(&stdout, "\"DNS only to allowdns\"");
    }
}

/// A podman pod (one network namespace shared by its containers, as in a
/// Kubernetes pod) wired by the test to a "world" namespace holding the
/// upstream and the services, on documentation addresses. Its own container
/// storage and settings live in a temp dir; everything goes on drop.
struct PodLab {
    dir: TempDir,
    pod: String,
    world: String,
    sidecar: String,
}

const UPSTREAM: &str = "198.51.100.53";
const ALLOWED: &str = "198.51.100.80";
const HARDCODED: &str = "203.0.113.7";
const IMAGE: &str = "localhost/allowdns:test";

impl PodLab {
    fn podman(&self) -> Command {
        self.tool("podman")
    }

    /// podman or buildah with this lab's storage and settings.
    fn tool(&self, name: &str) -> Command {
        let mut cmd = Command::new(name);
        cmd.env("CONTAINERS_CONF", self.dir.0.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.0.join("storage.conf"));
        cmd
    }

    fn run(&self, cmd: &mut Command) -> String {
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{cmd:?}: {text}");
        text
    }

    fn create() -> PodLab {
        let id = std::process::id() % 100_000;
        let lab = PodLab {
            dir: TempDir::new("pod"),
            pod: format!("adns-pod-{id}"),
            world: format!("adns-world-{id}"),
            sidecar: format!("adns-sidecar-{id}"),
        };
        // This machine's engine may not raise rlimits (no CAP_SYS_RESOURCE):
        // containers get the test's own; cgroup v1 wants runc, not crun.
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        // (Where podman runs its runtime the process limit can be lower than
        // the test's own, 32768 against 96367; 16384 fits under both.)
        let limit = |what: &str, cap: u64| {
            let line = limits.lines().find(|l| l.starts_with(what)).unwrap();
            let hard = line[what.len()..].split_whitespace().nth(1).unwrap();
            let hard = hard.parse::<u64>().unwrap_or(cap).min(cap);
            format!("{hard}:{hard}")
        };
        lab.dir.write(
            "containers.conf",
            &format!(
                "[containers]\ndefault_ulimits = [\"nofile={}\", \"nproc={}\"]\n[engine]\nruntime = \"runc\"\n",
                limit("Max open files", 65536),
                limit("Max processes", 16384)
            ),
        );
        let storage = lab.dir.0.join("storage");
        lab.dir.write(
            "storage.conf",
            &format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{0}/root\"\nrunroot = \"{0}/run\"\n",
                storage.display()
            ),
        );
        sh(&["ip", "netns", "add", &lab.world]);
        sh(&["ip", "-n", &lab.world, "link", "set", "lo", "up"]);
        lab
    }

    /// The pod's network namespace, through its infra container.
    fn netns(&self) -> PathBuf {
        let infra = self.run(self.podman().args([
            "pod",
            "inspect",
            &self.pod,
            "--format",
            "{{.InfraContainerID}}",
        ]));
        let pid =
            self.run(
                self.podman()
                    .args(["inspect", "--format", "{{.State.Pid}}", infra.trim()]),
            );
        PathBuf::from(format!("/proc/{}/ns/net", pid.trim()))
    }
}

impl Drop for PodLab {
    fn drop(&mut self) {
        let _ = self
            .podman()
            .args(["rm", "-f", "-t", "0", &self.sidecar])
            .output();
        let _ = self
            .podman()
            .args(["pod", "rm", "-f", "-t", "0", &self.pod])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.world])
            .output();
    }
}

/// What the agent container runs: resolve and connect to the allowed name,
/// resolve the denied one, connect to a hard-coded address, and ask the
/// upstream directly, bypassing allowdns.
const AGENT: &str = r#"
import json, socket, struct
def resolve(name):
    try:
        return socket.gethostbyname(name)
    except OSError as e:
        return "error: " + type(e).__name__
def connect(ip, port):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((ip, port))
        return "connected"
    except OSError as e:
        return "error: " + type(e).__name__
    finally:
        s.close()
def direct(server, name):
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
    q += struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        s.sendto(q, (server, 53))
        s.recv(512)
        return "answered"
    except OSError as e:
        return "error: " + type(e).__name__
    finally:
        s.close()
ok = resolve("ok.pod.test")
print(json.dumps({
    "allowed": ok,
    "allowed_connect": connect(ok, 8080) if ok[0].isdigit() else None,
    "denied": resolve("evil.pod.test"),
    "hardcoded_connect": connect("HARDCODED", 8080),
    "direct_upstream": direct("UPSTREAM", "evil.pod.test"),
}))
"#;

#[test]
fn podman_pod_runs_the_sidecar_pattern_for_real() {
    if !is_root() {
        return require_or_skip("root is needed for podman pods and namespaces");
    }
    for tool in ["podman", "buildah", "setcap", "nft", "runc"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return require_or_skip(&format!("{tool} is needed (see .ci/run)"));
        }
    }
    let lab = PodLab::create();
    let world = PathBuf::from(format!("/run/netns/{}", lab.world));

    // The world: the upstream, the allowed service, and an address the agent
    // might hard-code. Connections complete in the listen backlog.
    for ip in [UPSTREAM, ALLOWED, HARDCODED] {
        let addr = format!("{ip}/32");
        sh(&["ip", "-n", &lab.world, "addr", "add", &addr, "dev", "lo"]);
    }
    let zone = lab.dir.write(
        "pod.test.zone",
        &format!("$ORIGIN pod.test.\n$TTL 60\n@ IN SOA ns. h. 1 3600 600 86400 5\nok IN A {ALLOWED}\nevil IN A {HARDCODED}\n"),
    );
    let _upstream = in_ns(world.clone(), move || {
        Upstream::start(UPSTREAM, 53, &[zone])
    });
    let _services = in_ns(world.clone(), || {
        [ALLOWED, HARDCODED].map(|ip| std::net::TcpListener::bind((ip, 8080)).unwrap())
    });

    // The image, as deploy/container/build.sh builds it (here from the test build).
    let build = lab
        .tool(&repo("deploy/container/build.sh").to_string_lossy())
        .args([bin(), IMAGE])
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );

    // The image runs as 65532 by default and has no shell.
    let user =
        lab.run(
            lab.podman()
                .args(["image", "inspect", "--format", "{{.Config.User}}", IMAGE]),
        );
    assert_eq!(user.trim(), "65532:65532");
    let shell = lab
        .podman()
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "/bin/sh",
            IMAGE,
            "-c",
            "id",
        ])
        .output()
        .unwrap();
    assert!(!shell.status.success(), "the image has a shell");
    assert!(
        String::from_utf8_lossy(&shell.stderr).contains("no such file"),
        "{}",
        String::from_utf8_lossy(&shell.stderr)
    );

    // The pod (its infra container holds the network namespace) and its link to the world.
    lab.run(
        lab.podman()
            .args(["pod", "create", "--name", &lab.pod, "--network", "none"]),
    );
    lab.run(lab.podman().args(["pod", "start", &lab.pod]));
    let netns = lab.netns();
    let ns = netns.to_str().unwrap();
    let pid = ns.split('/').nth(2).unwrap();
    let peer = format!("w{pid}");
    sh(&[
        "ip", "link", "add", &peer, "type", "veth", "peer", "name", "eth0", "netns", pid,
    ]);
    sh(&["ip", "link", "set", &peer, "netns", &lab.world]);
    // `ip -n WORLD ARGS`.
    let world_ip = |args: &str| {
        let mut argv = vec!["ip", "-n", &lab.world];
        argv.extend(args.split_whitespace());
        sh(&argv);
    };
    world_ip(&format!("addr add 192.0.2.1/24 dev {peer}"));
    world_ip(&format!("link set {peer} up"));
    for args in [
        vec!["addr", "add", "192.0.2.10/24", "dev", "eth0"],
        vec!["link", "set", "eth0", "up"],
        vec!["route", "add", "default", "via", "192.0.2.1"],
    ] {
        let mut cmd = vec!["nsenter", "--target", pid, "--net", "ip"];
        cmd.extend(args);
        sh(&cmd);
    }

    // Positive control: before the fence, the pod reaches the hard-coded
    // address and the upstream answers it directly.
    let reached = in_ns(netns.clone(), || {
        std::net::TcpStream::connect_timeout(
            &format!("{HARDCODED}:8080").parse().unwrap(),
            std::time::Duration::from_secs(2),
        )
        .is_ok()
    });
    assert!(
        reached,
        "the hard-coded address is reachable without the fence"
    );
    let answered = in_ns(netns.clone(), || {
        rcode(
            format!("{UPSTREAM}:53").parse().unwrap(),
            "evil.pod.test",
            hickory_proto::rr::RecordType::A,
        )
    });
    assert_eq!(answered, hickory_proto::op::ResponseCode::NoError);

    // Config and policy, as the ConfigMaps would mount them.
    let config = lab.dir.0.join("config");
    let policy = lab.dir.0.join("policy");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::create_dir_all(&policy).unwrap();
    std::fs::write(
        config.join("allowdns.yaml"),
        format!("listen: [\"127.0.0.1:53\"]\nupstream:\n  servers: [\"{UPSTREAM}\"]\nmetrics: \"0.0.0.0:9153\"\n"),
    )
    .unwrap();
    std::fs::write(
        policy.join("agent.yaml"),
        "agent_name: pod\nexpected_outbound:\n  - destination: ok.pod.test\nfirewall: {}\n",
    )
    .unwrap();
    let mounts = [
        format!("{}:/etc/allowdns/config:ro", config.display()),
        format!("{}:/etc/allowdns/policy:ro", policy.display()),
    ];
    let allowdns_args = [
        "--config=/etc/allowdns/config/allowdns.yaml",
        "--policy=/etc/allowdns/policy",
    ];

    // The init container: root with NET_ADMIN only, loads the ruleset.
    let mut init = lab.podman();
    init.args([
        "run",
        "--rm",
        "--pod",
        &lab.pod,
        "--user",
        "0",
        "--read-only",
    ])
    .args(["--cap-drop", "ALL", "--cap-add", "NET_ADMIN"])
    .args(["-v", &mounts[0], "-v", &mounts[1], IMAGE, "nft-ruleset"])
    .args(allowdns_args)
    .args(["--sidecar-uid=65532", "--open-tcp=9153", "--load"]);
    assert!(lab.run(&mut init).contains("ruleset loaded"));

    // The sidecar: uid 65532, NET_ADMIN and NET_BIND_SERVICE, read-only root;
    // its stdout (the audit log) is collected as the cluster's log agent would.
    let stdout = std::fs::File::create(lab.dir.0.join("sidecar.out")).unwrap();
    let stderr = std::fs::File::create(lab.dir.0.join("sidecar.err")).unwrap();
    let mut sidecar = lab.podman();
    sidecar
        .args(["run", "--rm", "--name", &lab.sidecar, "--pod", &lab.pod])
        .args(["--user", "65532:65532", "--read-only", "--cap-drop", "ALL"])
        .args(["--cap-add", "NET_ADMIN,NET_BIND_SERVICE"])
        .args(["-v", &mounts[0], "-v", &mounts[1], IMAGE, "serve"])
        .args(allowdns_args)
        .stdout(stdout)
        .stderr(stderr);
    let mut sidecar = sidecar.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let log = || std::fs::read_to_string(lab.dir.0.join("sidecar.err")).unwrap_or_default();
    while !log().contains("listening on") {
        assert!(
            std::time::Instant::now() < deadline && sidecar.try_wait().unwrap().is_none(),
            "the sidecar did not start:\n{}",
            log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // The agent: uid 1000, no capabilities, no new privileges; python from
    // this machine in a root of its own (no registry to pull an image from).
    let root = lab.dir.0.join("agent-root");
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let ldd = sh_out(&["ldd", python.to_str().unwrap()]).1;
    let libs = ldd
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from);
    for file in libs.chain([PathBuf::from("/usr/bin/python3")]) {
        let to = root.join(file.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(std::fs::canonicalize(&file).unwrap(), &to).unwrap();
    }
    let stdlib = python
        .parent()
        .unwrap()
        .join("../lib")
        .join(python.file_name().unwrap());
    let stdlib = std::fs::canonicalize(stdlib).unwrap();
    let script = lab.dir.write(
        "agent.py",
        &AGENT
            .replace("HARDCODED", HARDCODED)
            .replace("UPSTREAM", UPSTREAM),
    );
    let out = lab.run(
        lab.podman()
            .args(["run", "--rm", "--pod", &lab.pod, "--user", "1000:1000"])
            // As dnsPolicy None with nameservers [127.0.0.1].
            .args(["--dns", "127.0.0.1"])
            .args([
                "--cap-drop",
                "ALL",
                "--security-opt",
                "no-new-privileges",
                "--read-only",
            ])
            .args([
                "-v",
                &format!("{}:{}:ro", stdlib.display(), stdlib.display()),
            ])
            .args(["-v", &format!("{}:/agent.py:ro", script.display())])
            .arg("--rootfs")
            .arg(&root)
            .args(["/usr/bin/python3", "-I", "/agent.py"]),
    );
    let line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("{out}"));
    let seen: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(seen["allowed"], ALLOWED, "{seen}");
    assert_eq!(seen["allowed_connect"], "connected", "{seen}");
    assert_eq!(seen["denied"], "error: gaierror", "{seen}");
    // Rejected by default (`firewall.deny_action: reject`): it fails at once.
    assert_eq!(
        seen["hardcoded_connect"], "error: ConnectionRefusedError",
        "{seen}"
    );
    // The ruleset drops it at output: sendto fails with EPERM.
    assert!(
        ["error: PermissionError", "error: TimeoutError"]
            .contains(&seen["direct_upstream"].as_str().unwrap_or("")),
        "{seen}"
    );

    // The sidecar's stdout: the allowed name with the address it fed, the
    // denied one, and nothing from the bypass attempt (it never reached allowdns).
    lab.run(lab.podman().args(["stop", "-t", "10", &lab.sidecar]));
    let _ = sidecar.wait();
    let audit = read_audit(&lab.dir.0.join("sidecar.out"));
    let by = |name: &str| -> Vec<&serde_json::Value> {
        audit
            .iter()
            .filter(|r| r["qname"] == name && r["qtype"] == "A")
            .collect()
    };
    let allowed = by("ok.pod.test");
    assert!(
        allowed.iter().any(|r| r["decision"] == "allow"
            && r["agent"] == "pod"
            && r["answers"][0]["data"] == ALLOWED),
        "{audit:?}"
    );
    let denied = by("evil.pod.test");
    assert!(!denied.is_empty(), "{audit:?}");
    assert!(
        denied
            .iter()
            .all(|r| r["decision"] == "deny" && r["rcode"] == "NXDOMAIN"),
        "{audit:?}"
    );
}
