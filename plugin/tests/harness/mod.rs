//! Falco's side of the integration tests: events in Falco's binary format, a source plugin
//! that emits them, a stand-in for libsinsp's `threads` table (and for the container
//! plugin's `container_id`), and the built `libwhoexec.so` loaded symbol by symbol.
#![allow(dead_code)]

use falco_event_schema::events::{
    PPME_ASYNCEVENT_E, PPME_PROCEXIT_1_E, PPME_SYSCALL_CLONE_20_X, PPME_SYSCALL_EXECVE_19_X,
    PPME_SYSCALL_OPENAT_2_X,
};
use falco_event_schema::fields::event_flags::PT_FLAGS32_clone_flags;
use falco_event_schema::fields::types::{PT_ERRNO, PT_FD, PT_PID};
use falco_plugin::anyhow::{self, Error};
use falco_plugin::base::Plugin;
use falco_plugin::event::events::{Event, EventMetadata, EventToBytes, RawEvent};
use falco_plugin::parse::{EventInput, ParseInput, ParsePlugin};
use falco_plugin::source::{EventBatch, SourcePlugin, SourcePluginInstance};
use falco_plugin::tables::{export, TablesInput};
use falco_plugin::{static_plugin, FailureReason};
use falco_plugin_api::plugin_api;
use falco_plugin_runner::{CapturingPluginRunner, ExtractedField, MetricValue, PluginRunner};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::OnceLock;

/// The outer cgroup every host process sits in on these machines (the capture's README).
pub const RUNC_CGROUP: &str = "ae838a5c0982";

pub struct Ev(pub Vec<u8>);

fn bytes(event: impl EventToBytes) -> Vec<u8> {
    let mut out = Vec::new();
    event.write(&mut out).expect("an event serialises");
    out
}

fn nul_joined(items: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        out.extend_from_slice(item.as_bytes());
        out.push(0);
    }
    out
}

/// `cgroups` as the driver sends it: the container id is the last path component.
fn cgroups(container_id: &str) -> Vec<u8> {
    if container_id.is_empty() {
        return b"cpuset=/\0".to_vec();
    }
    format!("cpuset=/kubepods/besteffort/pod0/{container_id}0123456789abcdef\0").into_bytes()
}

impl Ev {
    pub fn raw(bytes: Vec<u8>) -> Self {
        Ev(bytes)
    }

    /// A clone exit: in the parent (`res` = the child's tid) or in the child (`res` = 0).
    pub fn clone(ts: u64, tid: i64, res: i64, ptid: i64, container_id: &str, thread: bool) -> Self {
        let cg = cgroups(container_id);
        let flags = if thread {
            PT_FLAGS32_clone_flags::from_bits_retain(whoexec::event::PPM_CL_CLONE_THREAD)
        } else {
            PT_FLAGS32_clone_flags::empty()
        };
        // the child's pid: its tid for a process; for a thread, its creator's process
        let pid = if thread { ptid } else { tid };
        Ev(bytes(Event {
            metadata: EventMetadata { ts, tid },
            params: PPME_SYSCALL_CLONE_20_X {
                res: Some(PT_PID(res)),
                exe: Some(c"runc"),
                args: Some(b"init\0"),
                tid: Some(PT_PID(tid)),
                pid: Some(PT_PID(pid)),
                ptid: Some(PT_PID(ptid)),
                cwd: Some(c"/"),
                fdlimit: Some(1024),
                pgft_maj: Some(0),
                pgft_min: Some(0),
                vm_size: Some(0),
                vm_rss: Some(0),
                vm_swap: Some(0),
                comm: Some(c"runc"),
                cgroups: Some(&cg),
                flags: Some(flags),
                uid: Some(0),
                gid: Some(0),
                vtid: Some(PT_PID(tid)),
                vpid: Some(PT_PID(pid)),
                pidns_init_start_ts: Some(0),
            },
        }))
    }

