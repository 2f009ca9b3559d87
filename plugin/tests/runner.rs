//! The built `libwhoexec.so`, loaded the way Falco loads a plugin (each symbol looked up in
//! the shared object), run in `falco_plugin_runner` on syscall events in Falco's binary
//! format (`falco_event_schema`). Their contents come from the real captures of 2026-12-03
//! (`tests/data/cluster-2026-12-03`): pids, parents, times, container ids, Kubernetes
//! metadata and the real tokens, which the real `identity.pub` verifies.
//!
//! Falco's own state is played by two small plugins in this file, loaded before whoexec as
//! in Falco: `emitter` (the event source) and `sinsp` (the `threads` table libsinsp keeps,
//! with the `container_id` the container plugin derives from a process's cgroups).

mod harness;

use harness::*;
use serde_json::Value;

fn capture() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/cluster-2026-12-03/alerts.jsonl"
    );
    std::fs::read_to_string(path)
        .expect("the capture is in the repository")
        .lines()
        .map(|l| serde_json::from_str(l).expect("an alert"))
        .collect()
}

/// The n-th session root's alert (the `env` execve) of the capture.
fn root_alert(n: usize) -> Value {
    capture()
        .into_iter()
        .filter(|a| a["rule"] == "Whoexec exec session root")
        .nth(n)
        .expect("the capture has five roots")
}

fn token_of(root: &Value) -> String {
    let args = root["output_fields"]["proc.args"].as_str().unwrap();
    args.strip_prefix("WHOEXEC_IDENTITY=")
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string()
}

fn num(alert: &Value, field: &str) -> u64 {
    alert["output_fields"][field].as_u64().unwrap()
}

fn text(alert: &Value, field: &str) -> String {
    alert["output_fields"][field].as_str().unwrap().to_string()
}

/// The container plugin's `container` event for the alert's container, with the labels
/// its CRI engine reports (the Kubernetes names are the alert's own k8s fields).
fn container_of(alert: &Value) -> Ev {
    Ev::container(
        &text(alert, "container.id"),
        &text(alert, "container.id"), // containerd 1.6: the name is the id (see the README)
        &text(alert, "k8s.ns.name"),
        &text(alert, "k8s.pod.name"),
        &text(alert, "k8s.pod.uid"),
        &text(alert, "container.name"),
    )
}

/// S1: runc (1154) starts `env WHOEXEC_IDENTITY=<token> sh -c 'cat /etc/shadow; sleep 1'`
/// (1165), which execs sh; sh forks 1172, which execs cat and opens /etc/shadow.
fn s1(root: &Value) -> Vec<Ev> {
    let token = token_of(root);
    let cid = text(root, "container.id");
    let t_exec = num(root, "evt.time");
    let t_clone = num(root, "proc.pid.ts");
    let var = format!("WHOEXEC_IDENTITY={token}");
    vec![
        container_of(root),
        Ev::clone(t_clone, 1154, 1165, 1154, RUNC_CGROUP, false),
        Ev::clone(t_clone + 1, 1165, 0, 1154, &cid, false),
        Ev::execve(
            t_exec,
            1165,
            1154,
            &cid,
            "/usr/bin/env",
            &[&var, "sh", "-c", "cat /etc/shadow; sleep 1"],
            &["PATH=/usr/bin:/bin", "HOSTNAME=web"],
        ),
        Ev::execve(
            t_exec + 1_278_665,
            1165,
            1154,
            &cid,
            "sh",
            &["-c", "cat /etc/shadow; sleep 1"],
            &["PATH=/usr/bin:/bin", "HOSTNAME=web", &var],
        ),
        Ev::clone(1_796_314_360_499_289_914, 1172, 0, 1165, &cid, false),
        Ev::clone(1_796_314_360_499_289_915, 1165, 1172, 1154, &cid, false),
        Ev::execve(
            1_796_314_360_499_452_560,
            1172,
            1165,
            &cid,
            "cat",
            &["/etc/shadow"],
            &["PATH=/usr/bin:/bin", "HOSTNAME=web", &var],
        ),
        Ev::open(1_796_314_360_500_254_470, 1172, "/etc/shadow"),
    ]
}

