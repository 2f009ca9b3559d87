//! The Falco plugin's cost per event in `falco_plugin_runner`: parsing and extraction by the
//! built `libwhoexec.so`, against a no-op plugin subscribed to the same events, in the
//! same run. Run from `plugin/`: `cargo build --release && cargo bench --bench plugin_runner`
//! (see bench/README.md). Figures are medians over rounds; the ratio is what to compare.

#[path = "../plugin/tests/harness/mod.rs"]
mod harness;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::{Signer, SigningKey};
use falco_plugin::anyhow::Error;
use falco_plugin::base::Plugin;
use falco_plugin::extract::{field, EventInput, ExtractFieldInfo, ExtractPlugin, ExtractRequest};
use falco_plugin::parse::{ParseInput, ParsePlugin};
use falco_plugin::static_plugin;
use falco_plugin::tables::TablesInput;
use harness::{Ev, Run, RUNC_CGROUP};
use std::ffi::{CStr, CString};
use std::time::Instant;
use whoexec::token::key_id;
use whoexec::{Parsed, Syscall};

const SESSIONS: i64 = 200;
const CHILDREN: i64 = 10;
const OPENS: i64 = 20;
const ROUNDS: usize = 7;
const EXTRACTIONS: usize = 20_000;

/// The reference: subscribed to the same events as whoexec, doing nothing with them.
struct Noop;

impl Plugin for Noop {
    const NAME: &'static CStr = c"noop";
    const PLUGIN_VERSION: &'static CStr = c"0.0.0";
    const DESCRIPTION: &'static CStr = c"parses whoexec's events and does nothing";
    const CONTACT: &'static CStr = c"whoexec bench";
    type ConfigType = ();

    fn new(_input: Option<&TablesInput>, _config: ()) -> Result<Self, Error> {
        Ok(Noop)
    }
}

impl ParsePlugin for Noop {
    type Event<'a> = Parsed<'a>;

    fn parse_event(
        &mut self,
        _event: &EventInput<Parsed>,
        _input: &ParseInput,
    ) -> Result<(), Error> {
        Ok(())
    }
}

impl Noop {
    fn extract_user(&mut self, _req: ExtractRequest<Self>) -> Result<Option<CString>, Error> {
        Ok(Some(CString::from(c"alice")))
    }
}

impl ExtractPlugin for Noop {
    type Event<'a> = Syscall<'a>;
    type ExtractContext = ();
    const EXTRACT_FIELDS: &'static [ExtractFieldInfo<Self>] =
        &[field("noop.user", &Self::extract_user)];
}

static_plugin!(NOOP_API = Noop);

fn mint(key: &SigningKey, sid: i64, iat: i64) -> String {
    let payload = format!(
        r#"{{"sid":"bench-{sid}","user":"alice","uid":"u-1","groups":["devs","system:authenticated"],"ns":"shop","pod":"web","container":"app","iat":{iat},"pod_uid":"uid-web"}}"#
    );
    let signed = format!(
        "v1.{}.{}",
        key_id(&key.verifying_key()),
        URL_SAFE_NO_PAD.encode(payload)
    );
    format!(
        "{signed}.{}",
        URL_SAFE_NO_PAD.encode(key.sign(signed.as_bytes()).to_bytes())
    )
}