    pub fn execve(
        ts: u64,
        tid: i64,
        ptid: i64,
        container_id: &str,
        exe: &str,
        args: &[&str],
        env: &[&str],
    ) -> Self {
        let exe_c = CString::new(exe).unwrap();
        let comm = CString::new(exe.rsplit('/').next().unwrap()).unwrap();
        let args = nul_joined(args);
        let env = nul_joined(env);
        let cg = cgroups(container_id);
        Ev(bytes(Event {
            metadata: EventMetadata { ts, tid },
            params: PPME_SYSCALL_EXECVE_19_X {
                res: Some(PT_ERRNO(0)),
                exe: Some(&exe_c),
                args: Some(&args),
                tid: Some(PT_PID(tid)),
                pid: Some(PT_PID(tid)),
                ptid: Some(PT_PID(ptid)),
                cwd: Some(c"/"),
                fdlimit: Some(1024),
                comm: Some(&comm),
                cgroups: Some(&cg),
                env: Some(&env),
                tty: Some(0),
                vpgid: Some(PT_PID(tid)),
                loginuid: None,
                flags: None,
                cap_inheritable: Some(0),
                cap_permitted: Some(0),
                cap_effective: Some(0),
                exe_ino: Some(0),
                exe_ino_ctime: None,
                exe_ino_mtime: None,
                uid: None,
                trusted_exepath: Some(typed_path::UnixPath::new(exe)),
                pgid: Some(PT_PID(tid)),
                gid: None,
                pgft_maj: Some(0),
                pgft_min: Some(0),
                vm_size: Some(0),
                vm_rss: Some(0),
                vm_swap: Some(0),
            },
        }))
    }

    pub fn open(ts: u64, tid: i64, path: &str) -> Self {
        let name = typed_path::UnixPath::new(path);
        Ev(bytes(Event {
            metadata: EventMetadata { ts, tid },
            params: PPME_SYSCALL_OPENAT_2_X {
                fd: Some(PT_FD(3)),
                dirfd: Some(PT_FD(-100)),
                name: Some(falco_event::types::RelativePath(name)),
                flags: None,
                mode: Some(0),
                dev: Some(0),
                ino: Some(0),
            },
        }))
    }

    pub fn exit(ts: u64, tid: i64) -> Self {
        Ev(bytes(Event {
            metadata: EventMetadata { ts, tid },
            params: PPME_PROCEXIT_1_E {
                status: Some(PT_ERRNO(0)),
                ret: Some(PT_ERRNO(0)),
                sig: None,
                core: Some(0),
                reaper_tid: Some(PT_PID(1)),
            },
        }))
    }

    /// The container plugin's `container` async event (its JSON, as `container_info_json.cpp` writes it).
    pub fn container(
        id: &str,
        name: &str,
        ns: &str,
        pod: &str,
        pod_uid: &str,
        k8s_name: &str,
    ) -> Self {
        let json = serde_json::json!({"container": {
            "id": id, "name": name, "type": 7, "image": "whoexec.test/debian:bookworm",
            "is_pod_sandbox": false,
            "labels": {
                "io.kubernetes.container.name": k8s_name,
                "io.kubernetes.pod.name": pod,
                "io.kubernetes.pod.namespace": ns,
                "io.kubernetes.pod.uid": pod_uid,
            },
        }});
        let mut data = json.to_string().into_bytes();
        data.push(0);
        Ev(bytes(Event {
            metadata: EventMetadata { ts: 1, tid: 0 },
            params: PPME_ASYNCEVENT_E {
                plugin_id: Some(999),
                name: Some(c"container"),
                data: Some(&data),
            },
        }))
    }
}

/// An execve exit whose lengths claim more data than the event has.
pub fn malformed_execve(tid: i64) -> Vec<u8> {
    let mut good = Ev::execve(1_796_314_361_000_000_000, tid, 1, "", "x", &[], &[]).0;
    // the first parameter length (res, 8 bytes) now says 200: the payload cannot hold it
    good[26] = 200;
    good
}

