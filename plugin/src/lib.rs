//! whoexec as a Falco plugin (`libwhoexec.so`): the thin adapter between Falco's plugin API
//! (the `falco_plugin` SDK) and the pure core in [`session`], [`token`] and [`event`].
//!
//! Capabilities, all on the `syscall` source:
//! - parsing: execve/execveat, clone/fork/vfork/clone3 and procexit events tag Falco's
//!   `threads` table (a `whoexec_session` field added to it, as the container plugin adds
//!   `container_id`); the container plugin's `container` async events bring Kubernetes
//!   metadata;
//! - capture listening: at capture start, sessions already open are found in the thread
//!   table (`/proc` gives their start times);
//! - extraction: the `whoexec.*` fields, each `addOutput` (Falco >= 0.40 appends them to
//!   every alert with `append_output: [suggested_output: true]`, its default).
//!
//! The SDK does not catch panics, and a panic unwinding into Falco's C++ would abort it:
//! every entry point runs inside `catch_unwind`, and the core never unwraps its input.

pub mod event;
pub mod session;
pub mod token;

use falco_plugin::anyhow::{self, Error};
use falco_plugin::base::{Json, Metric, MetricLabel, MetricType, MetricValue, Plugin};
use falco_plugin::event::events::{AnyEventPayload, RawEvent};
use falco_plugin::extract::{field, EventInput, ExtractFieldInfo, ExtractPlugin, ExtractRequest};
use falco_plugin::listen::{CaptureListenInput, CaptureListenPlugin};
use falco_plugin::parse::{ParseInput, ParsePlugin};
use falco_plugin::tables::import::{Entry, Field, Table, TableMetadata};
use falco_plugin::tables::{TableReader, TableWriter, TablesInput};
use falco_plugin::{capture_listen_plugin, extract_plugin, parse_plugin, plugin};
use schemars::JsonSchema;
use serde::Deserialize;
use session::{Attribution, Config, Existing, Tag, ThreadInfo, ThreadTable, ThreadView, Tracker};
use std::ffi::{CStr, CString};
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// `init_config` (see docs/falco-plugin.md).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Trusted public keys: PEM (`identity.pub`) or raw base64.
    #[serde(default)]
    pub public_keys: Vec<String>,
    /// Files holding one PEM public key each (the Secret mounted into Falco's pod).
    #[serde(default)]
    pub public_key_files: Vec<String>,
    /// The variable the webhook sets (WHOEXEC_IDENTITY).
    pub variable: Option<String>,
    /// A root is believed when its execve ran within [iat - root_skew, iat + fresh] s.
    pub fresh_seconds: Option<i64>,
    pub root_skew_seconds: Option<i64>,
    /// How far `iat` may lie after the event's time.
    pub clock_skew_seconds: Option<i64>,
    /// Caps of the session records (16,384), claims (65,536) and containers (16,384).
    pub max_sessions: Option<usize>,
    pub max_claims: Option<usize>,
    pub max_containers: Option<usize>,
}

impl PluginConfig {
    fn tracker(&self) -> Result<Tracker, Error> {
        let mut keys = Vec::new();
        for (n, text) in self.public_keys.iter().enumerate() {
            keys.push(
                token::parse_public_key(text)
                    .map_err(|e| anyhow::anyhow!("public_keys[{n}]: {e}"))?,
            );
        }
        for path in &self.public_key_files {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("public_key_files: cannot read {path}: {e}"))?;
            keys.push(token::parse_public_key(&text).map_err(|e| anyhow::anyhow!("{path}: {e}"))?);
        }
        if keys.is_empty() {
            anyhow::bail!("no public key: set public_keys or public_key_files in init_config");
        }
        let defaults = Config::default();
        let config = Config {
            variable: self.variable.clone().unwrap_or(defaults.variable),
            fresh_seconds: self.fresh_seconds.unwrap_or(defaults.fresh_seconds),
            root_skew_seconds: self.root_skew_seconds.unwrap_or(defaults.root_skew_seconds),
            clock_skew_seconds: self
                .clock_skew_seconds
                .unwrap_or(defaults.clock_skew_seconds),
            max_sessions: self.max_sessions.unwrap_or(defaults.max_sessions),
            max_claims: self.max_claims.unwrap_or(defaults.max_claims),
            max_containers: self.max_containers.unwrap_or(defaults.max_containers),
            max_verdicts: defaults.max_verdicts,
        };
        let valid_name = !config.variable.is_empty()
            && config
                .variable
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid_name || config.fresh_seconds < 1 || config.root_skew_seconds < 0 {
            anyhow::bail!("variable must be a name, fresh_seconds >= 1 and root_skew_seconds >= 0");
        }
        Ok(Tracker::new(config, token::KeyRing::new(keys)))
    }
}

