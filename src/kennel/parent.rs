//! `allowdns run` itself: validates, starts the holder, maps its user
//! namespace, attaches pasta, enters that user namespace (so nfnetlink lets it
//! feed the kennel's sets), serves DNS inside the kennel, waits for CMD, tears down.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::prctl;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid};
use tokio_util::sync::CancellationToken;

use super::error::KennelError;
use super::holder::{Ctl, Word};
use super::view::View;
use super::{DNS, RunArgs, signals};
use crate::config;
use crate::diagnostics::Diagnostics;
use crate::ops::startup::{self, Failure};
use crate::policy;
use crate::serve::server::Listeners;
use crate::tools::suggest::{Kept, SuggestArgs};

/// How long start-up may take at each step before `run` gives up.
const STEP: Duration = Duration::from_secs(10);

/// A failed step of the set-up, named by `what`.
fn step(what: &'static str) -> impl Fn(std::io::Error) -> KennelError + Copy {
    move |source| KennelError::Step { what, source }
}

/// A failed system call of the set-up, named by `what`.
fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> KennelError {
    move |e| KennelError::Step {
        what,
        source: e.into(),
    }
}

/// A file or directory of the kennel that failed.
fn file(path: &Path) -> impl FnOnce(std::io::Error) -> KennelError + '_ {
    move |source| KennelError::File {
        path: path.into(),
        source,
    }
}

/// Everything `run` started; dropping it kills and removes what is left.
struct Kennel {
    dir: PathBuf,
    holder: Option<Child>,
    pasta: Option<Child>,
}

