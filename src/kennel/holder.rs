//! The stages inside the kennel: `holder` creates and sets up the namespaces,
//! `init` is PID 1 of CMD's PID namespace; and `pdeathsig`, the wrapper that
//! kills pasta when allowdns dies.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::fcntl::{OFlag, open};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::sys::statvfs::{FsFlags, statvfs};
use nix::unistd::{Gid, Pid, Uid, getppid, setgroups, setresgid, setresuid};

use super::error::{HolderError, StageError};
use super::{STAGE_FAILED, StageArgs, signals};
use crate::fence::nft::NftError;

/// What `run` and the holder say to each other, one line each, in this
/// order; a failing side sends `error WHY` instead (see [`fail`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Word {
    /// holder → run: the namespaces exist; map the holder's ids.
    Unshared,
    /// run → holder: ids mapped; the ruleset follows, this many bytes.
    Mapped(usize),
    /// holder → run: the ruleset is loaded and the mounts are private.
    Fenced,
    /// run → holder: allowdns serves inside; start CMD.
    Go,
}

impl std::fmt::Display for Word {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Word::Unshared => f.write_str("unshared"),
            Word::Mapped(len) => write!(f, "mapped {len}"),
            Word::Fenced => f.write_str("fenced"),
            Word::Go => f.write_str("go"),
        }
    }
}

impl std::str::FromStr for Word {
    type Err = ();
    fn from_str(line: &str) -> Result<Word, ()> {
        match line {
            "unshared" => Ok(Word::Unshared),
            "fenced" => Ok(Word::Fenced),
            "go" => Ok(Word::Go),
            _ => line
                .strip_prefix("mapped ")
                .and_then(|n| n.parse().ok())
                .map(Word::Mapped)
                .ok_or(()),
        }
    }
}

/// The line-based channel between `run` and the holder.
pub(super) struct Ctl {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Ctl {
    pub(super) fn new(stream: UnixStream) -> std::io::Result<Ctl> {
        Ok(Ctl {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// Says `word`, followed by `body` (the ruleset, after [`Word::Mapped`]).
    pub(super) fn say(&mut self, word: Word, body: &[u8]) -> std::io::Result<()> {
        self.send(&word.to_string(), body)
    }

    fn send(&mut self, line: &str, body: &[u8]) -> std::io::Result<()> {
        let mut msg = Vec::with_capacity(line.len() + 1 + body.len());
        msg.extend_from_slice(line.replace('\n', " ").as_bytes());
        msg.push(b'\n');
        msg.extend_from_slice(body);
        self.writer.write_all(&msg)
    }

    /// The next word; an `error ...` line becomes the error.
    pub(super) fn recv(&mut self) -> Result<Word, HolderError> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(HolderError::Ended),
            Ok(_) => match line.trim_end().strip_prefix("error ") {
                Some(e) => Err(HolderError::Said(e.to_string())),
                None => line
                    .trim_end()
                    .parse()
                    .map_err(|()| HolderError::Unexpected(line.trim_end().into())),
            },
            Err(e) => Err(HolderError::Silent(e)),
        }
    }

    /// The next word, which must be `word`.
    pub(super) fn expect(&mut self, word: Word) -> Result<(), HolderError> {
        match self.recv()? {
            got if got == word => Ok(()),
            other => Err(HolderError::Unexpected(other.to_string())),
        }
    }

    fn recv_body(&mut self, len: usize) -> std::io::Result<Vec<u8>> {
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body)?;
        Ok(body)
    }
}

/// The holder: the first process of the kennel. Exits with CMD's status.
pub fn holder(args: &StageArgs) -> i32 {
    let mut signals = match signals::register(true) {
        Ok(s) => s,
        Err(e) => return fail(None, &format!("signals: {e}")),
    };
    let Some(ctl) = &args.ctl else {
        return fail(None, "holder: no --ctl");
    };
    let mut ctl = match UnixStream::connect(ctl).and_then(Ctl::new) {
        Ok(c) => c,
        Err(e) => return fail(None, &format!("cannot reach allowdns run: {e}")),
    };
    match set_up(args, &mut ctl) {
        Ok(()) => {}
        Err(e) => return fail(Some(&mut ctl), &e.to_string()),
    }
    // Our next child is PID 1 of the new PID namespace.
    let mut init = Command::new("/proc/self/exe");
    init.args(["__kennel", "init"])
        .args(["--preserve-fds", &args.preserve_fds.to_string()]);
    if let Some(cwd) = &args.cwd {
        init.arg("--cwd").arg(cwd);
    }
    if let Some(path) = &args.path {
        init.args(["--path", path]);
    }
    let init = init.arg("--").args(&args.command).spawn();
    let init = match init {
        Ok(child) => Pid::from_raw(child.id() as i32),
        Err(e) => {
            return fail(
                Some(&mut ctl),
                &format!("cannot start the kennel's init: {e}"),
            );
        }
    };
    drop(ctl);
    signals::forward_until_exit(&mut signals, init, false)
}

fn set_up(args: &StageArgs, ctl: &mut Ctl) -> Result<(), StageError> {
    let (uid, gid) = (args.uid.unwrap_or(65534), args.gid.unwrap_or(65534));
    if (uid == 0 || gid == 0) && super::in_init_userns() {
        return Err(StageError::HostRoot);
    }
    if Uid::effective().as_raw() != uid {
        // Invoked by root: become the unprivileged host user before creating
        // the user namespace, so it is that user who owns it, not root.
        setgroups(&[]).map_err(StageError::sys("setgroups"))?;
        setresgid(Gid::from_raw(gid), Gid::from_raw(gid), Gid::from_raw(gid))
            .map_err(StageError::sys(format!("setresgid {gid}")))?;
        setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid))
            .map_err(StageError::sys(format!("setresuid {uid}")))?;
    }
    // Set after the uid change, which clears it; then check the parent is still there.
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(StageError::sys("pdeathsig"))?;
    if args.ppid.is_some_and(|p| getppid().as_raw() != p) {
        return Err(StageError::ParentGone);
    }
    let flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP;
    unshare(flags).map_err(|e| StageError::UserNamespace(e.into()))?;
    // The kennel's only neighbour is pasta: no duplicate to detect, and
    // tentative addresses would hold IPv6 back for its first seconds.
    for conf in ["default", "all"] {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/accept_dad"), "0");
    }
    // The uid change made us non-dumpable; `run` must open /proc/OUR_PID/ns/*.
    prctl::set_dumpable(true).map_err(StageError::sys("dumpable"))?;
    ctl.say(Word::Unshared, b"").map_err(StageError::Ctl)?;

    let len = match ctl.recv()? {
        Word::Mapped(len) => len,
        other => return Err(StageError::Unexpected(other.to_string())),
    };
    let ruleset = ctl.recv_body(len).map_err(StageError::Ctl)?;
    load_ruleset(&ruleset)?;
    // ICMP echo sockets (unprivileged ping) for the kennel's root, the only gid mapped;
    // the fence still decides where they go.
    let _ = std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 0");
    mounts(args)?;
    // Last: the first child after this is PID 1 of the new PID namespace (nft must not be).
    unshare(CloneFlags::CLONE_NEWPID).map_err(StageError::sys("cannot create a PID namespace"))?;
    ctl.say(Word::Fenced, b"").map_err(StageError::Ctl)?;
    Ok(ctl.expect(Word::Go)?)
}