/// A process libsinsp found in /proc when Falco started.
#[derive(Clone, Debug)]
pub struct Proc {
    pub tid: i64,
    pub pid: i64,
    pub ptid: i64,
    pub cid: String,
    pub exe: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
}

thread_local! {
    static EVENTS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static EXISTING: RefCell<Vec<Proc>> = const { RefCell::new(Vec::new()) };
}

// -- the event source -------------------------------------------------------------------

pub struct Emitter {
    events: Vec<Vec<u8>>,
}

impl Plugin for Emitter {
    const NAME: &'static CStr = c"emitter";
    const PLUGIN_VERSION: &'static CStr = c"0.0.0";
    const DESCRIPTION: &'static CStr = c"emits the test's syscall events";
    const CONTACT: &'static CStr = c"whoexec tests";
    type ConfigType = ();

    fn new(_input: Option<&TablesInput>, _config: ()) -> Result<Self, Error> {
        Ok(Self {
            events: EVENTS.with(|e| e.borrow_mut().drain(..).rev().collect()),
        })
    }
}

pub struct EmitterInstance;

impl SourcePluginInstance for EmitterInstance {
    type Plugin = Emitter;

    fn next_batch(&mut self, plugin: &mut Emitter, batch: &mut EventBatch) -> Result<(), Error> {
        match plugin.events.pop() {
            Some(event) => {
                batch.add(event.as_slice())?;
                Ok(())
            }
            None => Err(anyhow::anyhow!("done").context(FailureReason::Eof)),
        }
    }
}

impl SourcePlugin for Emitter {
    type Instance = EmitterInstance;
    const EVENT_SOURCE: &'static CStr = c"";
    const PLUGIN_ID: u32 = 0;
    type Event<'a> = RawEvent<'a>;

    fn open(&mut self, _params: Option<&str>) -> Result<EmitterInstance, Error> {
        Ok(EmitterInstance)
    }

    fn event_to_string(
        &mut self,
        _event: &falco_plugin::source::EventInput<RawEvent>,
    ) -> Result<CString, Error> {
        Ok(CString::from(c"syscall"))
    }
}

static_plugin!(EMITTER_API = Emitter);

// -- libsinsp's thread table ------------------------------------------------------------

#[derive(export::Entry)]
pub struct Str {
    value: export::Public<CString>,
}

#[derive(export::Entry)]
pub struct Thread {
    tid: export::Public<i64>,
    pid: export::Public<i64>,
    ptid: export::Public<i64>,
    exe: export::Public<CString>,
    container_id: export::Public<CString>,
    args: Box<export::Table<u64, Str>>,
    env: Box<export::Table<u64, Str>>,
}

pub struct Sinsp {
    threads: Box<export::Table<i64, Thread>>,
    to_remove: Option<i64>,
}

fn container_of_cgroups(cgroups: &[u8]) -> CString {
    let text = String::from_utf8_lossy(cgroups);
    let last = text
        .trim_end_matches('\0')
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_string();
    CString::new(if last.len() >= 12 { &last[..12] } else { "" }).unwrap()
}

fn fill(table: &mut export::Table<u64, Str>, items: &[Vec<u8>]) -> Result<(), Error> {
    table.clear();
    for (n, item) in items.iter().enumerate() {
        let mut entry = table.create_entry()?;
        *entry.value = CString::new(item.clone())?;
        table.insert(&(n as u64), entry);
    }
    Ok(())
}

impl Sinsp {
    fn add(&mut self, p: &Proc) -> Result<(), Error> {
        let mut entry = self.threads.create_entry()?;
        *entry.tid = p.tid;
        *entry.pid = p.pid;
        *entry.ptid = p.ptid;
        *entry.exe = CString::new(p.exe.clone())?;
        *entry.container_id = CString::new(p.cid.clone())?;
        let args: Vec<Vec<u8>> = p.args.iter().map(|a| a.clone().into_bytes()).collect();
        let env: Vec<Vec<u8>> = p.env.iter().map(|a| a.clone().into_bytes()).collect();
        fill(&mut entry.args, &args)?;
        fill(&mut entry.env, &env)?;
        self.threads.insert(&p.tid, entry);
        Ok(())
    }
}

