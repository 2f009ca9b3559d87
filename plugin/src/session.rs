//! Exec sessions: learnt where they start, inherited by every descendant, judged once.
//!
//! Pure: no IO, no clock, no Falco SDK types. The thread table it tags is behind the
//! [`ThreadView`]/[`ThreadTable`] traits: Falco's `threads` table in `lib.rs`, a map in the
//! tests. A thread carries a *tag* (0: no session); a tag names a [`Session`] record here.
//!
//! The decisions are those of `webhook/lineage.py` (one vocabulary: `verified`, `replayed`,
//! `tampered`, `unverified`, `none`), made live instead of after the fact:
//! - a session starts at the successful `execve` whose argv is the webhook's rewrite
//!   (`env WHOEXEC_IDENTITY=<token> cmd...`), or at a container's entry process whose
//!   environment carries the token (`kubectl debug`: the variable is in the ephemeral
//!   container's `env`);
//! - its root is believed when the token verifies, the root is an entry of its container
//!   (its parent runs elsewhere: the runtime), it is *fresh* (the execve's own time lies in
//!   `[iat - skew, iat + fresh]`), *first* (one root per session id and container) and
//!   *bound* (namespace, pod, pod UID and container match the container's Kubernetes
//!   labels, checked when a field is extracted, so that metadata arriving late still counts);
//! - a different token brought below a root (argv or environment) is tampering: the owner
//!   stays, the claim is kept apart.

use crate::token::{self, shown, Identity, KeyRing, TokenError};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

/// A thread's session tag; 0 is none.
pub type Tag = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Verified,
    Replayed,
    Tampered,
    Unverified,
    None,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Verified => "verified",
            Status::Replayed => "replayed",
            Status::Tampered => "tampered",
            Status::Unverified => "unverified",
            Status::None => "none",
        }
    }
}

/// What the plugin knows of one thread (Falco's `threads` table).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThreadInfo {
    pub pid: i64,
    pub ptid: i64,
    pub tag: Tag,
    /// the container plugin's `container_id` ("" on the host or when unknown)
    pub container_id: String,
}

pub trait ThreadView {
    fn thread(&self, tid: i64) -> Option<ThreadInfo>;

    /// Only the tag (the hot path of clones and exits reads nothing else).
    fn tag(&self, tid: i64) -> Option<Tag> {
        self.thread(tid).map(|t| t.tag)
    }
}

pub trait ThreadTable: ThreadView {
    fn set_tag(&mut self, tid: i64, tag: Tag) -> bool;
}

#[derive(Clone, Debug)]
pub struct Config {
    pub variable: String,
    pub fresh_seconds: i64,
    pub root_skew_seconds: i64,
    pub clock_skew_seconds: i64,
    pub max_sessions: usize,
    pub max_claims: usize,
    pub max_containers: usize,
    pub max_verdicts: usize,
}

impl Default for Config {
    /// The defaults of `webhook/settings.py`.
    fn default() -> Self {
        Self {
            variable: "WHOEXEC_IDENTITY".into(),
            fresh_seconds: 30,
            root_skew_seconds: 5,
            clock_skew_seconds: 300,
            max_sessions: 16_384,
            max_claims: 65_536,
            max_containers: 16_384,
            max_verdicts: 4_096,
        }
    }
}

/// A container's Kubernetes identity, from the container plugin's labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerMeta {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
    /// the Kubernetes container name; `None` when the runtime gave only the id
    pub container: Option<String>,
}