/// `nft -f -` inside the new network namespace, before anything can use it.
fn load_ruleset(ruleset: &[u8]) -> Result<(), StageError> {
    crate::fence::nft::load(ruleset).map_err(|e| match e {
        NftError::Spawn(e) => StageError::NftMissing(e),
        NftError::Io(e) => StageError::Nft(e),
        NftError::Refused(stderr) => StageError::NftRefused(stderr),
    })
}

const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Private mounts: fresh /tmp, /run, /var/tmp and /dev/shm (hiding the
/// host's files and Unix sockets: D-Bus, systemd, tmux, ssh-agent…), the
/// IPC namespace's own /dev/mqueue, `run`'s directory covered, the paths
/// shared back, and a read-only resolv.conf naming only allowdns.
fn mounts(args: &StageArgs) -> Result<(), StageError> {
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(StageError::sys("cannot make mounts private"))?;
    // Opened before anything covers them: shared paths may lie under /tmp.
    let shared = open_shared(args)?;
    let tmpfs = |target: &str, mode: &str, flags: MsFlags| {
        mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | flags,
            Some(format!("mode={mode},size=64m").as_str()),
        )
        .map_err(StageError::sys(format!("cannot mount a private {target}")))
    };
    tmpfs("/run", "755", MsFlags::empty())?;
    tmpfs("/tmp", "1777", MsFlags::empty())?;
    for dir in ["/var/tmp", "/dev/shm"] {
        if Path::new(dir).is_dir() {
            tmpfs(dir, "1777", MsFlags::empty())?;
        }
    }
    if Path::new("/dev/mqueue").is_dir() {
        mount_own("mqueue", "/dev/mqueue")?;
    }
    // A symlinked resolv.conf (systemd-resolved) points into the /run just hidden.
    let mut target = std::path::PathBuf::from(RESOLV_CONF);
    for _ in 0..8 {
        match std::fs::read_link(&target) {
            Ok(link) => target = Path::new("/etc").join(link),
            Err(_) => break,
        }
    }
    if !target.exists() {
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StageError::File {
                path: dir.into(),
                source,
            })?;
        }
        std::fs::write(&target, "").map_err(|source| StageError::File {
            path: target.clone(),
            source,
        })?;
    }
    let source = "/run/.allowdns-resolv.conf";
    let text = format!(
        "# allowdns run: the only resolver this kennel can reach\nnameserver {}\n",
        super::DNS.ip()
    );
    let file = |e| StageError::File {
        path: source.into(),
        source: e,
    };
    std::fs::write(source, text).map_err(file)?;
    mount(Some(source), RESOLV_CONF, none, MsFlags::MS_BIND, none)
        .map_err(StageError::sys(format!("cannot bind-mount {RESOLV_CONF}")))?;
    mount(
        none,
        RESOLV_CONF,
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
        none,
    )
    .map_err(StageError::sys(format!(
        "cannot make {RESOLV_CONF} read-only"
    )))?;
    // The bind keeps the file; its writable name goes.
    std::fs::remove_file(source).map_err(file)?;
    for (fd, target, read_only) in shared {
        bind(&fd, &target, read_only)?;
    }
    // Last, over any shared path: `run`'s directory (the policy it serves,
    // its control socket) out of CMD's sight wherever TMPDIR points. Mounts
    // a child user namespace inherits are locked: CMD cannot unmount it.
    if let Some(dir) = args.ctl.as_deref().and_then(Path::parent)
        && dir.is_dir()
    {
        tmpfs(
            &dir.to_string_lossy(),
            "000",
            MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC,
        )?;
    }
    Ok(())
}