impl Plugin for Sinsp {
    const NAME: &'static CStr = c"sinsp";
    const PLUGIN_VERSION: &'static CStr = c"0.0.0";
    const DESCRIPTION: &'static CStr = c"libsinsp's threads table, as far as whoexec reads it";
    const CONTACT: &'static CStr = c"whoexec tests";
    type ConfigType = ();

    fn new(input: Option<&TablesInput>, _config: ()) -> Result<Self, Error> {
        let input = input.ok_or_else(|| anyhow::anyhow!("no tables"))?;
        let threads = input.add_table(export::Table::new(c"threads")?)?;
        let mut sinsp = Self {
            threads,
            to_remove: None,
        };
        // libsinsp's /proc scan at start-up
        for p in EXISTING.with(|e| e.borrow_mut().drain(..).collect::<Vec<_>>()) {
            sinsp.add(&p)?;
        }
        Ok(sinsp)
    }
}

/// The syscall events libsinsp's table needs here.
pub struct Tracked<'a>(RawEvent<'a>);

impl falco_event::events::AnyEventPayload for Tracked<'_> {
    const SOURCES: &'static [Option<&'static str>] = &[Some("syscall")];
    const EVENT_TYPES: &'static [u16] = &[186, 223, 293, 402, 307];
}

impl<'a, 'b> From<&'b RawEvent<'a>> for Tracked<'a> {
    fn from(raw: &'b RawEvent<'a>) -> Self {
        Tracked(RawEvent {
            metadata: raw.metadata.clone(),
            len: raw.len,
            event_type: raw.event_type,
            nparams: raw.nparams,
            payload: raw.payload,
        })
    }
}

impl ParsePlugin for Sinsp {
    type Event<'a> = Tracked<'a>;