/// SESSIONS exec sessions: each a root (env, then sh), CHILDREN children that each exec
/// cat and open OPENS files, then exit. Returns the events and how many whoexec parses.
fn workload(key: &SigningKey, with_tokens: bool) -> (Vec<Ev>, usize) {
    const CID: &str = "7dafe0d0b51c";
    let iat = 1_796_314_360i64;
    let mut ts = iat as u64 * 1_000_000_000;
    let mut events = vec![Ev::container(CID, CID, "shop", "web", "uid-web", "app")];
    let mut parsed = 1;
    for s in 0..SESSIONS {
        let root = 10_000 + s * 100;
        let var = if with_tokens {
            format!("WHOEXEC_IDENTITY={}", mint(key, s, iat))
        } else {
            "B=2".to_string()
        };
        let mut next = |n: u64| {
            ts += n;
            ts
        };
        events.push(Ev::clone(next(1000), 1154, root, 1, RUNC_CGROUP, false));
        events.push(Ev::clone(next(1000), root, 0, 1154, CID, false));
        events.push(Ev::execve(
            next(1000),
            root,
            1154,
            CID,
            "/usr/bin/env",
            &[&var, "sh"],
            &["PATH=/bin"],
        ));
        events.push(Ev::execve(
            next(1000),
            root,
            1154,
            CID,
            "sh",
            &[],
            &["PATH=/bin", &var],
        ));
        parsed += 4;
        for c in 1..=CHILDREN {
            let child = root + c;
            events.push(Ev::clone(next(1000), root, child, 1154, CID, false));
            events.push(Ev::clone(next(1000), child, 0, root, CID, false));
            events.push(Ev::execve(
                next(1000),
                child,
                root,
                CID,
                "cat",
                &["/etc/shadow"],
                &["PATH=/bin", &var],
            ));
            for _ in 0..OPENS {
                events.push(Ev::open(next(1000), child, "/etc/shadow"));
            }
            events.push(Ev::exit(next(1000), child));
            parsed += 4;
        }
        events.push(Ev::exit(ts + 1000, root));
        parsed += 1;
    }
    (events, parsed)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Figures {
    run_ns: f64,
    extract_ns: f64,
}

/// The workload through [emitter, sinsp, whoexec] or [emitter, sinsp, noop], ROUNDS times.
fn measure(key: &SigningKey, config: &str, with_tokens: bool, whoexec: bool) -> Figures {
    let (mut runs, mut extractions) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (events, _) = workload(key, with_tokens);
        let started = Instant::now();
        let mut run = if whoexec {
            Run::try_start(events, config).expect("whoexec starts")
        } else {
            Run::try_start_with(events, &NOOP_API, "").expect("noop starts")
        };
        runs.push(started.elapsed().as_nanos() as f64);
        let event = run.last_event();
        let (name, want) = match (whoexec, with_tokens) {
            (false, _) => ("noop.user", Some("alice")),
            (true, true) => ("whoexec.user", Some("alice")),
            (true, false) => ("whoexec.attribution", Some("none")),
        };
        assert_eq!(run.field(&event, name).as_deref(), want, "{name}");
        let started = Instant::now();
        for _ in 0..EXTRACTIONS {
            std::hint::black_box(run.field(&event, name));
        }
        extractions.push(started.elapsed().as_nanos() as f64 / EXTRACTIONS as f64);
    }
    Figures {
        run_ns: median(runs),
        extract_ns: median(extractions),
    }
}

fn main() {
    let key = SigningKey::from_bytes(&[42u8; 32]);
    let pem = key
        .verifying_key()
        .to_public_key_pem(Default::default())
        .expect("a PEM");
    let config = serde_json::json!({"public_keys": [pem]}).to_string();
    let (sample, parsed) = workload(&key, true);
    let total = sample.len();
    println!("workload: {total} events, {parsed} of them parsed by whoexec ({SESSIONS} sessions, one every {} parsed events)", parsed as i64 / SESSIONS);
    // one Ed25519 verification per session root: measured apart
    let token = mint(&key, 0, 1_796_314_360);
    let ring = whoexec::token::KeyRing::new([key.verifying_key()]);
    let mut verify = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..200 {
            std::hint::black_box(whoexec::token::verify_signed(&token, &ring).is_ok());
        }
        verify.push(started.elapsed().as_nanos() as f64 / 200.0);
    }
    let verify = median(verify);
    for with_tokens in [false, true] {
        let w = measure(&key, &config, with_tokens, true);
        let n = measure(&key, &config, with_tokens, false);
        let what = if with_tokens {
            "exec sessions with tokens"
        } else {
            "the same processes, no token"
        };
        println!("{what} (median of {ROUNDS} runs of the whole workload):");
        println!(
            "  whoexec: {:.0} ns/event, {:.0} ns per parsed event",
            w.run_ns / total as f64,
            w.run_ns / parsed as f64
        );
        println!(
            "  no-op:   {:.0} ns/event, {:.0} ns per parsed event",
            n.run_ns / total as f64,
            n.run_ns / parsed as f64
        );
        println!(
            "  ratio whoexec/no-op: {:.2}; whoexec's own cost {:.0} ns per parsed event",
            w.run_ns / n.run_ns,
            (w.run_ns - n.run_ns) / parsed as f64
        );
        println!(
            "  one extraction: whoexec {:.0} ns, no-op {:.0} ns, ratio {:.2}",
            w.extract_ns,
            n.extract_ns,
            w.extract_ns / n.extract_ns
        );
    }
    println!(
        "one token verification (Ed25519 and the payload), once per session root: {verify:.0} ns"
    );
}