/// The paths to share, each opened (`O_PATH`) as the kennel's user, so a
/// path it may not reach fails here, naming it.
fn open_shared(args: &StageArgs) -> Result<Vec<(OwnedFd, PathBuf, bool)>, StageError> {
    let ro = args.ro_bind.iter().map(|p| (p, true));
    let rw = args.bind.iter().map(|p| (p, false));
    ro.chain(rw)
        .map(|(path, read_only)| {
            let fd = open(
                path.as_path(),
                OFlag::O_PATH | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| StageError::Shared {
                path: path.clone(),
                source: e.into(),
            })?;
            Ok((fd, path.clone(), read_only))
        })
        .collect()
}

/// Binds the opened `fd` at `target` (creating the mount point in a private
/// tmpfs when needed), read-only if asked, keeping the flags the kernel locks.
fn bind(fd: &OwnedFd, target: &Path, read_only: bool) -> Result<(), StageError> {
    let failed = |e: std::io::Error| StageError::Shared {
        path: target.into(),
        source: e,
    };
    let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let is_dir = std::fs::metadata(&source).map_err(failed)?.is_dir();
    if !target.exists() {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(failed)?;
        }
        if is_dir {
            std::fs::create_dir(target).map_err(failed)?;
        } else {
            std::fs::write(target, "").map_err(failed)?;
        }
    }
    let none: Option<&str> = None;
    mount(Some(source.as_str()), target, none, MsFlags::MS_BIND, none)
        .map_err(|e| failed(e.into()))?;
    if read_only {
        let locked = statvfs(target).map_err(|e| failed(e.into()))?.flags();
        let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        for (st, ms) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if locked.contains(st) {
                flags |= ms;
            }
        }
        mount(none, target, none, flags, none).map_err(|e| failed(e.into()))?;
    }
    Ok(())
}

/// Reports a failure to `run` (when connected) and on stderr; CMD never runs.
fn fail(ctl: Option<&mut Ctl>, why: &str) -> i32 {
    let sent = ctl.is_some_and(|ctl| ctl.send(&format!("error {why}"), b"").is_ok());
    if !sent {
        eprintln!("allowdns run: {why}");
    }
    STAGE_FAILED
}