    fn parse_event(
        &mut self,
        event: &EventInput<Tracked>,
        _input: &ParseInput,
    ) -> Result<(), Error> {
        // libsinsp removes an exited thread when the next event comes
        if let Some(tid) = self.to_remove.take() {
            self.threads.erase(&tid);
        }
        let Tracked(raw) = event.event()?;
        let tid = raw.metadata.tid;
        if let Ok(ev) = raw.load::<PPME_SYSCALL_CLONE_20_X>() {
            let p = ev.params;
            let res = p.res.map(|r| r.0).unwrap_or(-1);
            let child = if res == 0 { tid } else { res };
            if res < 0 || (res > 0 && self.threads.lookup(&child).is_some()) {
                return Ok(()); // the child's own exit came first and made its entry
            }
            let thread = p
                .flags
                .is_some_and(|f| f.bits() & whoexec::event::PPM_CL_CLONE_THREAD != 0);
            let parent = if res == 0 {
                p.ptid.map(|x| x.0).unwrap_or(-1)
            } else {
                tid
            };
            let pid = if thread {
                p.pid.map(|x| x.0).unwrap_or(child)
            } else {
                child
            };
            let proc = Proc {
                tid: child,
                pid,
                ptid: parent,
                cid: container_of_cgroups(p.cgroups.unwrap_or_default()).into_string()?,
                exe: "runc".into(),
                args: vec![],
                env: vec![],
            };
            if res == 0 || self.threads.lookup(&child).is_none() {
                self.add(&proc)?;
            }
        } else if let Ok(ev) = raw.load::<PPME_SYSCALL_EXECVE_19_X>() {
            let p = ev.params;
            let Some(mut entry) = self.threads.lookup(&tid) else {
                return Ok(());
            };
            *entry.exe = p.exe.map(CStr::to_owned).unwrap_or_default();
            *entry.ptid = p.ptid.map(|x| x.0).unwrap_or(-1);
            *entry.container_id = container_of_cgroups(p.cgroups.unwrap_or_default());
            let split = |b: Option<&[u8]>| -> Vec<Vec<u8>> {
                b.unwrap_or_default()
                    .split(|c| *c == 0)
                    .filter(|s| !s.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect()
            };
            fill(&mut entry.args, &split(p.args))?;
            fill(&mut entry.env, &split(p.env))?;
        } else if raw.load::<PPME_PROCEXIT_1_E>().is_ok() {
            self.to_remove = Some(tid);
        }
        Ok(())
    }
}

static_plugin!(SINSP_API = Sinsp);

// -- the plugin under test, loaded as Falco loads it -------------------------------------

/// The event schema version the built .so asks Falco for (a symbol outside `plugin_api`
/// in falco_plugin 0.5, looked up by libsinsp's loader as by this).
pub fn required_event_schema_version() -> String {
    whoexec_api();
    let exe = std::env::current_exe().expect("the test binary");
    let path = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target")
        .join("libwhoexec.so");
    let lib = unsafe { libloading::Library::new(&path) }.expect("the .so loads");
    type Version =
        unsafe extern "C-unwind" fn(*mut falco_plugin_api::ss_plugin_t) -> *const std::ffi::c_char;
    let version: libloading::Symbol<Version> =
        unsafe { lib.get(b"plugin_get_required_event_schema_version") }.expect("exported");
    let text = unsafe { CStr::from_ptr(version(std::ptr::null_mut())) };
    text.to_string_lossy().into_owned()
}

fn whoexec_api() -> &'static plugin_api {
    static API: OnceLock<&'static plugin_api> = OnceLock::new();
    API.get_or_init(|| {
        // tests run from target/<profile>/deps; cargo builds the cdylib beside it
        let exe = std::env::current_exe().expect("the test binary");
        let dir = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("target/<profile>");
        let path = dir.join("libwhoexec.so");
        // `cargo test` builds the library for the tests but not its cdylib: `cargo build`
        // does (.ci/run runs both). A .so older than the sources would test stale code.
        let built = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e}: run `cargo build` before `cargo test`",
                    path.display()
                )
            });
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        for file in std::fs::read_dir(src).expect("src/") {
            let file = file.expect("a source file").path();
            let changed = std::fs::metadata(&file)
                .and_then(|m| m.modified())
                .expect("mtime");
            assert!(
                changed <= built,
                "{} is older than {}: run `cargo build` before `cargo test`",
                path.display(),
                file.display()
            );
        }
        let lib = unsafe { libloading::Library::new(&path) }
            .unwrap_or_else(|e| panic!("{}: {e} (run `cargo build` first)", path.display()));
        let lib: &'static libloading::Library = Box::leak(Box::new(lib));
        macro_rules! sym {
            ($name:literal) => {
                unsafe { lib.get($name).ok().map(|s: libloading::Symbol<_>| *s) }
            };
        }
        // SAFETY: every field is an optional function pointer; None is all zeroes
        let mut api: plugin_api = unsafe { std::mem::zeroed() };
        api.get_required_api_version = sym!(b"plugin_get_required_api_version");
        api.get_init_schema = sym!(b"plugin_get_init_schema");
        api.init = sym!(b"plugin_init");
        api.destroy = sym!(b"plugin_destroy");
        api.get_last_error = sym!(b"plugin_get_last_error");
        api.get_name = sym!(b"plugin_get_name");
        api.get_description = sym!(b"plugin_get_description");
        api.get_contact = sym!(b"plugin_get_contact");
        api.get_version = sym!(b"plugin_get_version");
        api.set_config = sym!(b"plugin_set_config");
        api.get_metrics = sym!(b"plugin_get_metrics");
        api.__bindgen_anon_2.get_extract_event_types = sym!(b"plugin_get_extract_event_types");
        api.__bindgen_anon_2.get_extract_event_sources = sym!(b"plugin_get_extract_event_sources");
        api.__bindgen_anon_2.get_fields = sym!(b"plugin_get_fields");
        api.__bindgen_anon_2.extract_fields = sym!(b"plugin_extract_fields");
        api.__bindgen_anon_3.get_parse_event_types = sym!(b"plugin_get_parse_event_types");
        api.__bindgen_anon_3.get_parse_event_sources = sym!(b"plugin_get_parse_event_sources");
        api.__bindgen_anon_3.parse_event = sym!(b"plugin_parse_event");
        api.__bindgen_anon_5.capture_open = sym!(b"plugin_capture_open");
        api.__bindgen_anon_5.capture_close = sym!(b"plugin_capture_close");
        assert!(api.init.is_some() && api.__bindgen_anon_3.parse_event.is_some());
        &*Box::leak(Box::new(api))
    })
}

