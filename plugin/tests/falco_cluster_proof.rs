//! The plugin on what real Falco 0.44.1 printed with it loaded, on the e2e cluster
//! (`tests/data/falco-cluster-proof-2026-12-03`, the proof of issues #20 and #24): the
//! events are rebuilt from those alerts (pids, times, container, Kubernetes labels and the
//! real tokens, which the run's `identity.pub` verifies) and run through the built
//! `libwhoexec.so` in `falco_plugin_runner`, as `runner.rs` does.
//!
//! The machine dropped events during that run (Falco counted 78 drops): a session's
//! `ls --version` (pid 5168) and `tar --version` (pid 5170) reached Falco with no parent
//! in its thread table and the session's token in their inherited environment. The plugin
//! built then took the first for the session root and called the second a replay
//! ("reused"): a false accusation of alice's own session.

mod harness;

use harness::*;
use serde_json::Value;

fn capture() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/falco-cluster-proof-2026-12-03/alerts-plugin.jsonl"
    );
    std::fs::read_to_string(path)
        .expect("the capture is in the repository")
        .lines()
        .map(|l| serde_json::from_str(l).expect("an alert"))
        .collect()
}

fn key() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/falco-cluster-proof-2026-12-03/identity.pub"
    );
    std::fs::read_to_string(path).expect("identity.pub")
}

fn alert(rule: &str, pid: u64) -> Value {
    capture()
        .into_iter()
        .find(|a| a["rule"] == rule && a["output_fields"]["proc.pid"] == pid)
        .unwrap_or_else(|| panic!("the capture has {rule} for pid {pid}"))
}

fn num(alert: &Value, field: &str) -> u64 {
    alert["output_fields"][field].as_u64().unwrap()
}

fn text(alert: &Value, field: &str) -> String {
    alert["output_fields"][field].as_str().unwrap().to_string()
}

fn container_of(alert: &Value) -> Ev {
    Ev::container(
        &text(alert, "container.id"),
        &text(alert, "container.name"),
        &text(alert, "k8s.ns.name"),
        &text(alert, "k8s.pod.name"),
        &text(alert, "k8s.pod.uid"),
        &text(alert, "container.label[io.kubernetes.container.name]"),
    )
}

/// A process libsinsp knows, whose parent (`ptid`) it does not: its events were dropped.
fn orphan(alert: &Value, ptid: i64) -> Proc {
    let pid = num(alert, "proc.pid") as i64;
    Proc {
        tid: pid,
        pid,
        ptid,
        cid: text(alert, "container.id"),
        exe: text(alert, "proc.name"),
        args: vec![],
        env: vec![],
    }
}

/// The alert's execve, as the event Falco parsed: the token in the environment only.
fn execve(alert: &Value, ptid: i64) -> Ev {
    let cmdline = text(alert, "proc.cmdline");
    let mut words = cmdline.split(' ');
    let exe = words.next().unwrap().to_string();
    let args: Vec<&str> = words.collect();
    let var = format!(
        "WHOEXEC_IDENTITY={}",
        text(alert, "proc.env[WHOEXEC_IDENTITY]")
    );
    Ev::execve(
        num(alert, "evt.time"),
        num(alert, "proc.pid") as i64,
        ptid,
        &text(alert, "container.id"),
        &exe,
        &args,
        &[
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            &var,
        ],
    )
}

fn run(events: Vec<Ev>, existing: Vec<Proc>) -> Run {
    let config = serde_json::json!({"public_keys": [key()]}).to_string();
    harness::set_existing(existing);
    Run::try_start(events, &config).expect("the plugins start")
}

/// pid 5160: the session's shell, which Falco no longer knew
const LOST_PARENT: i64 = 5160;

#[test]
fn what_the_plugin_printed_on_real_falco_for_the_two_orphaned_processes() {
    let ls = alert("Whoexec exec entry", 5168);
    let tar = alert("Whoexec exec entry", 5170);
    assert_eq!(ls["output_fields"]["whoexec.attribution"], "verified");
    assert_eq!(ls["output_fields"]["whoexec.root.pid"], 5168);
    assert_eq!(ls["output_fields"]["proc.pname"], Value::Null);
    assert_eq!(tar["output_fields"]["proc.pname"], Value::Null);
    // the defect, as Falco printed it then
    assert_eq!(tar["output_fields"]["whoexec.attribution"], "replayed");
    assert!(text(&tar, "whoexec.reason").starts_with("reused: session e69729af"));
    assert_eq!(
        text(&ls, "proc.env[WHOEXEC_IDENTITY]"),
        text(&tar, "proc.env[WHOEXEC_IDENTITY]"),
        "one session's token"
    );
}

