//! The session logic over event sequences, in every order the kernel and Falco can give
//! them: the thread table is a map that behaves as Falco's (libsinsp makes the child's
//! entry at whichever clone exit comes first, and removes an exited thread's).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;
use std::collections::HashMap;
use whoexec::event::{Clone, Exec, PPM_CL_CLONE_THREAD};
use whoexec::session::{
    Config, ContainerMeta, Existing, Status, Tag, ThreadInfo, ThreadTable, ThreadView, Tracker,
};
use whoexec::token::{key_id, KeyRing};

const SEC: u64 = 1_000_000_000;
const IAT: i64 = 1_796_314_360;
const T0: u64 = IAT as u64 * SEC + 400_000_000; // the root's execve, 0.4 s after admission
const APP: &str = "7dafe0d0b51c";
const OTHER: &str = "15dd793366a8";

fn key() -> SigningKey {
    SigningKey::from_bytes(&[9u8; 32])
}

fn mint_with(key: &SigningKey, sid: &str, user: &str, pod: &str, iat: i64) -> String {
    let payload = format!(
        r#"{{"sid":"{sid}","user":"{user}","uid":"u-{user}","groups":["devs","system:authenticated"],"ns":"shop","pod":"{pod}","container":"app","iat":{iat},"pod_uid":"uid-{pod}"}}"#
    );
    let kid = key_id(&key.verifying_key());
    let signed = format!("v1.{kid}.{}", URL_SAFE_NO_PAD.encode(payload));
    let sig = key.sign(signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

fn mint(sid: &str, user: &str) -> String {
    mint_with(&key(), sid, user, "web", IAT)
}

fn meta(pod: &str, container: Option<&str>) -> ContainerMeta {
    ContainerMeta {
        namespace: Some("shop".into()),
        pod: Some(pod.into()),
        pod_uid: Some(format!("uid-{pod}")),
        container: container.map(str::to_owned),
    }
}

/// Falco's `threads` table as far as the plugin sees it.
#[derive(Default)]
struct Table {
    threads: HashMap<i64, ThreadInfo>,
}

impl ThreadView for Table {
    fn thread(&self, tid: i64) -> Option<ThreadInfo> {
        self.threads.get(&tid).cloned()
    }
}

impl ThreadTable for Table {
    fn set_tag(&mut self, tid: i64, tag: Tag) -> bool {
        match self.threads.get_mut(&tid) {
            Some(t) => {
                t.tag = tag;
                true
            }
            None => false,
        }
    }
}

struct Sim {
    table: Table,
    tracker: Tracker,
    ts: u64,
}

#[derive(Clone, Copy, Debug)]
enum Order {
    ParentFirst,
    ChildFirst,
}

impl Sim {
    fn new() -> Self {
        Self::with(Config::default())
    }

    fn with(config: Config) -> Self {
        let mut sim = Self {
            table: Table::default(),
            tracker: Tracker::new(config, KeyRing::new([key().verifying_key()])),
            ts: T0 - SEC,
        };
        sim.tracker
            .container_added(APP.into(), meta("web", Some("app")));
        // the container runtime on the host
        sim.spawn_host(1154);
        sim
    }

    fn tick(&mut self) -> u64 {
        self.ts += 1_000_000;
        self.ts
    }

    fn spawn_host(&mut self, tid: i64) {
        self.table.threads.insert(
            tid,
            ThreadInfo {
                pid: tid,
                ptid: 1,
                tag: 0,
                container_id: String::new(),
            },
        );
    }

    /// `parent` forks `child` (a process) or starts it as a thread; `container` is the
    /// child's (runc moves the child of the runtime into the container's cgroup).
    fn clone_into(&mut self, parent: i64, child: i64, thread: bool, container: &str, order: Order) {
        self.tick();
        let p = self.table.threads[&parent].clone();
        let info = ThreadInfo {
            pid: if thread { p.pid } else { child },
            ptid: parent,
            tag: 0,
            container_id: container.to_owned(),
        };
        let flags = if thread { PPM_CL_CLONE_THREAD } else { 0 };
        let parent_exit = Clone {
            res: child,
            tid: parent,
            pid: p.pid,
            ptid: p.ptid,
            flags,
        };
        let child_exit = Clone {
            res: 0,
            tid: child,
            pid: info.pid,
            ptid: parent,
            flags,
        };
        // libsinsp makes a fresh entry for the child at the first of the two exits (a reused
        // tid gets a new entry), then the plugins parse that exit
        self.table.threads.insert(child, info);
        match order {
            Order::ParentFirst => {
                self.tracker.on_clone(&mut self.table, parent, &parent_exit);
                self.tracker.on_clone(&mut self.table, child, &child_exit);
            }
            Order::ChildFirst => {
                self.tracker.on_clone(&mut self.table, child, &child_exit);
                self.tracker.on_clone(&mut self.table, parent, &parent_exit);
            }
        }
    }

    fn fork(&mut self, parent: i64, child: i64) {
        let container = self.table.threads[&parent].container_id.clone();
        self.clone_into(parent, child, false, &container, Order::ParentFirst);
    }

    fn exec_env(&mut self, tid: i64, exe: &str, args: &[&str], env: &[&str], env_cut: bool) {
        let ts = self.tick();
        let ptid = self.table.threads[&tid].ptid;
        let ev = Exec {
            res: 0,
            exe: exe.as_bytes(),
            args: args.iter().map(|a| a.as_bytes()).collect(),
            pid: tid,
            ptid,
            env: env.iter().map(|e| e.as_bytes()).collect(),
            env_cut,
        };
        self.tracker.on_exec(&mut self.table, tid, ts, &ev, || None);
    }

    fn exec(&mut self, tid: i64, exe: &str, args: &[&str]) {
        // a session's processes inherit the variable that env set
        let env: Vec<String> = self.env_of(tid);
        let env: Vec<&str> = env.iter().map(String::as_str).collect();
        self.exec_env(tid, exe, args, &env, false);
    }

    fn env_of(&self, _tid: i64) -> Vec<String> {
        vec!["PATH=/usr/bin".into()]
    }

    /// The webhook's rewrite: `env WHOEXEC_IDENTITY=<token> sh`, then env execs sh.
    fn root(&mut self, tid: i64, token: &str) {
        self.clone_into(1154, tid, false, APP, Order::ParentFirst);
        // just after the token was issued, and never back in time
        self.ts = self.ts.max(T0 - 1_000_000);
        let arg = format!("WHOEXEC_IDENTITY={token}");
        self.exec_env(
            tid,
            "/usr/bin/env",
            &[&arg, "sh"],
            &["PATH=/usr/bin"],
            false,
        );
        let var = format!("WHOEXEC_IDENTITY={token}");
        self.exec_env(tid, "sh", &[], &["PATH=/usr/bin", &var], false);
    }

    fn exit(&mut self, tid: i64) {
        self.tick();
        self.tracker.on_exit(&self.table, tid);
        self.table.threads.remove(&tid);
    }

    fn status(&self, tid: i64) -> Status {
        self.tracker
            .attribution(&self.table, tid)
            .map(|a| a.status)
            .unwrap_or(Status::None)
    }

    fn user(&self, tid: i64) -> Option<String> {
        self.tracker
            .attribution(&self.table, tid)?
            .identity
            .map(|i| i.user.clone())
    }

    fn claimed(&self, tid: i64) -> Option<String> {
        self.tracker
            .attribution(&self.table, tid)?
            .claimed
            .map(|i| i.user.clone())
    }

    fn reason(&self, tid: i64) -> String {
        self.tracker
            .attribution(&self.table, tid)
            .map(|a| a.reason)
            .unwrap_or_default()
    }
}

#[test]
fn alices_shell_and_its_grandchild_are_verified_as_alice() {
    let mut sim = Sim::new();
    sim.root(1165, &mint("s1", "alice"));
    sim.fork(1165, 1172);
    sim.exec(1172, "bash", &["-c", "cat /etc/shadow"]);
    sim.fork(1172, 1173);
    sim.exec(1173, "cat", &["/etc/shadow"]);
    for tid in [1165, 1172, 1173] {
        assert_eq!(sim.status(tid), Status::Verified, "pid {tid}");
        assert_eq!(sim.user(tid).as_deref(), Some("alice"));
    }
    let a = sim.tracker.attribution(&sim.table, 1173).unwrap();
    assert_eq!(
        a.identity.unwrap().groups,
        vec!["devs", "system:authenticated"]
    );
    assert!(a.token.is_some(), "the root's token is passed along");
    assert_eq!(a.reason, "", "a fully bound session says nothing more");
}

#[test]
fn a_child_inherits_whichever_clone_exit_comes_first() {
    for order in [Order::ParentFirst, Order::ChildFirst] {
        let mut sim = Sim::new();
        sim.root(1165, &mint("s1", "alice"));
        sim.clone_into(1165, 1172, false, APP, order);
        assert_eq!(sim.status(1172), Status::Verified, "{order:?}");
        assert_eq!(sim.tracker.sessions(), 1);
    }
}

#[test]
fn a_process_forked_before_the_root_exec_stays_outside_the_session() {
    let mut sim = Sim::new();
    sim.clone_into(1154, 1165, false, APP, Order::ParentFirst);
    sim.fork(1165, 1166); // runc init's own child, before it execs env
    let token = mint("s1", "alice");
    let arg = format!("WHOEXEC_IDENTITY={token}");
    sim.ts = T0;
    sim.exec_env(1165, "/usr/bin/env", &[&arg, "sh"], &[], false);
    assert_eq!(sim.status(1165), Status::Verified);
    assert_eq!(sim.status(1166), Status::None);
}

#[test]
fn a_thread_of_the_session_is_verified_and_one_whose_clone_was_missed_follows_its_leader() {
    let mut sim = Sim::new();
    sim.root(1253, &mint("s3", "alice"));
    sim.clone_into(1253, 1259, true, APP, Order::ChildFirst);
    assert_eq!(sim.status(1259), Status::Verified);
    // a thread libsinsp found in /proc, whose clone the plugin never parsed
    sim.table.threads.insert(
        1260,
        ThreadInfo {
            pid: 1253,
            ptid: 1154,
            tag: 0,
            container_id: APP.into(),
        },
    );
    assert_eq!(sim.status(1260), Status::Verified);
}

#[test]
fn a_reused_pid_is_not_in_the_old_session() {
    let mut sim = Sim::new();
    sim.root(1165, &mint("s1", "alice"));
    sim.fork(1165, 1172);
    sim.exit(1172);
    // the tid comes back as a host process
    sim.spawn_host(1200);
    sim.clone_into(1200, 1172, false, "", Order::ChildFirst);
    sim.exec(1172, "sshd", &[]);
    assert_eq!(sim.status(1172), Status::None);
}

#[test]
fn a_reused_pid_whose_exit_and_clone_were_dropped_loses_the_stale_tag_at_its_execve() {
    let mut sim = Sim::new();
    sim.root(1165, &mint("s1", "alice"));
    sim.fork(1165, 1172);
    // events dropped: the entry stays, now a process of another container
    let entry = sim.table.threads.get_mut(&1172).unwrap();
    entry.container_id = OTHER.into();
    assert_eq!(
        sim.status(1172),
        Status::None,
        "extraction already refuses it"
    );
    sim.exec(1172, "nginx", &[]);
    assert_eq!(sim.table.threads[&1172].tag, 0);
    assert_eq!(sim.tracker.metrics.stale_tags_dropped, 1);
}

#[test]
fn a_session_s_record_goes_with_its_last_process_and_its_claim_stays() {
    let mut sim = Sim::new();
    let token = mint("s1", "alice");
    sim.root(1165, &token);
    sim.fork(1165, 1172);
    sim.exit(1172);
    sim.exit(1165);
    sim.tick();
    sim.tracker.flush();
    assert_eq!(sim.tracker.sessions(), 0);
    assert_eq!(sim.tracker.claims(), 1);
    // the same token replayed by a new exec (within the window) is a reuse
    sim.root(1300, &token);
    assert_eq!(sim.status(1300), Status::Replayed);
    assert!(
        sim.reason(1300).starts_with("reused"),
        "{}",
        sim.reason(1300)
    );
    let replay = sim.tracker.attribution(&sim.table, 1300).unwrap();
    assert_eq!(
        replay.root.map(|(pid, _)| pid),
        Some(1300),
        "the replay is its own root"
    );
    assert_eq!(sim.claimed(1300).as_deref(), Some("alice"));
    assert_eq!(sim.user(1300), None);
}

#[test]
fn a_reused_tid_replaying_the_token_within_the_window_is_a_replay_not_the_first_root() {
    // found by the history proptest: the claim compared the tid alone, so once the root had
    // exited, a process the kernel gave the same tid could replay the token as `verified`
    let mut sim = Sim::new();
    let token = mint("s1", "alice");
    sim.root(1165, &token);
    assert_eq!(sim.status(1165), Status::Verified);
    sim.exit(1165);
    sim.root(1165, &token);
    assert_eq!(sim.status(1165), Status::Replayed);
    assert!(
        sim.reason(1165).starts_with("reused"),
        "{}",
        sim.reason(1165)
    );
    assert_eq!(sim.user(1165), None);
}

#[test]
fn a_token_replayed_a_minute_later_is_stale() {
    let mut sim = Sim::new();
    let token = mint_with(&key(), "s9", "alice", "web", IAT - 60);
    sim.root(1165, &token);
    assert_eq!(sim.status(1165), Status::Replayed);
    assert!(
        sim.reason(1165).starts_with("stale"),
        "{}",
        sim.reason(1165)
    );
}

#[test]
fn a_token_brought_below_a_process_of_its_own_container_is_a_replay() {
    let mut sim = Sim::new();
    sim.clone_into(1154, 1000, false, APP, Order::ParentFirst);
    sim.exec(1000, "nginx", &[]); // the pod's own process, in no session
    sim.fork(1000, 1001);
    let arg = format!("WHOEXEC_IDENTITY={}", mint("s1", "alice"));
    sim.ts = T0;
    sim.exec_env(1001, "/usr/bin/env", &[&arg, "sh"], &[], false);
    assert_eq!(sim.status(1001), Status::Replayed);
    assert!(sim.reason(1001).starts_with("not a session root"));
}

#[test]
fn a_token_for_another_pod_is_a_replay_and_names_nobody() {
    let mut sim = Sim::new();
    sim.root(1165, &mint_with(&key(), "s1", "alice", "payments-0", IAT));
    assert_eq!(sim.status(1165), Status::Replayed);
    assert!(
        sim.reason(1165).starts_with("bound elsewhere"),
        "{}",
        sim.reason(1165)
    );
    assert_eq!(sim.user(1165), None);
    assert_eq!(sim.claimed(1165).as_deref(), Some("alice"));
}

#[test]
fn without_kubernetes_metadata_nobody_is_named_until_it_arrives() {
    let mut sim = Sim::new();
    sim.tracker.container_removed(APP);
    sim.root(1165, &mint("s1", "alice"));
    assert_eq!(sim.status(1165), Status::Unverified);
    assert!(sim.reason(1165).starts_with("binding unknown"));
    assert_eq!(sim.claimed(1165).as_deref(), Some("alice"));
    sim.tracker
        .container_added(APP.into(), meta("web", Some("app")));
    assert_eq!(sim.status(1165), Status::Verified);
}

#[test]
fn a_container_named_by_its_id_is_unknown_not_a_mismatch_and_says_so() {
    let json = format!(
        r#"{{"container":{{"id":"{APP}","name":"{APP}","labels":{{"io.kubernetes.pod.namespace":"shop","io.kubernetes.pod.name":"web","io.kubernetes.pod.uid":"uid-web"}}}}}}"#
    );
    let (id, meta) = whoexec::session::container_from_json(json.as_bytes()).unwrap();
    assert_eq!(meta.container, None);
    let mut sim = Sim::new();
    sim.tracker.container_added(id, meta);
    sim.root(1165, &mint("s1", "alice"));
    assert_eq!(sim.status(1165), Status::Verified);
    assert_eq!(
        sim.reason(1165),
        "bound by namespace and pod; not checked: container"
    );
}

#[test]
fn the_kubernetes_container_name_label_wins_over_a_container_name_that_is_an_id() {
    let json = format!(
        r#"{{"container":{{"id":"{APP}","name":"{APP}","labels":{{"io.kubernetes.container.name":"app","io.kubernetes.pod.namespace":"shop","io.kubernetes.pod.name":"web"}}}}}}"#
    );
    let (_, meta) = whoexec::session::container_from_json(json.as_bytes()).unwrap();
    assert_eq!(meta.container.as_deref(), Some("app"));
}

#[test]
fn another_token_brought_inside_a_session_is_tampering_with_the_owner_kept() {
    let mut sim = Sim::new();
    sim.root(1165, &mint("s1", "alice"));
    sim.fork(1165, 1172);
    let bob = format!("WHOEXEC_IDENTITY={}", mint("s2", "bob"));
    sim.exec_env(1172, "/usr/bin/env", &[&bob, "sh"], &[], false);
    sim.fork(1172, 1173);
    sim.exec(1173, "cat", &["/etc/shadow"]);
    for tid in [1172, 1173] {
        assert_eq!(sim.status(tid), Status::Tampered, "pid {tid}");
        assert_eq!(sim.user(tid).as_deref(), Some("alice"));
        assert_eq!(sim.claimed(tid).as_deref(), Some("bob"));
    }
    assert_eq!(
        sim.status(1165),
        Status::Verified,
        "the root itself is untouched"
    );
}

#[test]
fn a_variable_shadowed_by_export_is_tampering_even_when_it_is_no_token() {
    let mut sim = Sim::new();
    sim.root(1165, &mint("s1", "alice"));
    sim.fork(1165, 1172);
    sim.exec_env(
        1172,
        "cat",
        &["/etc/shadow"],
        &["WHOEXEC_IDENTITY=nobody-at-all"],
        false,
    );
    assert_eq!(sim.status(1172), Status::Tampered);
    assert_eq!(sim.user(1172).as_deref(), Some("alice"));
    assert_eq!(sim.claimed(1172), None);
}

#[test]
fn the_root_s_own_variable_in_a_cut_environment_is_no_tampering() {
    let mut sim = Sim::new();
    sim.root(1291, &mint("s4", "alice"));
    sim.fork(1291, 1292);
    // pod "big": the environment is over 4 KiB and the variable (appended last) is cut off
    sim.exec_env(1292, "cat", &["/etc/shadow"], &["A=1"], true);
    assert_eq!(sim.status(1292), Status::Verified);
}

#[test]
fn a_debug_container_entry_whose_environment_carries_the_token_is_a_root() {
    let mut sim = Sim::new();
    sim.tracker
        .container_added(OTHER.into(), meta("web", Some("debugger")));
    let token = mint_with(&key(), "s5", "alice", "web", IAT);
    // a token minted for the ephemeral container "debugger"
    let payload = r#"{"sid":"s5","user":"alice","uid":"u","groups":[],"ns":"shop","pod":"web","container":"debugger","iat":1796314360}"#;
    let kid = key_id(&key().verifying_key());
    let signed = format!("v1.{kid}.{}", URL_SAFE_NO_PAD.encode(payload));
    let debug_token = format!(
        "{signed}.{}",
        URL_SAFE_NO_PAD.encode(key().sign(signed.as_bytes()).to_bytes())
    );
    assert_ne!(token, debug_token);
    sim.clone_into(1154, 1400, false, OTHER, Order::ParentFirst);
    let var = format!("WHOEXEC_IDENTITY={debug_token}");
    sim.ts = T0;
    sim.exec_env(1400, "sh", &[], &["PATH=/bin", &var], false);
    assert_eq!(sim.status(1400), Status::Verified);
    assert_eq!(sim.user(1400).as_deref(), Some("alice"));
}

#[test]
fn a_token_in_the_environment_below_no_known_session_names_nobody() {
    let mut sim = Sim::new();
    sim.clone_into(1154, 1000, false, APP, Order::ParentFirst);
    sim.exec(1000, "nginx", &[]);
    sim.fork(1000, 1001);
    let var = format!("WHOEXEC_IDENTITY={}", mint("s1", "alice"));
    sim.exec_env(1001, "cat", &["/etc/shadow"], &[&var], false);
    assert_eq!(sim.status(1001), Status::Unverified);
    assert_eq!(sim.claimed(1001).as_deref(), Some("alice"));
    assert_eq!(sim.user(1001), None);
}

#[test]
fn a_forged_or_future_token_is_unverified_with_no_claim() {
    let mut sim = Sim::new();
    let other_key = SigningKey::from_bytes(&[1u8; 32]);
    sim.root(1165, &mint_with(&other_key, "s1", "alice", "web", IAT));
    assert_eq!(sim.status(1165), Status::Unverified);
    assert!(
        sim.reason(1165).starts_with("UnknownKeyId"),
        "{}",
        sim.reason(1165)
    );
    assert_eq!(sim.claimed(1165), None);
    sim.root(1166, &mint_with(&key(), "s2", "alice", "web", IAT + 3600));
    assert_eq!(sim.status(1166), Status::Unverified);
    assert!(sim.reason(1166).starts_with("TokenFromFuture"));
    sim.root(1167, "v1.garbage");
    assert_eq!(sim.status(1167), Status::Unverified);
}

#[test]
fn an_execve_that_failed_starts_nothing() {
    let mut sim = Sim::new();
    sim.clone_into(1154, 1165, false, APP, Order::ParentFirst);
    let arg = format!("WHOEXEC_IDENTITY={}", mint("s1", "alice"));
    let ev = Exec {
        res: -2,
        exe: b"/usr/bin/env",
        args: vec![arg.as_bytes(), b"sh"],
        pid: 1165,
        ptid: 1154,
        env: vec![],
        env_cut: false,
    };
    sim.tracker.on_exec(&mut sim.table, 1165, T0, &ev, || None);
    assert_eq!(sim.status(1165), Status::None);
    assert_eq!(sim.tracker.claims(), 0, "a failed exec claims nothing");
}

#[test]
fn a_session_open_when_falco_started_is_found_in_the_thread_table() {
    let mut sim = Sim::new();
    let token = mint("s1", "alice");
    for (tid, ptid) in [(1165, 1154), (1172, 1165)] {
        sim.table.threads.insert(
            tid,
            ThreadInfo {
                pid: tid,
                ptid,
                tag: 0,
                container_id: APP.into(),
            },
        );
    }
    let existing = |tid: i64, ptid: i64, start: Option<u64>| Existing {
        tid,
        pid: tid,
        ptid,
        container_id: APP.into(),
        token: Some(token.clone()),
        start_ns: start,
    };
    let scan = vec![
        existing(1172, 1165, Some(T0 + 5 * SEC)),
        existing(1165, 1154, Some(T0)),
    ];
    sim.tracker.on_existing(&mut sim.table, &scan);
    assert_eq!(sim.status(1165), Status::Verified);
    assert_eq!(sim.status(1172), Status::Verified);
    assert_eq!(sim.tracker.sessions(), 1);
}

#[test]
fn a_session_open_when_falco_started_without_a_start_time_names_nobody() {
    let mut sim = Sim::new();
    sim.table.threads.insert(
        1165,
        ThreadInfo {
            pid: 1165,
            ptid: 1154,
            tag: 0,
            container_id: APP.into(),
        },
    );
    let scan = vec![Existing {
        tid: 1165,
        pid: 1165,
        ptid: 1154,
        container_id: APP.into(),
        token: Some(mint("s1", "alice")),
        start_ns: None,
    }];
    sim.tracker.on_existing(&mut sim.table, &scan);
    assert_eq!(sim.status(1165), Status::Unverified);
    assert_eq!(sim.claimed(1165).as_deref(), Some("alice"));
}

#[test]
fn a_flood_of_forged_tokens_never_evicts_a_genuine_session() {
    let mut sim = Sim::with(Config {
        max_sessions: 8,
        ..Config::default()
    });
    sim.root(1165, &mint("s1", "alice"));
    sim.clone_into(1154, 2000, false, APP, Order::ParentFirst);
    for n in 0..100 {
        // each one a long-lived process holding a different garbage token
        sim.fork(2000, 3000 + n);
        let arg = format!("WHOEXEC_IDENTITY=v1.{n:016x}.e30.e30");
        sim.exec_env(3000 + n, "/usr/bin/env", &[&arg, "sleep"], &[], false);
    }
    assert!(sim.tracker.sessions() <= 8);
    assert!(sim.tracker.metrics.sessions_evicted >= 90);
    assert_eq!(sim.status(1165), Status::Verified);
}

#[test]
fn a_thread_unknown_to_falco_has_no_fields() {
    let sim = Sim::new();
    assert!(sim.tracker.attribution(&sim.table, 99_999).is_none());
}

/// One step of a random history on a few tids.
#[derive(Clone, Debug)]
enum Step {
    Fork {
        parent: usize,
        child: usize,
        thread: bool,
        child_first: bool,
    },
    Exec {
        tid: usize,
        token: u8,
    },
    Exit {
        tid: usize,
    },
    Scan,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..8usize, 0..8usize, any::<bool>(), any::<bool>()).prop_map(
            |(parent, child, thread, child_first)| Step::Fork {
                parent,
                child,
                thread,
                child_first
            }
        ),
        (0..8usize, 0..5u8).prop_map(|(tid, token)| Step::Exec { tid, token }),
        (0..8usize).prop_map(|tid| Step::Exit { tid }),
        Just(Step::Scan),
    ]
}

