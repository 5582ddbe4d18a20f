//! Reload, grant, revoke and expiry interleaved, against a fence that
//! records what it is asked: no sockets, no nftables.

use super::*;
use crate::diagnostics::Diagnostics;
use crate::observe::audit::Sink;
use std::path::PathBuf;

/// Records the calls a change makes; `fail_sync` makes the firewall refuse.
#[derive(Default)]
struct Recorder {
    withdrawn: Mutex<Vec<(String, String)>>,
    /// The generation each withdrawal was told, in order.
    generations: Mutex<Vec<u64>>,
    syncs: Mutex<usize>,
    forgets: Mutex<usize>,
    fail_sync: std::sync::atomic::AtomicBool,
}

impl Recorder {
    /// What was withdrawn since the last call.
    fn take(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.withdrawn.lock().unwrap())
    }
}

impl Fence for Recorder {
    fn check(&self, _: &PolicySet) -> Result<(), FenceError> {
        Ok(())
    }
    fn sync_static(&self, _: &PolicySet) -> Result<(), FenceError> {
        *self.syncs.lock().unwrap() += 1;
        if self.fail_sync.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(FenceError::Install {
                target: crate::fence::TargetId {
                    family: crate::policy::firewall::Family::Inet,
                    table: "allowdns".into(),
                    netns: None,
                },
                source: std::io::Error::other("netlink says no"),
            });
        }
        Ok(())
    }
    fn withdraw(&self, ended: Ended<'_>) -> Result<usize, FenceError> {
        let mut withdrawn = self.withdrawn.lock().unwrap();
        withdrawn.push((ended.agent.into(), ended.pattern.into()));
        self.generations.lock().unwrap().push(ended.generation);
        Ok(1)
    }
    fn forget_ended(&self, _: &PolicySet) {
        *self.forgets.lock().unwrap() += 1;
    }
}