impl Drop for Kennel {
    fn drop(&mut self) {
        for child in [self.holder.as_mut(), self.pasta.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn run(args: RunArgs) -> Result<ExitCode, Failure> {
    // Handlers now, while single-threaded: a Ctrl-C during start-up must not kill us half-way.
    let mut signals = signals::register(false).map_err(step("signals"))?;
    // SIGHUP reloads once the resolver runs; until then it must not end `run`.
    signal_hook::flag::register(
        signal_hook::consts::SIGHUP,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    )
    .map_err(step("signals"))?;
    // Fail closed, before anything starts, when user namespaces are off.
    if std::fs::read_to_string("/proc/sys/user/max_user_namespaces").is_ok_and(|n| n.trim() == "0")
    {
        return Err(KennelError::NoUserNamespaces.into());
    }
    let pasta = find_in_path("pasta").ok_or(KennelError::Missing {
        tool: "pasta",
        hint: "the kennel's only way out is pasta (Debian/Ubuntu: apt install passt)",
    })?;
    find_in_path("nft").ok_or(KennelError::Missing {
        tool: "nft",
        hint: "the kennel's firewall is nftables (apt install nftables)",
    })?;

    // Bad input fails here, naming file and line, before anything starts.
    let mut sources = args.sources();
    let starter = match args.learn_from_nothing() {
        Some(agent) => Some(Starter::write(&agent)?),
        None => None,
    };
    if let Some(starter) = &starter {
        sources.policy = vec![starter.0.clone()];
    }
    let mut diags = Diagnostics::default();
    let Some(settings) = config::load(&sources, &mut diags) else {
        return Err(Failure::Invalid(diags));
    };
    let Some(policies) = policy::load(&settings.policies, &mut diags) else {
        return Err(Failure::Invalid(diags));
    };
    if args.learn && settings.audit_log.as_deref() == Some(Path::new("-")) {
        diags.error(
            Path::new("<command line>"),
            None,
            Some("--audit-log".into()),
            "--learn makes its suggestion from a file: give --audit-log FILE, not `-`",
        );
        return Err(Failure::Invalid(diags));
    }
    let (source, agent) = match policies.policies.as_slice() {
        [one] => (one.source.clone(), one.agent.to_string()),
        _ => return Err(KennelError::NotOnePolicy(policies.policies.len()).into()),
    };
    // Warnings about the user's file, with its lines; the kennel's copy is not
    // theirs, and an empty starter allows nothing by design.
    if starter.is_none() {
        for warning in diags.warnings() {
            tracing::warn!("{warning}");
        }
    }
    if args.learn {
        let from = match &starter {
            Some(_) => format!("an empty policy for agent '{agent}'"),
            None => source.display().to_string(),
        };
        tracing::warn!(
            "learn mode (--learn): names outside {from} are resolved and opened too; \
             this run observes CMD, it does not fence it"
        );
    }

    let me = std::process::id();
    let (uid, gid) = kennel_ids();
    let binds = shared(&args.ro_bind, &args.bind).map_err(Failure::Invalid)?;
    let view = View {
        uid,
        gid,
        shared: binds.iter().map(|(_, p)| p.clone()).collect(),
    };
    let cwd = std::env::current_dir().ok();
    let path_inside = announce(&view, &args, &settings, &source, cwd.as_deref());
    let cwd_inside = cwd.filter(|c| view.hidden(c).is_none());
    let dir = std::env::temp_dir().join(format!(
        "allowdns-run-{me}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    ));
    // 0711: pasta, running as the kennel's user, reaches its own subdirectory.
    std::fs::DirBuilder::new()
        .mode(0o711)
        .create(&dir)
        .map_err(file(&dir))?;
    let mut kennel = Kennel {
        dir: dir.clone(),
        holder: None,
        pasta: None,
    };
    let ctl_path = dir.join("ctl");
    let listener = UnixListener::bind(&ctl_path).map_err(file(&ctl_path))?;
    let mut holder = Command::new("/proc/self/exe");
    holder
        .args(["__kennel", "holder", "--ctl"])
        .arg(&ctl_path)
        .args(["--uid", &uid.to_string(), "--gid", &gid.to_string()])
        .args(["--ppid", &me.to_string()])
        .args(["--path", &path_inside])
        .args(["--preserve-fds", &args.preserve_fds.to_string()]);
    for (flag, path) in &binds {
        holder.arg(flag).arg(path);
    }
    if let Some(cwd) = &cwd_inside {
        holder.arg("--cwd").arg(cwd);
    }
    let holder = holder
        .arg("--")
        .args(&args.command)
        .spawn()
        .map_err(step("cannot start the kennel"))?;
    let c = holder.id();
    kennel.holder = Some(holder);
    let mut ctl = accept(&listener, &mut kennel)?;
    ctl.expect(Word::Unshared).map_err(KennelError::from)?;

    // Map the kennel's root to the unprivileged host user.
    let proc = PathBuf::from(format!("/proc/{c}"));
    let write = |file: &str, text: String| {
        std::fs::write(proc.join(file), &text).map_err(|source| KennelError::Map {
            path: proc.join(file),
            text: text.trim().into(),
            source,
        })
    };
    write("setgroups", "deny".into())?;
    write("gid_map", format!("0 {gid} 1\n"))?;
    write("uid_map", format!("0 {uid} 1\n"))?;

    // pasta (running as the kennel's user) reports readiness with its pid file.
    let pasta_dir = dir.join("pasta");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&pasta_dir)
        .and_then(|()| {
            std::os::unix::fs::chown(&pasta_dir, Some(uid), Some(gid)).or_else(|e| {
                // Rootless: it is ours already.
                if Uid::effective().is_root() {
                    Err(e)
                } else {
                    Ok(())
                }
            })
        })
        .map_err(file(&pasta_dir))?;
    // pasta joins the namespaces from the host's user namespace, before we leave it.
    let mut pasta_cmd = Command::new("/proc/self/exe");
    pasta_cmd
        .args(["__kennel", "pdeathsig", "--ppid", &me.to_string()])
        .args(["--uid", &uid.to_string(), "--gid", &gid.to_string(), "--"])
        .arg(&pasta)
        .args([
            "-f", "-q", "-t", "none", "-u", "none", "-T", "none", "-U", "none",
        ])
        .args(["--no-map-gw", "--config-net", "--no-netns-quit", "--pid"])
        .arg(pasta_dir.join("pid"));
    // Its own process group: a terminal's Ctrl-C is meant for CMD, not the way out.
    let pasta_child = pasta_cmd
        .process_group(0)
        .arg(c.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(step("cannot start pasta"))?;
    kennel.pasta = Some(pasta_child);

    // nfnetlink checks the sender for CAP_NET_ADMIN in the user namespace that
    // owns the kennel's netns: enter it. We are still single-threaded here.
    let userns = File::open(proc.join("ns/user")).map_err(step("ns/user"))?;
    let netns = File::open(proc.join("ns/net")).map_err(step("ns/net"))?;
    setns(&userns, CloneFlags::CLONE_NEWUSER)
        .map_err(sys("cannot enter the kennel's user namespace"))?;
    // Nothing in the kennel may ptrace or read us.
    prctl::set_dumpable(false).map_err(sys("dumpable"))?;

    // The policy as the kennel runs it: fed sets in the kennel's netns, the kennel as its only client.
    // Our own descriptor, not /proc/C: it outlives C when CMD ends at once.
    let netns_path = PathBuf::from(format!("/proc/self/fd/{}", netns.as_raw_fd()));
    let mode = if args.learn {
        Some("learn")
    } else if args.monitor {
        Some("monitor")
    } else {
        None
    };
    let derived = derive_policy(&source, &netns_path, mode)?;
    let policy_path = dir.join("policy.yaml");
    std::fs::write(&policy_path, derived).map_err(file(&policy_path))?;
    // SIGHUP re-reads the operator's file, not the copy.
    let rederive: crate::ops::startup::ReloadHook = {
        let (source, netns, copy) = (source.clone(), netns_path.clone(), policy_path.clone());
        std::sync::Arc::new(move || {
            let text = derive_policy(&source, &netns, mode).map_err(|e| e.to_string())?;
            std::fs::write(&copy, text).map_err(|e| format!("{}: {e}", copy.display()))
        })
    };
    sources.policy = vec![policy_path];
    sources.listen = vec![DNS.to_string()];
    let kept = settings.audit_log.clone();
    let audit_log = match (&kept, args.learn) {
        (Some(p), _) => p.clone(),
        (None, true) => dir.join("audit.jsonl"),
        (None, false) => PathBuf::from("/dev/null"),
    };
    sources.audit_log = Some(audit_log.clone());
    let ruleset = startup::ruleset(&sources, None, &[DNS.ip()])?;
    ctl.say(Word::Mapped(ruleset.len()), ruleset.as_bytes())
        .map_err(step("kennel"))?;
    ctl.expect(Word::Fenced).map_err(KennelError::from)?;
    wait_for_pasta(c, &mut kennel)?;

    let runtime = tokio::runtime::Runtime::new().map_err(crate::error::RuntimeError::Runtime)?;
    let mut prepared = startup::prepare(&sources)?;
    prepared.before_reload = Some(rederive);
    let firewall = prepared
        .loaded
        .policies
        .policies
        .first()
        .and_then(|p| p.firewall.clone());
    // The DNS sockets live in the kennel's netns; upstream sockets stay in ours.
    let listeners = std::thread::scope(|s| {
        s.spawn(|| -> Result<Listeners, Failure> {
            setns(&netns, CloneFlags::CLONE_NEWNET).map_err(sys("enter the kennel's netns"))?;
            let _guard = runtime.enter();
            Ok(Listeners::bind(&[DNS])?)
        })
        .join()
        .unwrap_or_else(|_| Err(KennelError::Panicked.into()))
    })?;
    let alerts: Box<dyn std::io::Write + Send> = match &args.alerts {
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| KennelError::Alerts {
                    path: path.clone(),
                    source,
                })?,
        ),
        None => Box::new(std::io::stderr()),
    };
    let token = CancellationToken::new();
    let holder_pid = Pid::from_raw(c as i32);
    let serving = runtime.spawn({
        let token = token.clone();
        async move {
            let result =
                startup::serve_on(sources, prepared, token.clone(), listeners, alerts).await;
            if !token.is_cancelled() {
                // allowdns stopped while CMD runs: the kennel goes with it, never left unfenced.
                if let Err(e) = &result {
                    eprintln!("allowdns run: error: {e}; stopping the kennel");
                }
                let _ = kill(holder_pid, Signal::SIGKILL);
            }
            result
        }
    });
    std::thread::spawn(move || {
        for origin in signals.forever() {
            signals::forward(&origin, holder_pid);
        }
    });
    // The fence checks itself from inside before CMD relies on it.
    let f = firewall.unwrap_or_else(crate::policy::firewall::FirewallConfig::with_defaults);
    let report = crate::fence::selftest::run(&crate::fence::selftest::Fence {
        netns: netns_path.clone(),
        family: f.family,
        table: f.table,
        dns: vec![DNS.ip()],
    });
    if !report.passed() {
        return Err(KennelError::FenceUnproven(report.failures()).into());
    }
    ctl.say(Word::Go, b"").map_err(step("kennel"))?;
    drop(ctl);

    let status = kennel
        .holder
        .as_mut()
        .map(|h| h.wait())
        .transpose()
        .map_err(step("wait"))?;
    kennel.holder = None;
    let code = status.map_or(1, exit_code);
    token.cancel();
    if let Ok(Err(e)) = runtime.block_on(serving) {
        eprintln!("allowdns run: error: {e}");
    }
    drop(runtime);
    drop(kennel.pasta.take().map(|mut p| {
        let _ = p.kill();
        p.wait()
    }));
    if args.learn {
        let suggest = SuggestArgs {
            audit_log,
            agent: Some(agent),
            output: args.suggest_out.clone(),
            include_denied: false,
            skip_malformed: true,
            kennel: Some(if kept.is_some() { Kept::Yes } else { Kept::No }),
        };
        for warning in crate::tools::suggest::run(&suggest)?.warnings() {
            tracing::warn!("{warning}");
        }
    }
    drop(kennel);
    Ok(ExitCode::from(code))
}

/// `run --learn` without a policy: an empty one for the agent, removed on drop.
struct Starter(PathBuf);

impl Starter {
    fn write(agent: &str) -> Result<Starter, KennelError> {
        let path = std::env::temp_dir().join(format!(
            "allowdns-run-{}-{}.yaml",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ));
        let mut doc = serde_yaml::Mapping::new();
        doc.insert("agent_name".into(), agent.into());
        doc.insert(
            "expected_outbound".into(),
            serde_yaml::Sequence::new().into(),
        );
        let text = serde_yaml::to_string(&doc).map_err(KennelError::Derived)?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
            .map_err(file(&path))?;
        Ok(Starter(path))
    }
}

impl Drop for Starter {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The host uid and gid the kennel's root maps to: the caller, or when root
/// calls, the sudo user or else nobody. Never host root.
fn kennel_ids() -> (u32, u32) {
    let (euid, egid) = (Uid::effective().as_raw(), Gid::effective().as_raw());
    if euid != 0 {
        return (euid, egid);
    }
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|&id| id != 0)
    };
    let wanted = match (env("SUDO_UID"), env("SUDO_GID")) {
        (Some(u), Some(g)) => (u, g),
        _ => (65534, 65534),
    };
    if super::in_init_userns() || (mapped("uid_map", wanted.0) && mapped("gid_map", wanted.1)) {
        wanted
    } else {
        // Root of a user namespace that maps nothing else is itself an
        // unprivileged host user: the kennel runs as that same identity.
        (0, 0)
    }
}

fn mapped(file: &str, id: u32) -> bool {
    let map = std::fs::read_to_string(format!("/proc/self/{file}")).unwrap_or_default();
    map.lines().any(|line| {
        let f: Vec<u64> = line
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        matches!(f[..], [inside, _, count] if inside <= u64::from(id) && u64::from(id) < inside + count)
    })
}

fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.saturating_add(sig as u8),
        _ => 1,
    }
}