/// Parse the container plugin's JSON (`{"container": {"id", "name", "labels", ...}}`).
/// Returns the short id and what it says about Kubernetes.
pub fn container_from_json(data: &[u8]) -> Option<(String, ContainerMeta)> {
    let value: serde_json::Value = serde_json::from_slice(data).ok()?;
    let container = value.get("container")?;
    let id = container.get("id")?.as_str()?.to_string();
    let labels = container.get("labels");
    let label = |key: &str| {
        labels
            .and_then(|l| l.get(key))
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let name = container
        .get("name")
        .and_then(|v| v.as_str())
        .filter(|n| !n.is_empty() && !names_an_id(n, &id))
        .map(str::to_owned);
    // containerd's engine names a container by its id; the CRI label holds the Kubernetes
    // name (falco-0.44.1/cluster-2026-12-03: containerd 1.6 gives the CRI engine no events)
    let meta = ContainerMeta {
        namespace: label("io.kubernetes.pod.namespace"),
        pod: label("io.kubernetes.pod.name"),
        pod_uid: label("io.kubernetes.pod.uid"),
        container: label("io.kubernetes.container.name").or(name),
    };
    Some((id, meta))
}

/// A `container.name` that is the container's own (short) id says nothing.
fn names_an_id(name: &str, id: &str) -> bool {
    name == id
        || (name.len() == 12 && name.bytes().all(|b| b.is_ascii_hexdigit()) && id.starts_with(name))
}

#[derive(Clone, Debug)]
enum Kind {
    /// a session root; `problem` says why it is not believed (replay), "" when it is
    Root {
        identity: Arc<Identity>,
        problem: String,
    },
    /// a token that does not verify: nobody, not even a claim
    Invalid { reason: String },
    /// a genuine token whose root cannot be judged (it was not seen, or its start is
    /// unknown): nobody is attributed, the claim is kept
    Unseen {
        identity: Arc<Identity>,
        reason: String,
    },
    /// a different token brought below the root `owner`
    Tampered {
        owner: Tag,
        claim: Option<Arc<Identity>>,
        reason: String,
    },
}

#[derive(Clone, Debug)]
struct Session {
    kind: Kind,
    /// the token this record is about (the root's, or the claim's for `Tampered`)
    token: Arc<str>,
    /// the container the record was made in ("" unknown)
    container_id: String,
    key: String,
    refs: u64,
    /// a root's pid and the time of the execve that made it one (or its start from /proc)
    root: Option<(i64, u64)>,
}

/// What a field extraction returns for one thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribution {
    pub status: Status,
    pub identity: Option<Arc<Identity>>,
    pub claimed: Option<Arc<Identity>>,
    pub reason: String,
    /// the session root's token, passed along so that a consumer can check it again
    pub token: Option<Arc<str>>,
    /// the session root's pid and the ns time it became the root (its execve)
    pub root: Option<(i64, u64)>,
}

impl Attribution {
    fn none() -> Self {
        Self {
            status: Status::None,
            identity: None,
            claimed: None,
            reason: String::new(),
            token: None,
            root: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    pub sessions_created: u64,
    pub sessions_evicted: u64,
    pub sessions_released: u64,
    pub claims_evicted: u64,
    pub containers_evicted: u64,
    pub tokens_verified: u64,
    pub tokens_refused: u64,
    pub roots: u64,
    pub replays: u64,
    pub tamperings: u64,
    pub stale_tags_dropped: u64,
    pub events_malformed: u64,
    pub threads_missing: u64,
}

/// The sessions, claims and container metadata of one Falco instance, all bounded.
#[derive(Debug)]
pub struct Tracker {
    config: Config,
    ring: KeyRing,
    sessions: BTreeMap<Tag, Session>,
    by_key: HashMap<String, Tag>,
    /// records an attacker can make without a token the webhook minted for them
    forgeable: BTreeSet<Tag>,
    next_tag: Tag,
    /// released at the next event, so that the exiting thread's own event still extracts
    pending_release: Vec<Tag>,
    /// first use: (session id, container) -> (root tid, root execve ns)
    claims: HashMap<(String, String), (i64, u64)>,
    claim_order: VecDeque<(String, String)>,
    containers: HashMap<String, ContainerMeta>,
    container_order: VecDeque<String>,
    verdicts: HashMap<Arc<str>, Result<Arc<Identity>, TokenError>>,
    /// keys name tokens by a keyed hash, not by their 700 bytes (random keys: no one can
    /// make two tokens share a record)
    hasher: RandomState,
    pub metrics: Metrics,
}

const UNSEEN_BELOW: &str = "session root not seen: the token was brought by a process inside the container, below no known session";
/// Seen on real Falco (issue #20's proof): when the kernel drops events, a process of a
/// genuine session can reach the plugin with no parent in the thread table and the
/// session's token in its inherited environment. It cannot be told from an entry, so a
/// failed root check on it is no proof of a replay.
const UNSEEN_NO_PARENT: &str = "session root not seen: the token is only in the environment of a process whose parent Falco does not know, so it may be a descendant of a session root Falco missed; not judged a replay";

/// A token a process brings in its argv (`VAR=value`) or its environment.
fn assignment<'a>(item: &'a [u8], variable: &str) -> Option<&'a [u8]> {
    let rest = item.strip_prefix(variable.as_bytes())?;
    rest.strip_prefix(b"=")
}