#[test]
fn alice_reading_etc_shadow_in_her_exec_session_is_named_in_the_alert() {
    let root = root_alert(0);
    let mut run = Run::start(s1(&root));
    let open = run.last_event();
    assert_eq!(
        run.field(&open, "whoexec.attribution").as_deref(),
        Some("verified")
    );
    assert_eq!(run.field(&open, "whoexec.user").as_deref(), Some("alice"));
    assert_eq!(
        run.field(&open, "whoexec.uid").as_deref(),
        None,
        "alice has no uid: an empty string"
    );
    assert_eq!(
        run.field(&open, "whoexec.session").as_deref(),
        Some("f3415519-d9fd-474d-9308-66042c8c7347")
    );
    assert_eq!(
        run.field(&open, "whoexec.groups").as_deref(),
        Some("(devs,system:authenticated)")
    );
    assert_eq!(run.field(&open, "whoexec.token"), Some(token_of(&root)));
    assert_eq!(run.field(&open, "whoexec.claimed.user"), None);
    assert_eq!(run.field(&open, "whoexec.reason"), None);
    // the root is env's pid, at the time of its execve: the capture's root alert
    assert_eq!(
        run.field(&open, "whoexec.root.pid").as_deref(),
        Some("1165")
    );
    assert_eq!(
        run.field(&open, "whoexec.root.ts"),
        Some(num(&root, "evt.time").to_string())
    );
}

#[test]
fn a_process_without_a_token_has_attribution_none() {
    // S7: bob with the webhook stopped: runc (1861) starts cat (1871) directly
    let alert = capture()
        .into_iter()
        .rfind(|a| a["output_fields"]["proc.pid"] == 1871)
        .unwrap();
    let cid = text(&alert, "container.id");
    let events = vec![
        container_of(&alert),
        Ev::clone(
            num(&alert, "proc.pid.ts"),
            1861,
            1871,
            1,
            RUNC_CGROUP,
            false,
        ),
        Ev::execve(
            num(&alert, "evt.time") - 1_000_000,
            1871,
            1861,
            &cid,
            "cat",
            &["/etc/shadow"],
            &["PATH=/bin"],
        ),
        Ev::open(num(&alert, "evt.time"), 1871, "/etc/shadow"),
    ];
    let mut run = Run::start(events);
    let open = run.last_event();
    assert_eq!(
        run.field(&open, "whoexec.attribution").as_deref(),
        Some("none")
    );
    assert_eq!(run.field(&open, "whoexec.user"), None);
    assert_eq!(run.field(&open, "whoexec.token"), None);
}

#[test]
fn the_same_real_token_replayed_by_a_second_exec_names_nobody() {
    let root = root_alert(0);
    let token = token_of(&root);
    let cid = text(&root, "container.id");
    let mut events = s1(&root);
    let later = num(&root, "evt.time") + 2_000_000_000;
    let var = format!("WHOEXEC_IDENTITY={token}");
    events.extend([
        Ev::clone(later, 1154, 1300, 1, RUNC_CGROUP, false),
        Ev::clone(later + 1, 1300, 0, 1154, &cid, false),
        Ev::execve(
            later + 2,
            1300,
            1154,
            &cid,
            "/usr/bin/env",
            &[&var, "cat", "/etc/shadow"],
            &[],
        ),
        Ev::open(later + 3, 1300, "/etc/shadow"),
    ]);
    let mut run = Run::start(events);
    let open = run.last_event();
    assert_eq!(
        run.field(&open, "whoexec.attribution").as_deref(),
        Some("replayed")
    );
    assert_eq!(run.field(&open, "whoexec.user"), None);
    assert_eq!(
        run.field(&open, "whoexec.claimed.user").as_deref(),
        Some("alice")
    );
    let reason = run.field(&open, "whoexec.reason").unwrap();
    assert!(reason.starts_with("reused: session f3415519"), "{reason}");
    // the replay is its own root, apart from alice's genuine one
    assert_eq!(
        run.field(&open, "whoexec.root.pid").as_deref(),
        Some("1300")
    );
}