#[test]
fn a_second_process_of_a_session_whose_parent_falco_lost_is_unverified_not_a_replay() {
    let ls = alert("Whoexec exec entry", 5168);
    let tar = alert("Whoexec exec entry", 5170);
    let events = vec![
        container_of(&ls),
        execve(&ls, LOST_PARENT),
        execve(&tar, LOST_PARENT),
    ];
    let mut run = run(
        events,
        vec![orphan(&ls, LOST_PARENT), orphan(&tar, LOST_PARENT)],
    );
    let tar_exec = run.last_event();
    assert_eq!(
        run.field(&tar_exec, "whoexec.attribution").as_deref(),
        Some("unverified")
    );
    assert_eq!(
        run.field(&tar_exec, "whoexec.user"),
        None,
        "nobody is named"
    );
    assert_eq!(
        run.field(&tar_exec, "whoexec.claimed.user").as_deref(),
        Some("alice"),
        "the claim is kept apart"
    );
    let reason = run.field(&tar_exec, "whoexec.reason").unwrap();
    assert!(reason.contains("not judged a replay"), "{reason}");
    assert_eq!(run.metrics()["replays"], 0);
}

#[test]
fn the_first_orphaned_process_of_a_fresh_session_is_still_believed() {
    let ls = alert("Whoexec exec entry", 5168);
    let events = vec![container_of(&ls), execve(&ls, LOST_PARENT)];
    let mut run = run(events, vec![orphan(&ls, LOST_PARENT)]);
    let ls_exec = run.last_event();
    assert_eq!(
        run.field(&ls_exec, "whoexec.attribution").as_deref(),
        Some("verified")
    );
    assert_eq!(
        run.field(&ls_exec, "whoexec.user").as_deref(),
        Some("alice")
    );
    assert_eq!(
        run.field(&ls_exec, "whoexec.root.pid").as_deref(),
        Some("5168")
    );
}

#[test]
fn an_orphaned_process_of_a_session_older_than_the_window_is_unverified_not_stale() {
    // the same real event 40 s later than Falco saw it: a session open longer than the
    // freshness window whose shell Falco lost (a restart, dropped events)
    let ls = alert("Whoexec exec entry", 5168);
    let mut late = ls.clone();
    late["output_fields"]["evt.time"] = (num(&ls, "evt.time") + 40_000_000_000).into();
    let events = vec![container_of(&ls), execve(&late, LOST_PARENT)];
    let mut run = run(events, vec![orphan(&ls, LOST_PARENT)]);
    let exec = run.last_event();
    assert_eq!(
        run.field(&exec, "whoexec.attribution").as_deref(),
        Some("unverified")
    );
    assert_eq!(
        run.field(&exec, "whoexec.claimed.user").as_deref(),
        Some("alice")
    );
}

#[test]
fn a_token_in_argv_below_an_unknown_parent_is_still_judged_a_replay() {
    // bob's replay of alice's token a minute old, with the webhook down (B17): env's own
    // argv carries the token, so the root is certain and the stale token is a replay
    let root = alert("Whoexec exec session root", 12386);
    assert_eq!(root["output_fields"]["whoexec.attribution"], "replayed");
    let args = text(&root, "proc.args");
    let argv: Vec<&str> = args.split(' ').collect();
    let events = vec![
        container_of(&root),
        Ev::execve(
            num(&root, "evt.time"),
            12386,
            LOST_PARENT,
            &text(&root, "container.id"),
            "/usr/bin/env",
            &argv,
            &["PATH=/usr/bin:/bin"],
        ),
    ];
    let mut run = run(events, vec![orphan(&root, LOST_PARENT)]);
    let exec = run.last_event();
    assert_eq!(
        run.field(&exec, "whoexec.attribution").as_deref(),
        Some("replayed")
    );
    let reason = run.field(&exec, "whoexec.reason").unwrap();
    assert!(reason.starts_with("stale"), "{reason}");
}