fn accept(listener: &UnixListener, kennel: &mut Kennel) -> Result<Ctl, Failure> {
    let channel = step("kennel control socket");
    listener.set_nonblocking(true).map_err(channel)?;
    let deadline = Instant::now() + STEP;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream
                    .set_nonblocking(false)
                    .and_then(|()| stream.set_read_timeout(Some(STEP)))
                    .map_err(channel)?;
                return Ok(Ctl::new(stream).map_err(channel)?);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(channel(e).into()),
        }
        if let Some(Ok(Some(status))) = kennel.holder.as_mut().map(Child::try_wait) {
            return Err(KennelError::HolderExited(status).into());
        }
        if Instant::now() > deadline {
            return Err(KennelError::HolderSilent.into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until pasta has given the kennel its interface and routes; fails if pasta exits.
fn wait_for_pasta(c: u32, kennel: &mut Kennel) -> Result<(), Failure> {
    let deadline = Instant::now() + STEP;
    loop {
        let v4 = std::fs::read_to_string(format!("/proc/{c}/net/route")).unwrap_or_default();
        let v6 = std::fs::read_to_string(format!("/proc/{c}/net/ipv6_route")).unwrap_or_default();
        let default_v4 = v4.lines().skip(1).any(|l| {
            let mut f = l.split_whitespace();
            f.nth(1) == Some("00000000")
        });
        let default_v6 = v6
            .lines()
            .any(|l| l.starts_with("00000000000000000000000000000000 00"));
        let pid_written =
            std::fs::metadata(kennel.dir.join("pasta/pid")).is_ok_and(|m| m.len() > 0);
        if (default_v4 || default_v6) && pid_written {
            wait_for_dad(c);
            return Ok(());
        }
        if let Some(Ok(Some(status))) = kennel.pasta.as_mut().map(Child::try_wait) {
            return Err(KennelError::PastaExited(status).into());
        }
        if Instant::now() > deadline {
            return Err(KennelError::NoRoute.into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The longest `run` waits for the kennel's IPv6 addresses to leave the
/// tentative state (duplicate address detection) before starting CMD.
const DAD_WAIT: Duration = Duration::from_secs(3);

/// Waits, bounded, while an IPv6 address in the kennel is tentative (the
/// holder turns detection off, so this is for kernels or pastas that do it
/// anyway), and says so when it waited.
fn wait_for_dad(c: u32) {
    let start = Instant::now();
    let mut tentative =
        crate::serve::dad::tentative_addresses(Path::new(&format!("/proc/{c}/net/if_inet6")));
    if tentative.is_empty() {
        return;
    }
    while !tentative.is_empty() && start.elapsed() < DAD_WAIT {
        std::thread::sleep(Duration::from_millis(20));
        tentative =
            crate::serve::dad::tentative_addresses(Path::new(&format!("/proc/{c}/net/if_inet6")));
    }
    if tentative.is_empty() {
        eprintln!(
            "allowdns run: waited {} ms for IPv6 duplicate address detection in the kennel",
            start.elapsed().as_millis()
        );
    } else {
        eprintln!(
            "allowdns run: warning: IPv6 address {} is still tentative after {} s \
             (duplicate address detection); IPv6 from the kennel may fail for its first seconds",
            tentative[0],
            DAD_WAIT.as_secs()
        );
    }
}

/// The user's policy as the kennel runs it: its sets in the kennel's netns,
/// no `clients` (the kennel is the only client), `mode` from --learn or --monitor.
fn derive_policy(source: &Path, netns: &Path, mode: Option<&str>) -> Result<String, KennelError> {
    use serde_yaml::{Mapping, Value};
    let policy = |why: String| KennelError::Policy {
        path: source.into(),
        why,
    };
    let text = std::fs::read_to_string(source).map_err(file(source))?;
    let mut doc: Value = serde_yaml::from_str(&text).map_err(|e| policy(e.to_string()))?;
    let map = doc
        .as_mapping_mut()
        .ok_or_else(|| policy("not a mapping".into()))?;
    if map.remove("clients").is_some() {
        tracing::warn!(
            "{}: clients ignored: the kennel is the only client",
            source.display()
        );
    }
    let firewall = map
        .entry(Value::from("firewall"))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !firewall.is_mapping() {
        *firewall = Value::Mapping(Mapping::new());
    }
    if let Some(fw) = firewall.as_mapping_mut() {
        fw.insert(
            Value::from("netns"),
            Value::from(netns.to_string_lossy().into_owned()),
        );
    }
    if let Some(mode) = mode {
        map.insert(Value::from("mode"), Value::from(mode));
    }
    serde_yaml::to_string(&doc).map_err(KennelError::Derived)
}

/// Says, before CMD starts, what the kennel is and what CMD will not find
/// where the caller expects it. Returns CMD's PATH.
fn announce(
    view: &View,
    args: &RunArgs,
    settings: &config::Settings,
    policy: &Path,
    cwd: Option<&Path>,
) -> String {
    let home = std::env::var_os("HOME");
    let upstream = settings.upstream.to_string();
    eprintln!(
        "allowdns run: {}",
        view.summary(&upstream, home.as_deref().map(Path::new))
    );
    let (path_inside, dropped) = view.path_inside(std::env::var_os("PATH").as_deref());
    if !dropped.is_empty() {
        let list: Vec<String> = dropped
            .iter()
            .map(|(dir, why)| format!("{} ({why})", dir.display()))
            .collect();
        eprintln!(
            "allowdns run: CMD's PATH leaves out what it cannot use: {}",
            list.join(", ")
        );
    }
    for warning in view.warnings(cwd, &args.command, &path_inside) {
        eprintln!("allowdns run: warning: {warning}");
    }
    let records = [
        ("audit log", settings.audit_log.as_deref()),
        ("alerts file", args.alerts.as_deref()),
    ];
    for (what, path) in records {
        let Some(path) = path.filter(|p| *p != Path::new("-")) else {
            continue;
        };
        if let Some(why) = writable_by_cmd(path, view) {
            eprintln!(
                "allowdns run: warning: CMD can delete or replace the {what} {} ({why}); \
                 keep it where CMD cannot reach it",
                path.display()
            );
        }
    }
    if let Some(why) = writable_by_cmd(policy, view) {
        eprintln!(
            "allowdns run: warning: CMD can rewrite the policy file {} ({why}), and SIGHUP loads \
             what it holds; keep it where CMD cannot reach it",
            policy.display()
        );
    }
    path_inside
}

/// The shared paths, canonical (the holder binds them at the same path),
/// each with the holder's flag for it.
fn shared(ro: &[PathBuf], rw: &[PathBuf]) -> Result<Vec<(&'static str, PathBuf)>, Diagnostics> {
    let mut diags = Diagnostics::default();
    let flagged = ro.iter().map(|p| ("--ro-bind", p));
    let found = flagged
        .chain(rw.iter().map(|p| ("--bind", p)))
        .filter_map(|(flag, p)| match std::fs::canonicalize(p) {
            Ok(p) => Some((flag, p)),
            Err(e) => {
                diags.error(p, None, Some(flag.into()), format!("cannot share it: {e}"));
                None
            }
        })
        .collect();
    if diags.has_errors() {
        Err(diags)
    } else {
        Ok(found)
    }
}

/// Why CMD's host uid may replace `policy` (its own, or a directory above
/// it it may write), when CMD can see it.
fn writable_by_cmd(policy: &Path, view: &View) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // A file not written yet: its directory decides.
    let policy = std::fs::canonicalize(policy).ok().or_else(|| {
        let dir = std::fs::canonicalize(policy.parent()?).ok()?;
        Some(dir.join(policy.file_name()?))
    })?;
    if view.hidden(&policy).is_some() || view.uid == 0 {
        return None;
    }
    policy.ancestors().find_map(|p| {
        let m = std::fs::metadata(p).ok()?;
        let sticky_dir = m.is_dir() && m.mode() & 0o1000 != 0;
        if m.uid() == view.uid {
            Some(format!(
                "{} belongs to CMD's host uid {}",
                p.display(),
                view.uid
            ))
        } else if m.mode() & 0o002 != 0 && !sticky_dir {
            Some(format!("{} is writable by everyone", p.display()))
        } else {
            None
        }
    })
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kennel_policy_feeds_its_own_netns_and_has_no_clients() {
        let dir = std::env::temp_dir().join(format!("allowdns-kennel-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("p.yaml");
        std::fs::write(
            &src,
            "agent_name: a\nclients: [\"10.0.0.0/8\"]\nexpected_outbound:\n  - destination: x.example\nfirewall:\n  netns: /run/netns/elsewhere\n  family: ip\n",
        )
        .unwrap();
        let text = derive_policy(&src, Path::new("/proc/42/ns/net"), Some("learn")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert!(doc.get("clients").is_none(), "{text}");
        assert_eq!(doc["firewall"]["netns"].as_str(), Some("/proc/42/ns/net"));
        assert_eq!(doc["firewall"]["family"].as_str(), Some("ip"));
        assert_eq!(doc["mode"].as_str(), Some("learn"));
        let plain = derive_policy_text("agent_name: a\n", false);
        assert!(
            plain.contains("netns: /proc/42/ns/net") && !plain.contains("mode"),
            "{plain}"
        );
    }

    fn derive_policy_text(text: &str, learn: bool) -> String {
        let file =
            std::env::temp_dir().join(format!("allowdns-kennel-unit2-{}.yaml", std::process::id()));
        std::fs::write(&file, text).unwrap();
        let mode = learn.then_some("learn");
        let out = derive_policy(&file, Path::new("/proc/42/ns/net"), mode).unwrap();
        let _ = std::fs::remove_file(&file);
        out
    }
}