#[test]
fn a_second_thread_of_a_session_process_is_verified() {
    // S3: a static binary (1253) whose second thread (1259) opens /etc/shadow
    let root = root_alert(2);
    let token = token_of(&root);
    let cid = text(&root, "container.id");
    let var = format!("WHOEXEC_IDENTITY={token}");
    let t = num(&root, "evt.time");
    let events = vec![
        container_of(&root),
        Ev::clone(num(&root, "proc.pid.ts"), 1253, 0, 1241, &cid, false),
        Ev::execve(
            t,
            1253,
            1241,
            &cid,
            "/usr/bin/env",
            &[&var, "/tmp/thr"],
            &[],
        ),
        Ev::execve(t + 2_000_000, 1253, 1241, &cid, "/tmp/thr", &[], &[&var]),
        Ev::clone(1_796_314_376_977_778_985, 1259, 0, 1253, &cid, true),
        Ev::open(1_796_314_377_477_942_358, 1259, "/etc/shadow"),
    ];
    let mut run = Run::start(events);
    let open = run.last_event();
    assert_eq!(
        run.field(&open, "whoexec.attribution").as_deref(),
        Some("verified")
    );
    assert_eq!(
        run.field(&open, "whoexec.session").as_deref(),
        Some("7904f138-c92b-4417-a1a8-3dc9eda98ff6")
    );
}

#[test]
fn a_token_used_in_another_pod_is_replayed_against_that_pod_s_own_metadata() {
    // S1's token (pod web) brought into pod dl's container (S5's metadata)
    let token = token_of(&root_alert(0));
    let dl = root_alert(4);
    let cid = text(&dl, "container.id");
    let var = format!("WHOEXEC_IDENTITY={token}");
    let t = num(&root_alert(0), "evt.time") + 1_000_000_000;
    let events = vec![
        container_of(&dl),
        Ev::clone(t, 1314, 0, 1, &cid, false),
        Ev::execve(t + 1, 1314, 1, &cid, "/usr/bin/env", &[&var, "sh"], &[]),
        Ev::open(t + 2, 1314, "/etc/shadow"),
    ];
    let mut run = Run::start(events);
    let open = run.last_event();
    assert_eq!(
        run.field(&open, "whoexec.attribution").as_deref(),
        Some("replayed")
    );
    let reason = run.field(&open, "whoexec.reason").unwrap();
    assert_eq!(
        reason,
        "bound elsewhere: token minted for pod 'web' is used in pod 'dl'"
    );
}

#[test]
fn metrics_count_sessions_and_events_and_no_panic() {
    let mut run = Run::start(s1(&root_alert(0)));
    let metrics = run.metrics();
    assert_eq!(metrics.get("sessions"), Some(&1));
    assert_eq!(metrics.get("roots"), Some(&1));
    assert_eq!(metrics.get("tokens_verified"), Some(&1));
    assert_eq!(metrics.get("containers"), Some(&1));
    assert_eq!(metrics.get("panics_caught"), Some(&0));
    assert_eq!(metrics.get("events_malformed"), Some(&0));
}

#[test]
fn a_malformed_event_is_counted_and_gives_empty_fields() {
    let mut events = s1(&root_alert(0));
    events.push(Ev::raw(harness::malformed_execve(1172)));
    let mut run = Run::start(events);
    let bad = run.last_event();
    assert_eq!(run.metrics().get("events_malformed"), Some(&1));
    // the thread is still alice's: its fields come from the table, not from the bad event
    assert_eq!(run.field(&bad, "whoexec.user").as_deref(), Some("alice"));
}

#[test]
fn the_plugin_asks_falco_for_event_schema_4_as_falco_0_44_speaks_it() {
    // without it libsinsp assumes 3.0.0 and Falco 0.44.1 (schema 4.5.1) refuses to open
    assert_eq!(harness::required_event_schema_version(), "4.0.0");
}

#[test]
fn init_without_a_public_key_is_refused_with_a_clear_error() {
    let err = Run::try_start(vec![], "{}").err().expect("refused");
    assert!(err.contains("no public key"), "{err}");
}

/// A `/proc` under a fake HOST_ROOT (as Falco's container mounts the host's at /host):
/// `btime` and the root's start in clock ticks after boot.
fn fake_proc(pid: i64, start_ns: u64) -> std::path::PathBuf {
    let root = std::env::temp_dir().join(format!("whoexec-proc-{}-{pid}", std::process::id()));
    let btime = 1_796_300_000u64;
    let ticks = (start_ns - btime * 1_000_000_000) / 10_000_000;
    std::fs::create_dir_all(root.join(format!("proc/{pid}"))).unwrap();
    std::fs::write(
        root.join("proc/stat"),
        format!("cpu 1 2 3\nbtime {btime}\nprocesses 9\n"),
    )
    .unwrap();
    let stat = format!("{pid} (sh (odd) name) S 1154 {pid} {pid} 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 {ticks} 1 2 3");
    std::fs::write(root.join(format!("proc/{pid}/stat")), stat).unwrap();
    root
}