proptest! {
    /// Whatever the order of forks, threads, execs and exits: nothing panics, the tables
    /// stay within their caps, and a thread is verified only below the genuine root (the
    /// first use of a genuine token) of the user it names.
    #[test]
    fn any_history_keeps_the_tables_bounded_and_verifies_only_below_a_genuine_root(
        steps in proptest::collection::vec(step(), 1..60)
    ) {
        let tids: Vec<i64> = (0..8).map(|n| 1500 + n).collect();
        let genuine = mint("s1", "alice");
        let bob = mint("s2", "bob");
        let tokens = [
            Some(genuine.clone()),
            Some(bob.clone()),
            Some("v1.0000000000000000.e30.e30".to_string()),
            None,
            Some(genuine.clone()),
        ];
        let mut sim = Sim::with(Config { max_sessions: 4, max_claims: 4, ..Config::default() });
        // ground truth: whose genuine root (first use of its token) each thread descends from
        let mut truth: HashMap<i64, Option<&str>> = HashMap::new();
        let mut rooted: Vec<String> = Vec::new();
        // threads in any session at all, believed or not: a later token below them starts none
        let mut in_session: HashMap<i64, bool> = HashMap::new();
        for tid in &tids {
            sim.clone_into(1154, *tid, false, APP, Order::ParentFirst);
            truth.insert(*tid, None);
        }
        for s in steps {
            match s {
                Step::Fork { parent, child, thread, child_first } => {
                    let (p, c) = (tids[parent], tids[child]);
                    // the kernel reuses a tid only once no thread has it as its tid or tgid
                    let in_use = sim.table.threads.iter().any(|(tid, i)| *tid == c || i.pid == c);
                    if in_use || !sim.table.threads.contains_key(&p) { continue; }
                    let order = if child_first { Order::ChildFirst } else { Order::ParentFirst };
                    sim.clone_into(p, c, thread, APP, order);
                    let t = truth.get(&p).copied().flatten();
                    truth.insert(c, t);
                    let inside = in_session.get(&p).copied().unwrap_or(false);
                    in_session.insert(c, inside);
                }
                Step::Exec { tid, token } => {
                    let t = tids[tid];
                    // a thread other than the leader that execs becomes the leader: leave that out
                    if sim.table.threads.get(&t).is_none_or(|i| i.pid != t) { continue; }
                    // execve ends every other thread of the process
                    let siblings: Vec<i64> = sim.table.threads.iter()
                        .filter(|(tid, i)| i.pid == t && **tid != t).map(|(tid, _)| *tid).collect();
                    for s in siblings {
                        sim.exit(s);
                        truth.insert(s, None);
                    }
                    match &tokens[token as usize] {
                        Some(tok) => {
                            let arg = format!("WHOEXEC_IDENTITY={tok}");
                            // fresh, and time still only moves forward
                            sim.ts = sim.ts.max(T0);
                            let parent_in_app = sim.table.threads.get(&sim.table.threads[&t].ptid)
                                .is_some_and(|p| p.container_id == APP);
                            sim.exec_env(t, "/usr/bin/env", &[&arg, "sh"], &[], false);
                            let user = if *tok == genuine { Some("alice") } else if *tok == bob { Some("bob") } else { None };
                            let inside = in_session.get(&t).copied().unwrap_or(false);
                            if user.is_some() && !parent_in_app && !rooted.contains(tok) && !inside {
                                rooted.push(tok.clone());
                                truth.insert(t, user);
                            }
                            in_session.insert(t, true);
                        }
                        None => sim.exec(t, "cat", &["/etc/shadow"]),
                    }
                }
                Step::Exit { tid } => {
                    let t = tids[tid];
                    if sim.table.threads.contains_key(&t) {
                        sim.exit(t);
                        truth.insert(t, None);
                        in_session.insert(t, false);
                    }
                }
                Step::Scan => {
                    let scan: Vec<Existing> = vec![];
                    sim.tracker.on_existing(&mut sim.table, &scan);
                }
            }
            prop_assert!(sim.tracker.sessions() <= 4);
            prop_assert!(sim.tracker.claims() <= 4);
            for t in &tids {
                if sim.status(*t) == Status::Verified {
                    let user = sim.user(*t);
                    let expected = truth.get(t).copied().flatten();
                    prop_assert!(expected.is_some(), "pid {} verified without a genuine root above it", t);
                    prop_assert_eq!(user.as_deref(), expected);
                }
            }
        }
    }
}