// -- Falco's threads table -------------------------------------------------------------

type Str = Entry<Arc<StrMetadata>>;
type StrTable = Table<u64, Str>;

/// `threads[tid].args` and `.env` are tables of strings keyed by index (plugin API 3.5)
#[derive(TableMetadata)]
#[entry_type(Str)]
struct StrMetadata {
    value: Field<CStr, Str>,
}

type Thread = Entry<Arc<ThreadMetadata>>;
type ThreadsTable = Table<i64, Thread>;

#[derive(TableMetadata)]
#[entry_type(Thread)]
struct ThreadMetadata {
    tid: Field<i64, Thread>,
    pid: Field<i64, Thread>,
    ptid: Field<i64, Thread>,
    exe: Field<CStr, Thread>,
    args: Field<StrTable, Thread>,
    env: Field<StrTable, Thread>,
}

struct Threads {
    table: ThreadsTable,
    /// the container plugin's field; added (same name, same type) when it is not loaded yet
    container_id: Field<CStr, Thread>,
    tag: Field<u64, Thread>,
}

struct View<'a, R: TableReader, W: TableWriter> {
    threads: &'a Threads,
    reader: &'a R,
    writer: Option<&'a W>,
}

impl<R: TableReader, W: TableWriter> ThreadView for View<'_, R, W> {
    fn thread(&self, tid: i64) -> Option<ThreadInfo> {
        let entry = self.threads.table.get_entry(self.reader, &tid).ok()?;
        Some(ThreadInfo {
            pid: entry.get_pid(self.reader).ok()?,
            ptid: entry.get_ptid(self.reader).unwrap_or(-1),
            tag: entry
                .read_field(self.reader, &self.threads.tag)
                .unwrap_or(0),
            container_id: entry
                .read_field(self.reader, &self.threads.container_id)
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default(),
        })
    }

    fn tag(&self, tid: i64) -> Option<Tag> {
        let entry = self.threads.table.get_entry(self.reader, &tid).ok()?;
        Some(
            entry
                .read_field(self.reader, &self.threads.tag)
                .unwrap_or(0),
        )
    }
}

impl<R: TableReader, W: TableWriter> ThreadTable for View<'_, R, W> {
    fn set_tag(&mut self, tid: i64, tag: Tag) -> bool {
        let Some(writer) = self.writer else {
            return false;
        };
        let Ok(entry) = self.threads.table.get_entry(self.reader, &tid) else {
            return false;
        };
        entry.write_field(writer, &self.threads.tag, &tag).is_ok()
    }
}

fn strings(table: &StrTable, reader: &impl TableReader) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let _ = table.iter_entries_mut(reader, |entry| {
        if let Ok(value) = entry.get_value(reader) {
            out.push(value.to_bytes().to_vec());
        }
        if out.len() > 4096 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    out
}

/// A process's start from `/proc/<pid>/stat` (clock ticks after boot) and `/proc/stat`'s
/// `btime`. Falco's table does not expose `clone_ts`; libs read `/proc` under `HOST_ROOT`.
fn proc_start_ns(pid: i64) -> Option<u64> {
    let root = std::env::var("HOST_ROOT").unwrap_or_default();
    let stat = std::fs::read_to_string(format!("{root}/proc/{pid}/stat")).ok()?;
    // the command name may hold spaces and parentheses: fields start after the last ')'
    let after = stat.rsplit_once(')')?.1;
    let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let boot = std::fs::read_to_string(format!("{root}/proc/stat")).ok()?;
    let btime: u64 = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // USER_HZ is 100 on every Linux architecture Falco supports
    btime
        .checked_mul(1_000_000_000)?
        .checked_add(ticks.checked_mul(10_000_000)?)
}

// -- the plugin --------------------------------------------------------------------------

pub struct WhoexecPlugin {
    tracker: Tracker,
    threads: Threads,
    panics: u64,
}

/// The events parsed: a marker type that tells Falco which event types to send.
pub struct Parsed<'a>(RawEvent<'a>);

impl AnyEventPayload for Parsed<'_> {
    const SOURCES: &'static [Option<&'static str>] = &[Some("syscall")];
    const EVENT_TYPES: &'static [u16] = &event::PARSED_EVENT_TYPES;
}