#[test]
fn the_sessions_open_when_falco_started_are_found_by_the_thread_table_scan() {
    // Falco starts while 1165 (sh, whose environment carries the token) and 1172 are
    // running: libsinsp's /proc scan fills the table before the capture opens
    let root = root_alert(0);
    let cid = text(&root, "container.id");
    let var = format!("WHOEXEC_IDENTITY={}", token_of(&root));
    let existing = vec![
        Proc {
            tid: 1154,
            pid: 1154,
            ptid: 1,
            cid: RUNC_CGROUP.into(),
            exe: "runc".into(),
            args: vec![],
            env: vec![],
        },
        Proc {
            tid: 1165,
            pid: 1165,
            ptid: 1154,
            cid: cid.clone(),
            exe: "sh".into(),
            args: vec![],
            env: vec![var.clone()],
        },
        Proc {
            tid: 1172,
            pid: 1172,
            ptid: 1165,
            cid: cid.clone(),
            exe: "cat".into(),
            args: vec!["/etc/shadow".into()],
            env: vec![var],
        },
    ];
    let events = || {
        vec![
            container_of(&root),
            Ev::open(num(&root, "evt.time") + 5, 1172, "/etc/shadow"),
        ]
    };

    // /proc says when the root started: it is judged like a live one
    let host_root = fake_proc(1165, num(&root, "proc.pid.ts"));
    std::env::set_var("HOST_ROOT", &host_root);
    let mut run = Run::start_with_existing(events(), existing.clone());
    let open = run.last_event();
    assert_eq!(
        run.field(&open, "whoexec.attribution").as_deref(),
        Some("verified")
    );
    assert_eq!(run.field(&open, "whoexec.user").as_deref(), Some("alice"));

    // without its start time, the root cannot be judged, and nobody is named
    std::fs::remove_dir_all(&host_root).unwrap();
    let mut run = Run::start_with_existing(events(), existing);
    let open = run.last_event();
    std::env::remove_var("HOST_ROOT");
    assert_eq!(
        run.field(&open, "whoexec.attribution").as_deref(),
        Some("unverified")
    );
    assert_eq!(
        run.field(&open, "whoexec.claimed.user").as_deref(),
        Some("alice")
    );
    assert!(run
        .field(&open, "whoexec.reason")
        .unwrap()
        .contains("when Falco started"));
}

/// A syscall event with a valid header (Falco always gives one) and any parameters.
fn arbitrary_event(event_type: u16, tid: i64, lengths: &[u16], data: &[u8]) -> Ev {
    let large = event_type == 402;
    let mut payload = Vec::new();
    for len in lengths {
        if large {
            payload.extend_from_slice(&u32::from(*len).to_ne_bytes());
        } else {
            payload.extend_from_slice(&len.to_ne_bytes());
        }
    }
    payload.extend_from_slice(data);
    let mut event = Vec::new();
    event.extend_from_slice(&1_796_314_360_000_000_000u64.to_ne_bytes());
    event.extend_from_slice(&tid.to_ne_bytes());
    event.extend_from_slice(&(26 + payload.len() as u32).to_ne_bytes());
    event.extend_from_slice(&event_type.to_ne_bytes());
    event.extend_from_slice(&(lengths.len() as u32).to_ne_bytes());
    event.extend_from_slice(&payload);
    Ev::raw(event)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Events of every type whoexec parses, with any parameters, through the loaded .so:
    /// nothing panics across the plugin API, and every field extracts or is empty.
    #[test]
    fn any_parameters_of_the_parsed_events_never_panic_across_the_plugin_api(
        events in proptest::collection::vec(
            (
                proptest::sample::select(vec![186u16, 223, 225, 227, 293, 331, 335, 402]),
                0i64..4,
                proptest::collection::vec(0u16..40, 0..32),
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            ),
            1..20,
        )
    ) {
        let mut list = s1(&root_alert(0));
        for (event_type, tid, lengths, data) in &events {
            list.push(arbitrary_event(*event_type, 1165 + tid, lengths, data));
        }
        list.push(Ev::open(1_796_314_361_000_000_000, 1172, "/etc/shadow"));
        let mut run = Run::start(list);
        let open = run.last_event();
        for field in ["whoexec.user", "whoexec.groups", "whoexec.attribution", "whoexec.reason", "whoexec.token"] {
            let _ = run.field(&open, field);
        }
        let metrics = run.metrics();
        proptest::prop_assert_eq!(metrics.get("panics_caught"), Some(&0));
    }
}