impl Tracker {
    pub fn new(config: Config, ring: KeyRing) -> Self {
        Self {
            config,
            ring,
            sessions: BTreeMap::new(),
            by_key: HashMap::new(),
            forgeable: BTreeSet::new(),
            next_tag: 1,
            pending_release: Vec::new(),
            claims: HashMap::new(),
            claim_order: VecDeque::new(),
            containers: HashMap::new(),
            container_order: VecDeque::new(),
            verdicts: HashMap::new(),
            hasher: RandomState::new(),
            metrics: Metrics::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    pub fn claims(&self) -> usize {
        self.claims.len()
    }

    pub fn containers(&self) -> usize {
        self.containers.len()
    }

    // -- records --------------------------------------------------------------------

    fn digest(&self, token: &str) -> u64 {
        self.hasher.hash_one(token)
    }

    fn acquire(&mut self, tag: Tag) {
        if let Some(s) = self.sessions.get_mut(&tag) {
            s.refs += 1;
        }
    }

    fn release(&mut self, tag: Tag) {
        let Some(s) = self.sessions.get_mut(&tag) else {
            return;
        };
        s.refs = s.refs.saturating_sub(1);
        if s.refs == 0 {
            self.pending_release.push(tag);
        }
    }

    /// Drop the records whose last thread went away at an earlier event.
    pub fn flush(&mut self) {
        while let Some(tag) = self.pending_release.pop() {
            if self.sessions.get(&tag).is_some_and(|s| s.refs == 0) {
                self.remove(tag);
                self.metrics.sessions_released += 1;
            }
        }
    }

    fn remove(&mut self, tag: Tag) {
        if let Some(s) = self.sessions.remove(&tag) {
            self.by_key.remove(&s.key);
            self.forgeable.remove(&tag);
            if let Kind::Tampered { owner, .. } = s.kind {
                self.release(owner);
            }
        }
    }

    /// The record for `key`, made by `make` unless it exists; it gains one reference.
    fn record(
        &mut self,
        key: String,
        token: Arc<str>,
        container_id: &str,
        root: Option<(i64, u64)>,
        make: impl FnOnce() -> Kind,
    ) -> Tag {
        if let Some(&tag) = self.by_key.get(&key) {
            if self.sessions.contains_key(&tag) {
                self.acquire(tag);
                return tag;
            }
        }
        let kind = make();
        let tag = self.next_tag;
        self.next_tag += 1;
        if !matches!(kind, Kind::Root { .. }) {
            self.forgeable.insert(tag);
        }
        if let Kind::Tampered { owner, .. } = &kind {
            let owner = *owner;
            self.acquire(owner);
        }
        self.by_key.insert(key.clone(), tag);
        self.sessions.insert(
            tag,
            Session {
                kind,
                token,
                container_id: container_id.to_owned(),
                key,
                refs: 1,
                root,
            },
        );
        self.metrics.sessions_created += 1;
        while self.sessions.len() > self.config.max_sessions.max(1) {
            // a flood of forged tokens goes first; genuine roots only when nothing else is left
            let victim = self
                .forgeable
                .iter()
                .copied()
                .find(|t| *t != tag)
                .or_else(|| self.sessions.keys().copied().find(|t| *t != tag));
            let Some(victim) = victim else { break };
            self.remove(victim);
            self.metrics.sessions_evicted += 1;
        }
        tag
    }

    fn verdict(&mut self, token: &Arc<str>) -> Result<Arc<Identity>, TokenError> {
        if let Some(v) = self.verdicts.get(token) {
            return v.clone();
        }
        let verdict = token::verify_signed(token, &self.ring).map(Arc::new);
        match verdict {
            Ok(_) => self.metrics.tokens_verified += 1,
            Err(_) => self.metrics.tokens_refused += 1,
        }
        if self.verdicts.len() >= self.config.max_verdicts.max(1) {
            self.verdicts.clear();
        }
        self.verdicts.insert(Arc::clone(token), verdict.clone());
        verdict
    }

    /// The identity a token asserts at `ts_ns`, or why it is refused.
    fn check(&mut self, token: &Arc<str>, ts_ns: u64) -> Result<Arc<Identity>, TokenError> {
        let identity = self.verdict(token)?;
        let now = i64::try_from(ts_ns / 1_000_000_000).unwrap_or(i64::MAX);
        token::check_not_future(&identity, now, self.config.clock_skew_seconds)?;
        Ok(identity)
    }

    /// Why a root whose execve ran at `ts_ns` cannot be the exec that minted `iat`.
    pub fn freshness_problem(&self, issued_at: i64, ts_ns: u64) -> String {
        let start = i64::try_from(ts_ns / 1_000_000_000).unwrap_or(i64::MAX);
        let (skew, fresh) = (self.config.root_skew_seconds, self.config.fresh_seconds);
        if start < issued_at.saturating_sub(skew) {
            return format!(
                "stale: the session root started {}s before the token was issued (allowed skew {skew}s)",
                issued_at.saturating_sub(start)
            );
        }
        if start > issued_at.saturating_add(fresh) {
            return format!(
                "stale: the session root started {}s after the token was issued (freshness window {fresh}s)",
                start.saturating_sub(issued_at)
            );
        }
        String::new()
    }

    /// First use: `root` claims (session id, container) unless another root holds it.
    /// Returns the holder. Claims older than the freshness window can go: a token that old
    /// is stale anyway, so the bound never lets a replay through.
    pub fn claim(&mut self, sid: &str, container: &str, root: (i64, u64)) -> (i64, u64) {
        let key = (sid.to_owned(), container.to_owned());
        if let Some(holder) = self.claims.get(&key) {
            return *holder;
        }
        self.claims.insert(key.clone(), root);
        self.claim_order.push_back(key);
        while self.claims.len() > self.config.max_claims.max(1) {
            let Some(old) = self.claim_order.pop_front() else {
                break;
            };
            self.claims.remove(&old);
            self.metrics.claims_evicted += 1;
        }
        root
    }

    // -- learning -------------------------------------------------------------------

    /// A container's metadata arrived (the container plugin's `container` async event).
    pub fn container_added(&mut self, id: String, meta: ContainerMeta) {
        if self.containers.insert(id.clone(), meta).is_none() {
            self.container_order.push_back(id);
        }
        while self.containers.len() > self.config.max_containers.max(1) {
            let Some(old) = self.container_order.pop_front() else {
                break;
            };
            self.containers.remove(&old);
            self.metrics.containers_evicted += 1;
        }
    }

    pub fn container_removed(&mut self, id: &str) {
        if self.containers.remove(id).is_some() {
            self.container_order.retain(|c| c != id);
        }
    }

    /// The child of a clone/fork/vfork/clone3 inherits its parent's session. Both the
    /// parent's exit (`res` = child) and the child's (`res` = 0) come, in either order: the
    /// first one tags the child, the other finds it tagged and leaves it alone.
    pub fn on_clone(&mut self, threads: &mut impl ThreadTable, tid: i64, ev: &crate::event::Clone) {
        self.flush();
        if ev.res < 0 {
            return;
        }
        let (child, parent) = if ev.res == 0 {
            let parent = if ev.flags & crate::event::PPM_CL_CLONE_THREAD != 0 {
                ev.pid // a thread's creator shares its process: the leader has the tag
            } else {
                ev.ptid
            };
            (tid, parent)
        } else {
            (ev.res, tid)
        };
        let Some(child_tag) = threads.tag(child) else {
            self.metrics.threads_missing += 1;
            return;
        };
        if child_tag != 0 {
            return;
        }
        let parent_tag = threads.tag(parent).filter(|t| *t != 0).or_else(|| {
            // a new thread's creator may be any thread of the process: its leader has the tag
            let pid = threads.thread(child)?.pid;
            (pid != child)
                .then(|| threads.tag(pid))?
                .filter(|t| *t != 0)
        });
        if let Some(tag) = parent_tag {
            if self.sessions.contains_key(&tag) && threads.set_tag(child, tag) {
                self.acquire(tag);
            }
        }
    }

    /// A thread exits: its reference goes (the record itself at the next event).
    pub fn on_exit(&mut self, threads: &impl ThreadView, tid: i64) {
        self.flush();
        if let Some(tag) = threads.tag(tid).filter(|t| *t != 0) {
            self.release(tag);
        }
    }

    /// A successful execve: a session may start here, and inside one, a different token
    /// is tampering. `env_full` is asked for the whole environment only when the event's
    /// was cut and carries no token (the libs read `/proc/<pid>/environ` then).
    pub fn on_exec(
        &mut self,
        threads: &mut impl ThreadTable,
        tid: i64,
        ts_ns: u64,
        ev: &crate::event::Exec<'_>,
        env_full: impl FnOnce() -> Option<Vec<String>>,
    ) {
        self.flush();
        if ev.res != 0 {
            return;
        }
        let Some(me) = threads.thread(tid) else {
            self.metrics.threads_missing += 1;
            return;
        };
        let mut tag = me.tag;
        if tag != 0 && !self.tag_fits(tag, &me.container_id) {
            // the tid was reused by a process whose clone Falco did not deliver
            self.release(tag);
            threads.set_tag(tid, 0);
            self.metrics.stale_tags_dropped += 1;
            tag = 0;
        }
        let parent = threads.thread(ev.ptid);
        // no inheritance from the parent here: a child forked before its parent's session
        // began is not in it, and only the clone event can tell the two apart
        let variable = self.config.variable.clone();
        let webhook_form = crate::event::basename(ev.exe) == b"env"
            && ev
                .args
                .first()
                .and_then(|a| assignment(a, &variable))
                .is_some();
        let arg_tokens: Vec<&[u8]> = ev
            .args
            .iter()
            .filter_map(|a| assignment(a, &variable))
            .collect();
        let mut env_token: Option<String> = ev
            .env
            .iter()
            .rev() // the last assignment wins, as in getenv after `env VAR=x`
            .find_map(|e| assignment(e, &variable))
            .map(|v| String::from_utf8_lossy(v).into_owned());
        let container_id = me.container_id.clone();
        // an entry of its container: its parent runs elsewhere (the runtime), or is unknown
        let entry = match &parent {
            None => true,
            Some(p) => container_id.is_empty() || p.container_id != container_id,
        };
        if env_token.is_none() && ev.env_cut && (tag != 0 || entry) {
            env_token = env_full().and_then(|env| {
                env.iter()
                    .rev()
                    .find_map(|e| assignment(e.as_bytes(), &variable))
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            });
        }
        if tag == 0 {
            let root_token = if webhook_form {
                arg_tokens
                    .first()
                    .map(|t| String::from_utf8_lossy(t).into_owned())
            } else if entry {
                env_token.clone()
            } else {
                None
            };
            // the webhook's own execve carries the token in argv: that is a root wherever
            // it runs; a token inherited in the environment below an unknown parent is not
            let weak = !webhook_form && parent.is_none();
            let new = if let Some(token) = root_token {
                Some(self.root(tid, ts_ns, &token, &container_id, entry, weak))
            } else {
                // a token inside the container below no session this plugin knows
                env_token
                    .or_else(|| {
                        arg_tokens
                            .first()
                            .map(|t| String::from_utf8_lossy(t).into_owned())
                    })
                    .map(|token| self.unseen(&token, ts_ns, &container_id, UNSEEN_BELOW))
            };
            if let Some(new) = new {
                if !threads.set_tag(tid, new) {
                    self.release(new);
                }
            }
            return;
        }
        // inside a session: any other token, in argv or in the environment, is tampering
        let Some(owner) = self.owner_root(tag) else {
            return;
        };
        let root_token = self.sessions.get(&owner).map(|s| Arc::clone(&s.token));
        let current_claim = self.sessions.get(&tag).map(|s| Arc::clone(&s.token));
        let brought = arg_tokens
            .iter()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .chain(env_token)
            .find(|t| Some(t.as_str()) != root_token.as_deref());
        if let Some(other) = brought {
            if Some(other.as_str()) == current_claim.as_deref() {
                return; // already flagged with this very claim
            }
            let new = self.tampered(owner, &other, ts_ns, &container_id);
            if threads.set_tag(tid, new) {
                self.release(tag);
            } else {
                self.release(new);
            }
        }
    }

    /// Whether a thread in `container_id` may carry `tag` (a pid reused in another
    /// container may not).
    fn tag_fits(&self, tag: Tag, container_id: &str) -> bool {
        match self.sessions.get(&tag) {
            None => true, // evicted: extraction says so
            Some(s) => {
                s.container_id.is_empty()
                    || container_id.is_empty()
                    || s.container_id == container_id
            }
        }
    }

    /// The root record that a tag's session belongs to, if it is a root at all.
    fn owner_root(&self, tag: Tag) -> Option<Tag> {
        match &self.sessions.get(&tag)?.kind {
            Kind::Root { .. } => Some(tag),
            Kind::Tampered { owner, .. } => Some(*owner),
            Kind::Invalid { .. } | Kind::Unseen { .. } => None,
        }
    }

    fn invalid(&mut self, token: &str, container_id: &str, err: &TokenError) -> Tag {
        let reason = err.to_string();
        self.record(
            format!("invalid:{container_id}:{:x}", self.digest(token)),
            token.into(),
            container_id,
            None,
            || Kind::Invalid { reason },
        )
    }

    fn unseen(&mut self, token: &str, ts_ns: u64, container_id: &str, why: &str) -> Tag {
        let token: Arc<str> = token.into();
        match self.check(&token, ts_ns) {
            Err(err) => self.invalid(&token, container_id, &err),
            Ok(identity) => {
                let reason = why.to_owned();
                self.record(
                    format!("unseen:{container_id}:{:x}", self.digest(&token)),
                    token,
                    container_id,
                    None,
                    || Kind::Unseen { identity, reason },
                )
            }
        }
    }

    /// A session root candidate: judged once, here, with the execve's own time.
    /// `weak`: the token came from the environment of a process whose parent is unknown;
    /// such a root is believed when its checks pass, and is `unverified` (not `replayed`)
    /// when they fail (see `UNSEEN_NO_PARENT`).
    fn root(
        &mut self,
        tid: i64,
        ts_ns: u64,
        token: &str,
        container_id: &str,
        entry: bool,
        weak: bool,
    ) -> Tag {
        let token: Arc<str> = token.into();
        let identity = match self.check(&token, ts_ns) {
            Ok(identity) => identity,
            Err(err) => return self.invalid(&token, container_id, &err),
        };
        let mut problem = if entry {
            self.freshness_problem(identity.issued_at, ts_ns)
        } else {
            "not a session root: it runs below a process of its own container, not below the container runtime".to_string()
        };
        if problem.is_empty() {
            let holder = self.claim(&identity.session_id, &identity.container, (tid, ts_ns));
            // the whole (tid, start) pair: a tid the kernel reused, even within the
            // freshness window, is another process and may not ride on the first one's claim
            if holder != (tid, ts_ns) {
                problem = format!(
                    "reused: session {} was already rooted by pid {}",
                    shown(&identity.session_id, 64),
                    holder.0
                );
            }
        }
        if !problem.is_empty() && weak {
            return self.unseen(&token, ts_ns, container_id, UNSEEN_NO_PARENT);
        }
        if problem.is_empty() {
            self.metrics.roots += 1;
            let key = format!("root:{}:{}", identity.session_id, identity.container);
            self.record(key, token, container_id, Some((tid, ts_ns)), || {
                Kind::Root { identity, problem }
            })
        } else {
            self.metrics.replays += 1;
            // one record per replayed root process (each is its own session for the consumer);
            // records an attacker makes go first and leave with their process
            let key = format!(
                "replay:{container_id}:{tid}:{ts_ns}:{:x}",
                self.digest(&token)
            );
            let tag = self.record(key, token, container_id, Some((tid, ts_ns)), || {
                Kind::Root { identity, problem }
            });
            self.forgeable.insert(tag);
            tag
        }
    }

    fn tampered(&mut self, owner: Tag, other: &str, ts_ns: u64, container_id: &str) -> Tag {
        self.metrics.tamperings += 1;
        let token: Arc<str> = other.into();
        let claim = self.check(&token, ts_ns).ok();
        let variable = self.config.variable.clone();
        let key = format!("tampered:{owner}:{:x}", self.digest(other));
        self.record(key, token, container_id, None, || Kind::Tampered {
            owner,
            claim,
            reason: format!(
                "a process of the session brought a different {variable} than its root"
            ),
        })
    }

    /// Sessions open when Falco started (capture listening): one thread of the table.
    /// `start_ns` is the process's start (from `/proc`), `None` when it is unknown.
    pub fn on_existing(&mut self, threads: &mut impl ThreadTable, existing: &[Existing]) {
        self.flush();
        let by_tid: HashMap<i64, &Existing> = existing.iter().map(|e| (e.tid, e)).collect();
        for thread in existing {
            let Some(token) = thread.token.as_deref() else {
                continue;
            };
            let Some(info) = threads.thread(thread.tid) else {
                continue;
            };
            if info.tag != 0 {
                continue; // tagged already (the capture was reopened)
            }
            // the root is the topmost token-bearing ancestor in the same container
            let mut root = thread;
            let mut steps = 0;
            while let Some(parent) = by_tid.get(&root.ptid) {
                if parent.token.is_none() || parent.container_id != root.container_id || steps > 64
                {
                    break;
                }
                root = parent;
                steps += 1;
            }
            let Some(root_token) = root.token.as_deref() else {
                continue;
            };
            let entry = match by_tid.get(&root.ptid) {
                None => true,
                Some(p) => root.container_id.is_empty() || p.container_id != root.container_id,
            };
            let root_tag = match root.start_ns {
                Some(start) => {
                    self.root(root.pid, start, root_token, &root.container_id, entry, false)
                }
                None => self.unseen(
                    root_token,
                    u64::MAX / 2,
                    &root.container_id,
                    "session open when Falco started: the root's start time is unknown, so its freshness cannot be checked",
                ),
            };
            let tag = if token != root_token && self.owner_root(root_tag).is_some() {
                let t = self.tampered(root_tag, token, u64::MAX / 2, &thread.container_id);
                self.release(root_tag);
                t
            } else {
                root_tag
            };
            if !threads.set_tag(thread.tid, tag) {
                self.release(tag);
            }
        }
    }

    // -- extraction -----------------------------------------------------------------

    /// Who the thread `tid` acts for, as the `whoexec.*` fields say it.
    pub fn attribution(&self, threads: &impl ThreadView, tid: i64) -> Option<Attribution> {
        let me = threads.thread(tid)?;
        let mut tag = me.tag;
        if tag == 0 && me.pid != tid {
            // a thread whose clone was missed: its process's leader speaks for it
            tag = threads.thread(me.pid).map(|l| l.tag).unwrap_or(0);
        }
        if tag == 0 {
            return Some(Attribution::none());
        }
        let Some(session) = self.sessions.get(&tag) else {
            return Some(Attribution {
                status: Status::Unverified,
                reason: "the session's record was evicted (the plugin's session table is full)"
                    .into(),
                ..Attribution::none()
            });
        };
        if !self.tag_fits(tag, &me.container_id) {
            return Some(Attribution::none());
        }
        Some(self.judge(tag, session, &me.container_id))
    }

    fn judge(&self, tag: Tag, session: &Session, container_id: &str) -> Attribution {
        let token = Some(Arc::clone(&session.token));
        match &session.kind {
            Kind::Invalid { reason } => Attribution {
                status: Status::Unverified,
                reason: reason.clone(),
                token,
                ..Attribution::none()
            },
            Kind::Unseen { identity, reason } => Attribution {
                status: Status::Unverified,
                claimed: Some(Arc::clone(identity)),
                reason: reason.clone(),
                token,
                ..Attribution::none()
            },
            Kind::Root { identity, problem } if !problem.is_empty() => Attribution {
                status: Status::Replayed,
                claimed: Some(Arc::clone(identity)),
                reason: problem.clone(),
                token,
                root: session.root,
                ..Attribution::none()
            },
            Kind::Root { identity, .. } => Attribution {
                root: session.root,
                ..self.bind(identity, container_id, token)
            },
            Kind::Tampered {
                owner,
                claim,
                reason,
            } => {
                let Some(root) = self.sessions.get(owner).filter(|_| *owner != tag) else {
                    return Attribution {
                        status: Status::Unverified,
                        reason:
                            "the session's record was evicted (the plugin's session table is full)"
                                .into(),
                        claimed: claim.clone(),
                        ..Attribution::none()
                    };
                };
                let owner_view = self.judge(*owner, root, container_id);
                if owner_view.status != Status::Verified {
                    return owner_view;
                }
                Attribution {
                    status: Status::Tampered,
                    claimed: claim.clone(),
                    reason: reason.clone(),
                    ..owner_view
                }
            }
        }
    }

    /// A root's token is bound to its namespace, pod, pod UID and container. A mismatch is
    /// a replay; metadata that is not there (yet) cannot vouch for it, so nobody is named.
    fn bind(
        &self,
        identity: &Arc<Identity>,
        container_id: &str,
        token: Option<Arc<str>>,
    ) -> Attribution {
        let unverified = |reason: String| Attribution {
            status: Status::Unverified,
            claimed: Some(Arc::clone(identity)),
            reason,
            token: token.clone(),
            identity: None,
            root: None,
        };
        let Some(meta) = self.containers.get(container_id) else {
            return unverified(format!(
                "binding unknown: no Kubernetes metadata for container '{}' (is the container plugin loaded before whoexec?)",
                shown(container_id, 64)
            ));
        };
        let (Some(ns), Some(pod)) = (&meta.namespace, &meta.pod) else {
            return unverified(
                "binding unknown: the container has no pod namespace and name labels".into(),
            );
        };
        let mut checks = vec![
            ("namespace", &identity.namespace, Some(ns)),
            ("pod", &identity.pod, Some(pod)),
        ];
        if let Some(uid) = &identity.pod_uid {
            checks.push(("pod uid", uid, meta.pod_uid.as_ref()));
        }
        checks.push(("container", &identity.container, meta.container.as_ref()));
        let mut unchecked = Vec::new();
        for (what, minted, seen) in checks {
            match seen {
                Some(seen) if !minted.is_empty() && minted != seen => {
                    return Attribution {
                        status: Status::Replayed,
                        claimed: Some(Arc::clone(identity)),
                        reason: format!(
                            "bound elsewhere: token minted for {what} '{}' is used in {what} '{}'",
                            shown(minted, 64),
                            shown(seen, 64)
                        ),
                        token,
                        identity: None,
                        root: None,
                    };
                }
                Some(_) if !minted.is_empty() => {}
                _ => unchecked.push(what),
            }
        }
        let reason = if unchecked.is_empty() {
            String::new()
        } else {
            format!(
                "bound by namespace and pod; not checked: {}",
                unchecked.join(", ")
            )
        };
        Attribution {
            status: Status::Verified,
            identity: Some(Arc::clone(identity)),
            claimed: None,
            reason,
            token,
            root: None,
        }
    }
}

/// One thread of the table at capture start, with what `/proc` says of its process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Existing {
    pub tid: i64,
    pub pid: i64,
    pub ptid: i64,
    pub container_id: String,
    /// the token in its argv (webhook form) or environment
    pub token: Option<String>,
    pub start_ns: Option<u64>,
}

/// The token a thread at capture start carries: the webhook's argv form first (a root
/// still running `env`), else its environment (the variable `env` set before it exec'd).
pub fn existing_token(
    exe: &[u8],
    args: &[Vec<u8>],
    env: &[Vec<u8>],
    variable: &str,
) -> Option<String> {
    let from_args = (crate::event::basename(exe) == b"env")
        .then(|| args.first().and_then(|a| assignment(a, variable)))
        .flatten();
    from_args
        .or_else(|| env.iter().rev().find_map(|e| assignment(e, variable)))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}