impl<'a, 'b> From<&'b RawEvent<'a>> for Parsed<'a> {
    fn from(raw: &'b RawEvent<'a>) -> Self {
        Parsed(RawEvent {
            metadata: raw.metadata.clone(),
            len: raw.len,
            event_type: raw.event_type,
            nparams: raw.nparams,
            payload: raw.payload,
        })
    }
}

/// Every syscall event, for extraction (an empty type list means all of them, but only
/// with the source named: without it, Falco would offer the fields for plugin events only).
pub struct Syscall<'a>(RawEvent<'a>);

impl AnyEventPayload for Syscall<'_> {
    const SOURCES: &'static [Option<&'static str>] = &[Some("syscall")];
    const EVENT_TYPES: &'static [u16] = &[];
}

impl<'a, 'b> From<&'b RawEvent<'a>> for Syscall<'a> {
    fn from(raw: &'b RawEvent<'a>) -> Self {
        Syscall(RawEvent {
            metadata: raw.metadata.clone(),
            len: raw.len,
            event_type: raw.event_type,
            nparams: raw.nparams,
            payload: raw.payload,
        })
    }
}

impl Plugin for WhoexecPlugin {
    const NAME: &'static CStr = c"whoexec";
    const PLUGIN_VERSION: &'static CStr = c"0.1.0";
    const DESCRIPTION: &'static CStr =
        c"The Kubernetes user of a kubectl exec session (whoexec identity token) as a field of every alert";
    const CONTACT: &'static CStr = c"https://github.com/whoexec/whoexec";
    type ConfigType = Json<PluginConfig>;

    fn new(input: Option<&TablesInput>, Json(config): Self::ConfigType) -> Result<Self, Error> {
        let input = input.ok_or_else(|| anyhow::anyhow!("Falco gave no table access"))?;
        let tracker = config.tracker()?;
        let table: ThreadsTable = input.get_table(c"threads")?;
        let container_id = table
            .get_field(input, c"container_id")
            .or_else(|_| table.add_field(input, c"container_id"))?;
        let tag = table.add_field(input, c"whoexec_session")?;
        Ok(Self {
            tracker,
            threads: Threads {
                table,
                container_id,
                tag,
            },
            panics: 0,
        })
    }

    fn set_config(&mut self, Json(config): Self::ConfigType) -> Result<(), Error> {
        // a new key ring or limits; the sessions learnt so far are kept only if valid
        let mut tracker = config.tracker()?;
        std::mem::swap(&mut self.tracker, &mut tracker);
        Ok(())
    }

    fn get_metrics(&mut self) -> impl IntoIterator<Item = Metric> {
        let m = &self.tracker.metrics;
        let gauge = |name: &'static CStr, v: usize| {
            MetricLabel::new(name, MetricType::NonMonotonic).with_value(MetricValue::U64(v as u64))
        };
        let counter = |name: &'static CStr, v: u64| {
            MetricLabel::new(name, MetricType::Monotonic).with_value(MetricValue::U64(v))
        };
        vec![
            gauge(c"sessions", self.tracker.sessions()),
            gauge(c"claims", self.tracker.claims()),
            gauge(c"containers", self.tracker.containers()),
            counter(c"sessions_created", m.sessions_created),
            counter(c"sessions_released", m.sessions_released),
            counter(c"sessions_evicted", m.sessions_evicted),
            counter(c"claims_evicted", m.claims_evicted),
            counter(c"containers_evicted", m.containers_evicted),
            counter(c"tokens_verified", m.tokens_verified),
            counter(c"tokens_refused", m.tokens_refused),
            counter(c"roots", m.roots),
            counter(c"replays", m.replays),
            counter(c"tamperings", m.tamperings),
            counter(c"stale_tags_dropped", m.stale_tags_dropped),
            counter(c"events_malformed", m.events_malformed),
            counter(c"threads_missing", m.threads_missing),
            counter(c"panics_caught", self.panics),
        ]
    }
}