/// A temporary directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "allowdns-state-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    /// Writes the policy files and loads them as a reload would.
    fn load(&self, files: &[(&str, String)]) -> Loaded {
        for entry in std::fs::read_dir(&self.0).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                std::fs::remove_file(path).unwrap();
            }
        }
        let mut paths = Vec::new();
        for (name, text) in files {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            paths.push(path);
        }
        let mut diags = Diagnostics::default();
        let policies = crate::policy::load(&paths, &mut diags)
            .unwrap_or_else(|| panic!("policies do not load: {diags:?}"));
        assert!(!diags.has_errors(), "{diags:?}");
        Loaded {
            policies,
            zones: Zones::default(),
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn grant(agent: &str, pattern: &str, lasts: Duration) -> Grant {
    let now = SystemTime::now();
    Grant {
        agent: agent.into(),
        pattern: pattern.into(),
        reason: "test".into(),
        granted_at: now,
        expires: now + lasts,
        uid: Some(0),
        revoked_by: None,
    }
}

/// Whether the set in force has `agent` allowing `pattern`.
fn allows(state: &State, agent: &str, pattern: &str) -> bool {
    state
        .snapshot()
        .policies
        .by_agent(agent)
        .is_some_and(|p| p.rules.iter().any(|r| &*r.pattern == pattern && r.live()))
}

fn pair(agent: &str, pattern: &str) -> (String, String) {
    (agent.into(), pattern.into())
}

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn reload_grant_revoke_and_expiry_withdraw_what_ended() {
    let dir = Dir::new("interleaved");
    let log = dir.0.join("audit.log");
    let audit = AuditLog::start(Sink::open(Some(&log)).unwrap());
    let fence = Arc::new(Recorder::default());
    let policy_a = |temp_end: &str| {
        format!(
            "agent_name: a\nclients: [10.1.0.0/16]\nexpected_outbound:\n  - destination: keep.test\n  - destination: temp.test\n    expires: \"{temp_end}\"\n"
        )
    };
    let policy_b =
        "agent_name: b\nclients: [10.2.0.0/16]\nexpected_outbound:\n  - destination: b.test\n"
            .to_string();
    let policy_l = |mode: &str| {
        format!(
            "agent_name: l\nclients: [10.3.0.0/16]\nmode: {mode}\nexpected_outbound:\n  - destination: l.test\n"
        )
    };
    let state = State::new(
        dir.load(&[
            ("a.yaml", policy_a("2099-01-01T00:00:00Z")),
            ("b.yaml", policy_b.clone()),
            ("l.yaml", policy_l("learn")),
        ]),
        audit.clone(),
        Some(fence.clone() as Arc<dyn Fence>),
        Vec::new(),
    );
    assert_eq!(state.snapshot().generation, 0);
    assert!(allows(&state, "a", "temp.test"));

    // A grant puts the name in force at once and withdraws nothing.
    state
        .grant(grant("a", "g1.test", Duration::from_millis(400)))
        .unwrap();
    state.grant(grant("a", "g2.test", HOUR)).unwrap();
    state.grant(grant("b", "gb.test", HOUR)).unwrap();
    assert!(allows(&state, "a", "g1.test") && allows(&state, "b", "gb.test"));
    assert_eq!(fence.take(), vec![]);
    assert_eq!(state.snapshot().generation, 3);
    // No policy, no grant: nothing changes.
    let refused = state.grant(grant("nobody", "x.test", HOUR)).unwrap_err();
    assert_eq!(refused.to_string(), "no policy for agent 'nobody'");
    assert_eq!(state.snapshot().generation, 3);

    // A renewal that ends later keeps what was fed; one that ends sooner withdraws.
    state.grant(grant("a", "g2.test", 2 * HOUR)).unwrap();
    assert_eq!(fence.take(), vec![]);
    state.grant(grant("a", "g2.test", HOUR / 2)).unwrap();
    assert_eq!(fence.take(), vec![pair("a", "g2.test")]);

    // A revoke takes the rule out of force and withdraws its elements.
    let revoked = state.revoke("a", "g2.test", Some(1000)).unwrap();
    assert_eq!(revoked.revoked_by, Some(1000));
    assert!(!allows(&state, "a", "g2.test"));
    assert_eq!(fence.take(), vec![pair("a", "g2.test")]);
    let refused = state.revoke("a", "g2.test", Some(1000)).unwrap_err();
    assert_eq!(refused.to_string(), "agent 'a' has no grant for 'g2.test'");
    assert_eq!(fence.take(), vec![]);

    // A reload the firewall cannot follow changes nothing.
    let before = state.snapshot().generation;
    fence
        .fail_sync
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let syncs = *fence.syncs.lock().unwrap();
    let refused = state.replace(dir.load(&[("a.yaml", policy_a("2098-01-01T00:00:00Z"))]));
    let refused = refused.unwrap_err().to_string();
    assert!(refused.ends_with(": netlink says no"), "{refused}");
    // Tried, then rolled back to the set in force.
    assert_eq!(*fence.syncs.lock().unwrap(), syncs + 2);
    assert_eq!(state.snapshot().generation, before);
    assert!(allows(&state, "b", "gb.test"));
    assert_eq!(fence.take(), vec![]);
    assert_eq!(state.grants().len(), 2);
    fence
        .fail_sync
        .store(false, std::sync::atomic::Ordering::Relaxed);

    // A reload that ends an entry sooner, removes agent b (and its
    // grant) and switches l to enforce withdraws exactly those rules.
    let learn = state
        .snapshot()
        .policies
        .by_agent("l")
        .unwrap()
        .learn
        .clone()
        .unwrap();
    state
        .replace(dir.load(&[
            ("a.yaml", policy_a("2098-01-01T00:00:00Z")),
            ("l.yaml", policy_l("enforce")),
        ]))
        .unwrap();
    let mut withdrawn = fence.take();
    withdrawn.sort();
    assert_eq!(
        withdrawn,
        vec![
            pair("a", "temp.test"),
            pair("b", "gb.test"),
            pair("l", &learn.pattern),
        ]
    );
    assert!(state.snapshot().policies.by_agent("b").is_none());
    let left: Vec<_> = state
        .grants()
        .iter()
        .map(|g| g.pattern.to_string())
        .collect();
    assert_eq!(left, ["g1.test"]);
    // The same files again: nothing ended sooner, nothing withdrawn.
    state
        .replace(dir.load(&[
            ("a.yaml", policy_a("2098-01-01T00:00:00Z")),
            ("l.yaml", policy_l("enforce")),
        ]))
        .unwrap();
    assert_eq!(fence.take(), vec![]);

    // Expiry: the grant ends by itself. Its elements age out on their
    // kernel timeouts, so nothing is withdrawn; the fence forgets the rule.
    let next = state.next_expiry().expect("g1 expires");
    std::thread::sleep(next.duration_since(SystemTime::now()).unwrap_or_default());
    assert!(
        state
            .next_expiry()
            .is_some_and(|at| at <= SystemTime::now())
    );
    let forgets = *fence.forgets.lock().unwrap();
    state.refresh();
    assert!(!allows(&state, "a", "g1.test"));
    assert!(state.grants().is_empty());
    assert_eq!(fence.take(), vec![]);
    assert_eq!(*fence.forgets.lock().unwrap(), forgets + 1);
    // Only the file entry is left to expire.
    let temp_end = crate::policy::parse_rfc3339("2098-01-01T00:00:00Z").unwrap();
    assert_eq!(state.next_expiry(), Some(temp_end));

    // Every change left its audit line, in order.
    audit.close();
    let events: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!(
                "{} {}",
                v["event"].as_str().unwrap(),
                v["pattern"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            "grant g1.test",
            "grant g2.test",
            "grant gb.test",
            "grant g2.test",
            "grant g2.test",
            "grant_revoked g2.test",
            "grant_dropped gb.test",
            "grant_expired g1.test",
        ]
    );
}

/// A withdrawal tells the fence the generation of the set that ended
/// the rule: answers decided against an older set feed nothing under it,
/// answers from that set on do (see fence::target's tests).
#[test]
fn withdrawals_carry_the_generation_that_ended_the_rule() {
    let dir = Dir::new("generations");
    let audit = AuditLog::start(Sink::open(Some(&dir.0.join("audit.log"))).unwrap());
    let fence = Arc::new(Recorder::default());
    let policy = |end: &str| {
        format!(
            "agent_name: a\nexpected_outbound:\n  - destination: keep.test\n  - destination: temp.test\n    expires: \"{end}\"\n"
        )
    };
    let state = State::new(
        dir.load(&[("a.yaml", policy("2099-01-01T00:00:00Z"))]),
        audit.clone(),
        Some(fence.clone() as Arc<dyn Fence>),
        Vec::new(),
    );
    let told = || std::mem::take(&mut *fence.generations.lock().unwrap());
    state.grant(grant("a", "g.test", HOUR)).unwrap(); // 1
    state.grant(grant("a", "g.test", HOUR / 2)).unwrap(); // 2, shortened
    assert_eq!(told(), [2]);
    state.revoke("a", "g.test", None).unwrap(); // 3
    assert_eq!(told(), [3]);
    state.grant(grant("a", "g.test", HOUR)).unwrap(); // 4, granted again
    assert_eq!(told(), [] as [u64; 0]);
    // A reload that keeps every rule withdraws nothing.
    state
        .replace(dir.load(&[("a.yaml", policy("2099-01-01T00:00:00Z"))]))
        .unwrap(); // 5
    assert_eq!(told(), [] as [u64; 0]);
    state
        .replace(dir.load(&[("a.yaml", policy("2098-01-01T00:00:00Z"))]))
        .unwrap(); // 6, temp.test ends sooner
    assert_eq!(
        fence.take(),
        [
            pair("a", "g.test"),
            pair("a", "g.test"),
            pair("a", "temp.test")
        ]
    );
    assert_eq!(told(), [6]);
    assert_eq!(state.snapshot().generation, 6);
    audit.close();
}

#[test]
fn without_a_fence_changes_still_take_effect() {
    let dir = Dir::new("unfenced");
    let audit = AuditLog::start(Sink::open(Some(&dir.0.join("audit.log"))).unwrap());
    let policy = "agent_name: a\nexpected_outbound:\n  - destination: keep.test\n";
    let state = State::new(
        dir.load(&[("a.yaml", policy.into())]),
        audit.clone(),
        None,
        Vec::new(),
    );
    state.grant(grant("a", "g.test", HOUR)).unwrap();
    assert!(allows(&state, "a", "g.test"));
    state.revoke("a", "g.test", None).unwrap();
    assert!(!allows(&state, "a", "g.test"));
    state
        .replace(dir.load(&[("a.yaml", policy.into())]))
        .unwrap();
    assert_eq!(state.snapshot().generation, 3);
    audit.close();
}
