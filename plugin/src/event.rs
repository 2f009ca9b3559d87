//! The few syscall events the plugin reads, decoded from Falco's binary event format.
//!
//! Pure: bytes in, borrowed facts out; no SDK types. A payload is `nparams` lengths (u16,
//! or u32 for events flagged `EF_LARGE_PAYLOAD`) followed by the parameters; integers are
//! native-endian. Any inconsistency gives `None`: a malformed event is ignored, never a panic.

/// `PPME_*` codes (libs' `driver/ppm_events_public.h`, the same as `falco_event_schema`).
pub const PROCEXIT_1_E: u16 = 186;
pub const CLONE_20_X: u16 = 223;
pub const FORK_20_X: u16 = 225;
pub const VFORK_20_X: u16 = 227;
pub const EXECVE_19_X: u16 = 293;
pub const EXECVEAT_X: u16 = 331;
pub const CLONE3_X: u16 = 335;
pub const ASYNCEVENT_E: u16 = 402;

/// What the plugin parses; every other event only reaches its field extraction.
pub const PARSED_EVENT_TYPES: [u16; 8] = [
    PROCEXIT_1_E,
    CLONE_20_X,
    FORK_20_X,
    VFORK_20_X,
    EXECVE_19_X,
    EXECVEAT_X,
    CLONE3_X,
    ASYNCEVENT_E,
];

/// `CLONE_THREAD` (linux/sched.h as the driver passes it: `PPM_CL_CLONE_THREAD`)
pub const PPM_CL_CLONE_THREAD: u32 = 1 << 16;

/// The libs cut an environment or argv at this many bytes (`SCAP_MAX_ENV_SIZE`).
pub const SCAP_MAX_ENV_SIZE: usize = 4096;

/// Split a payload into its parameters; `None` when lengths and data disagree.
pub fn params(payload: &[u8], nparams: u32, large: bool) -> Option<Vec<&[u8]>> {
    let width = if large { 4 } else { 2 };
    let count = usize::try_from(nparams).ok()?;
    if count > 64 {
        return None; // no event the plugin reads has more than 30 parameters
    }
    let lengths = payload.get(..count.checked_mul(width)?)?;
    let mut data = payload.get(count * width..)?;
    let mut out = Vec::with_capacity(count);
    for len in lengths.chunks_exact(width) {
        let len = if large {
            u32::from_ne_bytes([len[0], len[1], len[2], len[3]]) as usize
        } else {
            u16::from_ne_bytes([len[0], len[1]]) as usize
        };
        let (param, rest) = (data.get(..len)?, data.get(len..)?);
        out.push(param);
        data = rest;
    }
    Some(out)
}

fn int64(param: Option<&&[u8]>) -> Option<i64> {
    let bytes: [u8; 8] = (*param?).try_into().ok()?;
    Some(i64::from_ne_bytes(bytes))
}

fn uint32(param: Option<&&[u8]>) -> Option<u32> {
    let bytes: [u8; 4] = (*param?).try_into().ok()?;
    Some(u32::from_ne_bytes(bytes))
}

/// A `PT_CHARBUF` without its terminating NUL.
fn charbuf<'a>(param: Option<&&'a [u8]>) -> &'a [u8] {
    let bytes: &[u8] = param.copied().unwrap_or_default();
    bytes.split(|b| *b == 0).next().unwrap_or_default()
}

/// A NUL-separated list (`args`, `env`), empty items dropped.
pub fn nul_list(bytes: &[u8]) -> Vec<&[u8]> {
    bytes.split(|b| *b == 0).filter(|s| !s.is_empty()).collect()
}

/// The exit of `execve`/`execveat`: the process image after the exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec<'a> {
    pub res: i64,
    /// argv[0] as the caller passed it (the driver's `exe` parameter)
    pub exe: &'a [u8],
    /// argv[1..]
    pub args: Vec<&'a [u8]>,
    pub pid: i64,
    pub ptid: i64,
    pub env: Vec<&'a [u8]>,
    /// the environment reached the driver's cut, so a variable may be missing from `env`
    pub env_cut: bool,
}

