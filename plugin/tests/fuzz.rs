//! Hostile input on the token and event paths never panics (a panic would unwind into
//! Falco), and never turns into a verified identity it does not carry.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;
use whoexec::event;
use whoexec::session::{
    container_from_json, Config, Status, ThreadInfo, ThreadTable, ThreadView, Tracker,
};
use whoexec::token::{key_id, verify_signed, KeyRing};

fn key() -> SigningKey {
    SigningKey::from_bytes(&[3u8; 32])
}

fn genuine() -> String {
    let payload = r#"{"sid":"s","user":"alice","uid":"","groups":["devs"],"ns":"shop","pod":"web","container":"app","iat":1796314360}"#;
    let signed = format!(
        "v1.{}.{}",
        key_id(&key().verifying_key()),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let sig = key().sign(signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

fn ring() -> KeyRing {
    KeyRing::new([key().verifying_key()])
}

proptest! {
    #[test]
    fn any_string_as_a_token_is_refused_without_a_panic(text in ".{0,1200}") {
        prop_assert!(verify_signed(&text, &ring()).is_err());
    }

    #[test]
    fn any_token_shaped_string_is_refused_without_a_panic(
        kid in "[0-9a-f]{16}", payload in "[A-Za-z0-9_=-]{0,300}", sig in "[A-Za-z0-9_=-]{0,100}"
    ) {
        let token = format!("v1.{kid}.{payload}.{sig}");
        prop_assert!(verify_signed(&token, &ring()).is_err());
    }

    #[test]
    fn a_genuine_token_with_any_character_changed_is_refused(
        index in 0usize..400, replacement in "[ -~]"
    ) {
        let token = genuine();
        let index = index % token.len();
        let mut changed = token.clone();
        changed.replace_range(index..index + 1, &replacement);
        prop_assume!(changed != token);
        prop_assert!(verify_signed(&changed, &ring()).is_err(), "{}", changed);
    }

    #[test]
    fn any_bytes_as_an_event_payload_decode_or_not_without_a_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..600), nparams in 0u32..80
    ) {
        let _ = event::params(&bytes, nparams, false);
        let _ = event::params(&bytes, nparams, true);
        let _ = event::exec(&bytes, nparams);
        let _ = event::clone(&bytes, nparams);
        let _ = event::async_event(&bytes, nparams);
        let _ = container_from_json(&bytes);
    }

    #[test]
    fn any_container_json_shape_parses_or_not_without_a_panic(
        id in proptest::option::of(".{0,20}"), labels in proptest::collection::vec((".{0,40}", ".{0,40}"), 0..5)
    ) {
        let mut container = serde_json::Map::new();
        if let Some(id) = id { container.insert("id".into(), id.into()); }
        let labels: serde_json::Map<String, serde_json::Value> =
            labels.into_iter().map(|(k, v)| (k, v.into())).collect();
        container.insert("labels".into(), labels.into());
        let json = serde_json::json!({"container": container}).to_string();
        let _ = container_from_json(json.as_bytes());
    }

    /// Arbitrary argv and environments in execs never panic, and never name anyone
    /// without the genuine token.
    #[test]
    fn any_exec_arguments_never_panic_nor_name_anyone_without_a_genuine_token(
        exe in proptest::collection::vec(any::<u8>(), 0..20),
        args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..6),
        env in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..6),
        res in -3i64..2, cut in any::<bool>(),
    ) {
        let mut table = Table::default();
        table.0.insert(10, ThreadInfo { pid: 10, ptid: 1, tag: 0, container_id: "c".into() });
        let mut tracker = Tracker::new(Config::default(), ring());
        let mut args: Vec<Vec<u8>> = args;
        if let Some(first) = args.first_mut() {
            let mut with_var = b"WHOEXEC_IDENTITY=".to_vec();
            with_var.extend_from_slice(first);
            *first = with_var;
        }
        let ev = event::Exec {
            res,
            exe: &exe,
            args: args.iter().map(Vec::as_slice).collect(),
            pid: 10,
            ptid: 1,
            env: env.iter().map(Vec::as_slice).collect(),
            env_cut: cut,
        };
        tracker.on_exec(&mut table, 10, 1_796_314_360_000_000_000, &ev, || Some(vec!["WHOEXEC_IDENTITY=x".into()]));
        let a = tracker.attribution(&table, 10).expect("the thread exists");
        prop_assert!(a.status != Status::Verified && a.identity.is_none());
    }
}

#[derive(Default)]
struct Table(std::collections::HashMap<i64, ThreadInfo>);

impl ThreadView for Table {
    fn thread(&self, tid: i64) -> Option<ThreadInfo> {
        self.0.get(&tid).cloned()
    }
}

impl ThreadTable for Table {
    fn set_tag(&mut self, tid: i64, tag: u64) -> bool {
        self.0.get_mut(&tid).map(|t| t.tag = tag).is_some()
    }
}
