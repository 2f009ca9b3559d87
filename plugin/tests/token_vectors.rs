//! The shared token vectors (`tests/data/token-vectors.json`, also run by the Python and Go
//! verifiers) pass in Rust: the same tokens verify, the same ones fail with the same error,
//! and the root decisions (freshness, single use) are the same.

use serde_json::Value;
use std::collections::HashMap;
use whoexec::session::{Config, Tracker};
use whoexec::token::{parse_public_key, verify_token, KeyRing};

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/token-vectors.json"
    );
    let text = std::fs::read_to_string(path).expect("the shared vectors are in the repository");
    serde_json::from_str(&text).expect("the vectors are JSON")
}

fn ring(v: &Value) -> KeyRing {
    let keys = v["keys"].as_object().expect("keys");
    let ring = KeyRing::new(
        keys.values()
            .map(|k| parse_public_key(k.as_str().expect("a key")).expect("a public key")),
    );
    // the vectors name each key by its kid: the kid rule agrees
    let mut kids: Vec<String> = keys.keys().cloned().collect();
    kids.sort();
    assert_eq!(ring.kids(), kids);
    ring
}

fn tracker(v: &Value) -> Tracker {
    let config = Config {
        fresh_seconds: v["fresh_seconds"].as_i64().expect("fresh"),
        root_skew_seconds: v["root_skew_seconds"].as_i64().expect("skew"),
        ..Config::default()
    };
    Tracker::new(config, ring(v))
}

#[test]
fn every_valid_vector_verifies_to_its_payload() {
    let v = vectors();
    let ring = ring(&v);
    let (now, skew) = (
        v["now"].as_i64().unwrap(),
        v["skew_seconds"].as_i64().unwrap(),
    );
    let valid = v["valid"].as_array().unwrap();
    assert!(!valid.is_empty());
    for case in valid {
        let name = case["name"].as_str().unwrap();
        let identity = verify_token(case["token"].as_str().unwrap(), &ring, now, skew)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let p = &case["payload"];
        assert_eq!(identity.session_id, p["sid"].as_str().unwrap(), "{name}");
        assert_eq!(identity.user, p["user"].as_str().unwrap(), "{name}");
        assert_eq!(identity.uid, p["uid"].as_str().unwrap(), "{name}");
        let groups: Vec<&str> = p["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_str().unwrap())
            .collect();
        assert_eq!(identity.groups, groups, "{name}");
        assert_eq!(identity.namespace, p["ns"].as_str().unwrap(), "{name}");
        assert_eq!(identity.pod, p["pod"].as_str().unwrap(), "{name}");
        assert_eq!(
            identity.container,
            p["container"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(identity.issued_at, p["iat"].as_i64().unwrap(), "{name}");
        assert_eq!(identity.pod_uid.as_deref(), p["pod_uid"].as_str(), "{name}");
        assert_eq!(
            identity.groups_truncated,
            p.get("trunc").is_some(),
            "{name}"
        );
    }
}

#[test]
fn every_invalid_vector_fails_with_its_error() {
    let v = vectors();
    let ring = ring(&v);
    let (now, skew) = (
        v["now"].as_i64().unwrap(),
        v["skew_seconds"].as_i64().unwrap(),
    );
    let invalid = v["invalid"].as_array().unwrap();
    assert!(invalid.len() >= 20);
    for case in invalid {
        let name = case["name"].as_str().unwrap();
        let err = verify_token(case["token"].as_str().unwrap(), &ring, now, skew).expect_err(name);
        assert_eq!(err.kind(), case["error"].as_str().unwrap(), "{name}: {err}");
    }
}

#[test]
fn every_root_vector_gets_its_freshness_decision() {
    let v = vectors();
    let tracker = tracker(&v);
    for case in v["roots"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let problem = tracker.freshness_problem(
            case["iat"].as_i64().unwrap(),
            case["root_start_ns"].as_u64().unwrap(),
        );
        let decision = if problem.is_empty() { "fresh" } else { "stale" };
        assert_eq!(
            decision,
            case["decision"].as_str().unwrap(),
            "{name}: {problem}"
        );
    }
}

#[test]
fn one_session_id_roots_one_process_per_container_as_the_vectors_say() {
    let v = vectors();
    let mut tracker = tracker(&v);
    // the plugin runs on one node; a process is (host, pid): number them apart
    let mut ids: HashMap<(String, i64), i64> = HashMap::new();
    let claims = v["single_use"]["claims"].as_array().unwrap();
    for (n, claim) in claims.iter().enumerate() {
        let host = claim["host"].as_str().unwrap().to_string();
        let pid = claim["pid"].as_i64().unwrap();
        let next = ids.len() as i64 + 1;
        let me = *ids.entry((host, pid)).or_insert(next);
        let start = claim["start_ns"].as_u64().unwrap();
        let holder = tracker.claim(
            claim["sid"].as_str().unwrap(),
            claim["container"].as_str().unwrap(),
            (me, start),
        );
        assert_eq!(
            holder.0 == me,
            claim["first"].as_bool().unwrap(),
            "claim {n}"
        );
    }
}