pub fn exec(payload: &[u8], nparams: u32) -> Option<Exec<'_>> {
    let p = params(payload, nparams, false)?;
    let env = p.get(15).copied().unwrap_or_default();
    Some(Exec {
        res: int64(p.first())?,
        exe: charbuf(p.get(1)),
        args: nul_list(p.get(2).copied().unwrap_or_default()),
        pid: int64(p.get(4))?,
        ptid: int64(p.get(5))?,
        env: nul_list(env),
        env_cut: env.len() >= SCAP_MAX_ENV_SIZE,
    })
}

/// The exit of `clone`/`fork`/`vfork`/`clone3`, seen by the parent (`res` = the child's
/// tid) or by the child (`res` = 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clone {
    pub res: i64,
    pub tid: i64,
    pub pid: i64,
    pub ptid: i64,
    pub flags: u32,
}

pub fn clone(payload: &[u8], nparams: u32) -> Option<Clone> {
    let p = params(payload, nparams, false)?;
    Some(Clone {
        res: int64(p.first())?,
        tid: int64(p.get(3))?,
        pid: int64(p.get(4))?,
        ptid: int64(p.get(5))?,
        flags: uint32(p.get(15)).unwrap_or(0),
    })
}

/// An async event (`PPME_ASYNCEVENT_E`): the container plugin's `container` and
/// `container_removed` carry a container's JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Async<'a> {
    pub name: &'a [u8],
    pub data: &'a [u8],
}

pub fn async_event(payload: &[u8], nparams: u32) -> Option<Async<'_>> {
    let p = params(payload, nparams, true)?;
    let data = p.get(2).copied().unwrap_or_default();
    Some(Async {
        name: charbuf(p.get(1)),
        data: data.strip_suffix(&[0]).unwrap_or(data),
    })
}

/// The basename of a path (`/usr/bin/env` -> `env`).
pub fn basename(path: &[u8]) -> &[u8] {
    path.rsplit(|b| *b == b'/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(params: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in params {
            out.extend_from_slice(&(p.len() as u16).to_ne_bytes());
        }
        for p in params {
            out.extend_from_slice(p);
        }
        out
    }

    #[test]
    fn lengths_that_run_past_the_payload_give_no_params() {
        let mut bytes = payload(&[b"abc"]);
        bytes.pop();
        assert_eq!(params(&bytes, 1, false), None);
    }

    #[test]
    fn an_execve_exit_gives_argv_env_and_parent() {
        let res = 0i64.to_ne_bytes();
        let pid = 42i64.to_ne_bytes();
        let ptid = 7i64.to_ne_bytes();
        let empty: &[u8] = b"";
        let mut fields: Vec<&[u8]> = vec![
            &res,
            b"/usr/bin/env\0",
            b"WHOEXEC_IDENTITY=v1.x\0sh\0",
            &pid,
            &pid,
            &ptid,
        ];
        fields.extend(std::iter::repeat_n(empty, 9));
        fields.push(b"A=1\0B=2\0");
        let bytes = payload(&fields);
        let exec = exec(&bytes, fields.len() as u32).unwrap();
        assert_eq!(basename(exec.exe), b"env");
        assert_eq!(exec.args, vec![&b"WHOEXEC_IDENTITY=v1.x"[..], b"sh"]);
        assert_eq!(exec.env, vec![&b"A=1"[..], b"B=2"]);
        assert_eq!((exec.pid, exec.ptid, exec.env_cut), (42, 7, false));
    }

    #[test]
    fn a_clone_exit_without_a_result_is_refused() {
        let bytes = payload(&[b"short"]);
        assert_eq!(clone(&bytes, 1), None);
    }
}