/// PID 1 of CMD's PID namespace: a fresh /proc, no capabilities, then CMD.
pub fn init(args: &StageArgs) -> i32 {
    // First, before init opens anything: only 0-2 (and what --preserve-fds names) reach CMD.
    if let Err(e) = super::fds::close_inherited(args.preserve_fds) {
        return fail(
            None,
            &format!("cannot close inherited file descriptors: {e}"),
        );
    }
    let _ = prctl::set_pdeathsig(Signal::SIGKILL);
    let mut signals = match signals::register(true) {
        Ok(s) => s,
        Err(e) => return fail(None, &format!("signals: {e}")),
    };
    if let Err(e) = confine() {
        return fail(None, &e.to_string());
    }
    // Inherited from the host, the working directory may lie under a mount
    // that now hides it: set it by path, as CMD sees the files.
    let wanted = args.cwd.as_deref().unwrap_or(Path::new("/"));
    if let Err(e) = nix::unistd::chdir(wanted) {
        eprintln!(
            "allowdns run: warning: CMD starts in /: {} is not reachable in the kennel ({e})",
            wanted.display()
        );
        if let Err(e) = nix::unistd::chdir("/") {
            return fail(None, &format!("cannot change to /: {e}"));
        }
    }
    let Some((program, rest)) = args.command.split_first() else {
        return fail(None, "no command given");
    };
    let path = args
        .path
        .clone()
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_default();
    let resolved = if program.contains('/') {
        Some(PathBuf::from(program))
    } else {
        super::view::find(program, Some(std::ffi::OsStr::new(&path)))
    };
    let Some(resolved) = resolved else {
        eprintln!("allowdns run: {program}: command not found in the kennel (PATH={path})");
        return 127;
    };
    let cmd = Command::new(&resolved)
        .arg0(program)
        .args(rest)
        .env("PATH", &path)
        .spawn();
    let cmd = match cmd {
        Ok(child) => Pid::from_raw(child.id() as i32),
        Err(e) => {
            eprintln!("allowdns run: cannot start {program}: {e}");
            return if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };
    // Returning ends the PID namespace: the kernel kills whatever CMD left behind.
    signals::forward_until_exit(&mut signals, cmd, true)
}

/// Mounts the kennel's own instance of the kernel filesystem `fstype` at
/// `target`: nothing on it runs, no device or set-uid file works.
fn mount_own(fstype: &str, target: &str) -> Result<(), StageError> {
    mount(
        Some(fstype),
        target,
        Some(fstype),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(StageError::sys(format!(
        "cannot mount the kennel's {target}"
    )))
}

fn confine() -> Result<(), StageError> {
    mount_own("proc", "/proc")?;
    use caps::CapSet;
    let clear = |set: CapSet, name: &'static str| {
        caps::clear(None, set).map_err(|source| StageError::Capabilities { set: name, source })
    };
    // The bounding set first: after it, no exec can bring a capability back.
    clear(CapSet::Bounding, "capability bounding set")?;
    clear(CapSet::Ambient, "ambient capabilities")?;
    clear(CapSet::Inheritable, "inheritable capabilities")?;
    prctl::set_no_new_privs().map_err(StageError::sys("no_new_privs"))?;
    clear(CapSet::Effective, "effective capabilities")?;
    clear(CapSet::Permitted, "permitted capabilities")?;
    // CMD shares init's uid: without this it could open /proc/1/cwd, /proc/1/fd.
    prctl::set_dumpable(false).map_err(StageError::sys("dumpable"))?;
    Ok(())
}

/// Execs the command with SIGKILL on the parent's death: pasta must never
/// outlive allowdns, or the kennel would keep a way out with nobody feeding the fence.
pub fn pdeathsig(args: &StageArgs) -> i32 {
    // Become the kennel's user first: a uid change clears the death signal,
    // so pasta must not make one itself (as it does with --runas when root).
    if let (Some(uid), Some(gid)) = (args.uid, args.gid)
        && Uid::effective().as_raw() != uid
    {
        let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
        let dropped = setgroups(&[])
            .and_then(|()| setresgid(g, g, g))
            .and_then(|()| setresuid(u, u, u));
        if let Err(e) = dropped {
            return fail(None, &format!("cannot become uid {uid}: {e}"));
        }
    }
    if let Err(e) = prctl::set_pdeathsig(Signal::SIGKILL) {
        return fail(None, &format!("pdeathsig: {e}"));
    }
    if args.ppid.is_some_and(|p| getppid().as_raw() != p) {
        return STAGE_FAILED;
    }
    let Some((program, rest)) = args.command.split_first() else {
        return fail(None, "no command given");
    };
    let e = Command::new(program).args(rest).exec();
    fail(None, &format!("cannot run {program}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_read_back_as_said_and_errors_name_the_line() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut run, mut holder) = (Ctl::new(a).unwrap(), Ctl::new(b).unwrap());
        for word in [Word::Unshared, Word::Mapped(3), Word::Fenced, Word::Go] {
            run.say(word, b"").unwrap();
            assert_eq!(holder.recv().unwrap(), word);
        }
        run.say(Word::Mapped(3), b"abc").unwrap();
        assert_eq!(holder.recv().unwrap(), Word::Mapped(3));
        assert_eq!(holder.recv_body(3).unwrap(), b"abc");
        run.say(Word::Go, b"").unwrap();
        let e = holder.expect(Word::Fenced).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unexpected 'go' on the kennel's control channel"
        );
        run.send("mapped lots", b"").unwrap();
        let e = holder.recv().unwrap_err();
        assert!(e.to_string().contains("'mapped lots'"), "{e}");
        fail(Some(&mut run), "nft: no such file");
        let e = holder.recv().unwrap_err();
        assert_eq!(e.to_string(), "nft: no such file");
        drop(run);
        assert!(matches!(holder.recv(), Err(HolderError::Ended)));
    }
}