impl WhoexecPlugin {
    fn parse(&mut self, raw: &RawEvent<'_>, input: &ParseInput) {
        let mut view = View {
            threads: &self.threads,
            reader: &input.reader,
            writer: Some(&input.writer),
        };
        let tid = raw.metadata.tid;
        match raw.event_type {
            event::EXECVE_19_X | event::EXECVEAT_X => {
                let Some(exec) = event::exec(raw.payload, raw.nparams) else {
                    self.tracker.metrics.events_malformed += 1;
                    return;
                };
                let threads = &self.threads;
                let reader = &input.reader;
                let env_full = || {
                    let entry = threads.table.get_entry(reader, &tid).ok()?;
                    let env = entry.get_env(reader).ok()?;
                    let env = strings(&env, reader);
                    Some(
                        env.into_iter()
                            .map(|e| String::from_utf8_lossy(&e).into_owned())
                            .collect(),
                    )
                };
                self.tracker
                    .on_exec(&mut view, tid, raw.metadata.ts, &exec, env_full);
            }
            event::CLONE_20_X | event::FORK_20_X | event::VFORK_20_X | event::CLONE3_X => {
                match event::clone(raw.payload, raw.nparams) {
                    Some(clone) => self.tracker.on_clone(&mut view, tid, &clone),
                    None => self.tracker.metrics.events_malformed += 1,
                }
            }
            event::PROCEXIT_1_E => self.tracker.on_exit(&view, tid),
            event::ASYNCEVENT_E => {
                let Some(ev) = event::async_event(raw.payload, raw.nparams) else {
                    self.tracker.metrics.events_malformed += 1;
                    return;
                };
                let added = ev.name == b"container";
                if !added && ev.name != b"container_removed" {
                    return; // another plugin's async event
                }
                match session::container_from_json(ev.data) {
                    Some((id, meta)) if added => self.tracker.container_added(id, meta),
                    Some((id, _)) => self.tracker.container_removed(&id),
                    None => self.tracker.metrics.events_malformed += 1,
                }
            }
            _ => {}
        }
    }

    fn attribution(&mut self, req: &mut ExtractRequest<Self>) -> Option<Attribution> {
        if req.context.is_none() {
            let Syscall(raw) = req.event.event().ok()?;
            let tid = raw.metadata.tid;
            let view: View<'_, _, falco_plugin::tables::LazyTableWriter> = View {
                threads: &self.threads,
                reader: req.table_reader,
                writer: None,
            };
            let tracker = &self.tracker;
            let found = catch_unwind(AssertUnwindSafe(|| tracker.attribution(&view, tid)));
            let found = found.unwrap_or_else(|_| {
                self.panics += 1;
                None
            });
            *req.context = Some(found);
        }
        req.context.clone().flatten()
    }

    fn text(value: Option<&str>) -> Option<CString> {
        // a NUL cannot reach Falco's strings; such a value is no value
        value.and_then(|v| CString::new(v).ok())
    }

    /// One text field of the event's attribution: `pick` chooses it, and no attribution or no
    /// value is an empty field.
    fn text_field(
        &mut self,
        req: &mut ExtractRequest<Self>,
        pick: impl FnOnce(&Attribution) -> Option<&str>,
    ) -> Result<Option<CString>, Error> {
        let a = self.attribution(req);
        Ok(Self::text(a.as_ref().and_then(pick)))
    }

    fn extract_user(&mut self, mut req: ExtractRequest<Self>) -> Result<Option<CString>, Error> {
        self.text_field(&mut req, |a| a.identity.as_ref().map(|i| i.user.as_str()))
    }

    fn extract_uid(&mut self, mut req: ExtractRequest<Self>) -> Result<Option<CString>, Error> {
        self.text_field(&mut req, |a| a.identity.as_ref().map(|i| i.uid.as_str()))
    }

    fn extract_groups(
        &mut self,
        mut req: ExtractRequest<Self>,
    ) -> Result<Option<Vec<CString>>, Error> {
        let a = self.attribution(&mut req);
        Ok(a.and_then(|a| a.identity).map(|i| {
            i.groups
                .iter()
                .filter_map(|g| CString::new(g.as_str()).ok())
                .collect()
        }))
    }

    fn extract_session(&mut self, mut req: ExtractRequest<Self>) -> Result<Option<CString>, Error> {
        self.text_field(&mut req, |a| {
            a.identity.as_ref().map(|i| i.session_id.as_str())
        })
    }

    fn extract_attribution(
        &mut self,
        mut req: ExtractRequest<Self>,
    ) -> Result<Option<CString>, Error> {
        self.text_field(&mut req, |a| Some(a.status.as_str()))
    }

    fn extract_claimed_user(
        &mut self,
        mut req: ExtractRequest<Self>,
    ) -> Result<Option<CString>, Error> {
        self.text_field(&mut req, |a| a.claimed.as_ref().map(|i| i.user.as_str()))
    }

    fn extract_claimed_session(
        &mut self,
        mut req: ExtractRequest<Self>,
    ) -> Result<Option<CString>, Error> {
        self.text_field(&mut req, |a| {
            a.claimed.as_ref().map(|i| i.session_id.as_str())
        })
    }

    fn extract_reason(&mut self, mut req: ExtractRequest<Self>) -> Result<Option<CString>, Error> {
        self.text_field(&mut req, |a| {
            Some(a.reason.as_str()).filter(|r| !r.is_empty())
        })
    }

    fn extract_root_pid(&mut self, mut req: ExtractRequest<Self>) -> Result<Option<u64>, Error> {
        let a = self.attribution(&mut req);
        Ok(a.and_then(|a| a.root)
            .and_then(|(pid, _)| u64::try_from(pid).ok()))
    }

    fn extract_root_ts(&mut self, mut req: ExtractRequest<Self>) -> Result<Option<u64>, Error> {
        let a = self.attribution(&mut req);
        Ok(a.and_then(|a| a.root).map(|(_, ts)| ts))
    }

    fn extract_token(&mut self, mut req: ExtractRequest<Self>) -> Result<Option<CString>, Error> {
        self.text_field(&mut req, |a| a.token.as_deref())
    }
}