pub fn identity_pub() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/cluster-2026-12-03/identity.pub"
    );
    std::fs::read_to_string(path).expect("identity.pub")
}

/// The processes libsinsp's /proc scan finds when the next run starts.
pub fn set_existing(existing: Vec<Proc>) {
    EXISTING.with(|e| *e.borrow_mut() = existing);
}

pub struct Run {
    runner: CapturingPluginRunner,
    last: Option<falco_plugin_runner::Event>,
}

impl Run {
    pub fn start(events: Vec<Ev>) -> Self {
        let config = serde_json::json!({"public_keys": [identity_pub()]}).to_string();
        Self::try_start(events, &config).expect("the plugins start")
    }

    pub fn start_with_existing(events: Vec<Ev>, existing: Vec<Proc>) -> Self {
        set_existing(existing);
        Self::start(events)
    }

    pub fn try_start(events: Vec<Ev>, config: &str) -> Result<Self, String> {
        Self::try_start_with(events, whoexec_api(), config)
    }

    /// The events through [emitter, sinsp, `plugin`], as Falco would run them.
    pub fn try_start_with(
        events: Vec<Ev>,
        plugin: &'static plugin_api,
        config: &str,
    ) -> Result<Self, String> {
        EVENTS.with(|e| *e.borrow_mut() = events.into_iter().map(|e| e.0).collect());
        let mut runner = PluginRunner::new();
        runner
            .register_plugin(&EMITTER_API, c"")
            .map_err(|e| format!("{e:#}"))?;
        runner
            .register_plugin(&SINSP_API, c"")
            .map_err(|e| format!("{e:#}"))?;
        let config = CString::new(config).unwrap();
        runner
            .register_plugin(plugin, &config)
            .map_err(|e| format!("{e:#}"))?;
        let mut runner = runner.start_capture().map_err(|e| format!("{e:#}"))?;
        let mut last = None;
        while let Ok(event) = runner.next_event() {
            last = Some(event);
        }
        Ok(Self { runner, last })
    }

    pub fn last_event(&mut self) -> falco_plugin_runner::Event {
        self.last.take().expect("at least one event")
    }

    pub fn field(&mut self, event: &falco_plugin_runner::Event, name: &str) -> Option<String> {
        let value = self.runner.extract_field(event, name)?.ok()?;
        match value {
            ExtractedField::None => None,
            ExtractedField::String(s) if s.is_empty() => None,
            ExtractedField::String(s) => Some(s.to_string_lossy().into_owned()),
            other => Some(other.to_string()),
        }
    }

    pub fn metrics(&mut self) -> HashMap<String, u64> {
        self.runner
            .get_metrics()
            .into_iter()
            .filter_map(|m| match m.value {
                MetricValue::U64(v) => {
                    Some((m.name.rsplit('.').next().unwrap_or(&m.name).to_string(), v))
                }
                _ => None,
            })
            .collect()
    }
}