impl ParsePlugin for WhoexecPlugin {
    type Event<'a> = Parsed<'a>;

    fn parse_event(&mut self, event: &EventInput<Parsed>, input: &ParseInput) -> Result<(), Error> {
        let Ok(Parsed(raw)) = event.event() else {
            self.tracker.metrics.events_malformed += 1;
            return Ok(());
        };
        if catch_unwind(AssertUnwindSafe(|| self.parse(&raw, input))).is_err() {
            self.panics += 1;
        }
        Ok(())
    }
}

impl CaptureListenPlugin for WhoexecPlugin {
    fn capture_open(&mut self, input: &CaptureListenInput) -> Result<(), Error> {
        let reader = &input.reader;
        let threads = &self.threads;
        let variable = self.tracker.config().variable.clone();
        let mut existing = Vec::new();
        let scanned = catch_unwind(AssertUnwindSafe(|| {
            let _ = threads.table.iter_entries_mut(reader, |entry| {
                let (Ok(tid), Ok(pid)) = (entry.get_tid(reader), entry.get_pid(reader)) else {
                    return ControlFlow::Continue(());
                };
                let container_id = entry
                    .read_field(reader, &threads.container_id)
                    .map(|c| c.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if tid != pid || container_id.is_empty() {
                    return ControlFlow::Continue(()); // sessions run in containers; threads follow their leader
                }
                let exe = entry
                    .get_exe(reader)
                    .map(|e| e.to_bytes().to_vec())
                    .unwrap_or_default();
                let args = entry
                    .get_args(reader)
                    .map(|t| strings(&t, reader))
                    .unwrap_or_default();
                let env = entry
                    .get_env(reader)
                    .map(|t| strings(&t, reader))
                    .unwrap_or_default();
                let token = session::existing_token(&exe, &args, &env, &variable);
                existing.push(Existing {
                    tid,
                    pid,
                    ptid: entry.get_ptid(reader).unwrap_or(-1),
                    container_id,
                    start_ns: token.as_ref().and_then(|_| proc_start_ns(pid)),
                    token,
                });
                ControlFlow::Continue(())
            });
        }));
        if scanned.is_err() {
            self.panics += 1;
            return Ok(());
        }
        // parents of token bearers are needed to tell a root from a descendant
        let mut view = View {
            threads: &self.threads,
            reader: &input.reader,
            writer: Some(&input.writer),
        };
        let tracker = &mut self.tracker;
        if catch_unwind(AssertUnwindSafe(|| {
            tracker.on_existing(&mut view, &existing)
        }))
        .is_err()
        {
            self.panics += 1;
        }
        Ok(())
    }

    fn capture_close(&mut self, _input: &CaptureListenInput) -> Result<(), Error> {
        Ok(())
    }
}

impl ExtractPlugin for WhoexecPlugin {
    type Event<'a> = Syscall<'a>;
    type ExtractContext = Option<Option<Attribution>>;

    const EXTRACT_FIELDS: &'static [ExtractFieldInfo<Self>] = &[
        field("whoexec.user", &Self::extract_user)
            .with_display("Kubernetes user")
            .with_description("The Kubernetes user who opened the exec session (verified or tampered sessions only)")
            .add_output(),
        field("whoexec.uid", &Self::extract_uid)
            .with_display("Kubernetes user uid")
            .with_description("The Kubernetes user's uid (verified or tampered sessions only)")
            .add_output(),
        field("whoexec.groups", &Self::extract_groups)
            .with_display("Kubernetes user groups")
            .with_description("The Kubernetes user's groups as the token carries them (verified or tampered sessions only)")
            .add_output(),
        field("whoexec.session", &Self::extract_session)
            .with_display("Exec session id")
            .with_description("The exec session id: the AdmissionReview uid, the session-id audit annotation (verified or tampered sessions only)")
            .add_output(),
        field("whoexec.attribution", &Self::extract_attribution)
            .with_display("Attribution")
            .with_description("verified, replayed, tampered, unverified or none")
            .add_output(),
        field("whoexec.claimed.user", &Self::extract_claimed_user)
            .with_display("Claimed user")
            .with_description("The user a token claims that is not believed (replayed, unverified) or that was brought inside a session (tampered); never the attributed user")
            .add_output(),
        field("whoexec.claimed.session", &Self::extract_claimed_session)
            .with_display("Claimed session id")
            .with_description("The session id of the claimed user's token")
            .add_output(),
        field("whoexec.reason", &Self::extract_reason)
            .with_display("Attribution reason")
            .with_description("Why the attribution is not verified, or what a verified binding could not check")
            .add_output(),
        field("whoexec.root.pid", &Self::extract_root_pid)
            .with_display("Session root pid")
            .with_description("The host pid of the session root (verified, tampered or replayed): with whoexec.root.ts it names one root process")
            .add_output(),
        field("whoexec.root.ts", &Self::extract_root_ts)
            .with_display("Session root time")
            .with_description("When the session root's execve ran (ns since the epoch; its start from /proc for a session open when Falco started)")
            .add_output(),
        field("whoexec.token", &Self::extract_token)
            .with_display("Session root token")
            .with_description("The token of the session root, passed along so that consumers can verify it against the alert's own Kubernetes fields")
            .add_output(),
    ];
}

/// The event schema the parsed layouts come from. falco_plugin 0.5 does not export this
/// symbol, and libsinsp then assumes 3.0.0 and refuses a parsing plugin on Falco 0.44
/// (schema 4.5.1: "major versions disagree"). The parameters read here (execve's res,
/// exe, args, pid, ptid and env; clone's res, tid, pid, ptid and flags) sit at the same
/// indices in 4.x (libs driver/event_table.c); later parameters are only appended.
#[unsafe(no_mangle)]
pub extern "C-unwind" fn plugin_get_required_event_schema_version(
    _plugin: *mut falco_plugin::api::ss_plugin_t,
) -> *const std::ffi::c_char {
    c"4.0.0".as_ptr()
}

plugin!(WhoexecPlugin);
parse_plugin!(WhoexecPlugin);
extract_plugin!(WhoexecPlugin);
capture_listen_plugin!(WhoexecPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn this_process_s_start_from_proc_is_a_moment_before_now() {
        if std::env::var_os("HOST_ROOT").is_some() {
            return; // another test points /proc elsewhere
        }
        let start = proc_start_ns(i64::from(std::process::id())).expect("/proc is readable");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        // btime is whole seconds and USER_HZ ticks are 10 ms: a second of slack either way
        assert!(start <= now + 1_000_000_000, "{start} > {now}");
        assert!(
            now - start < 3_600_000_000_000,
            "started {} s ago",
            (now - start) / 1_000_000_000
        );
    }

    #[test]
    fn a_pid_that_does_not_exist_has_no_start() {
        assert_eq!(proc_start_ns(i64::from(i32::MAX)), None);
    }

    #[test]
    fn a_config_without_keys_or_with_a_bad_variable_is_refused() {
        let config: PluginConfig = serde_json::from_str("{}").unwrap();
        assert!(config
            .tracker()
            .unwrap_err()
            .to_string()
            .contains("no public key"));
        let key = "e9m/y35GKwAovwSZGChh1PlNT7+aMYVadpEekq7hKgY=";
        let config: PluginConfig = serde_json::from_str(&format!(
            r#"{{"public_keys": ["{key}"], "variable": "A=B"}}"#
        ))
        .unwrap();
        assert!(config.tracker().is_err());
        assert!(
            serde_json::from_str::<PluginConfig>(r#"{"public_key": []}"#).is_err(),
            "unknown keys are refused"
        );
    }
}
