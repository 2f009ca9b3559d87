"""Process lineage and attribution: which exec session, and so which user, an alert is in.

Pure core: no IO, no clock (event times come from the alerts, the hold-back clock is
passed in). Falco facts this module is built around:

* Falco sees only the first ~4 KiB of a process's environment, and ``env VAR=x cmd``
  appends ``VAR`` at the end, so ``proc.env`` may silently lack the token. The ``env``
  execve's own ``proc.args`` always holds ``WHOEXEC_IDENTITY=<token>``, and that process
  (same pid and ``proc.pid.ts`` after ``env`` execs the command) is the **session root**.
* ``proc.aenv[NAME]`` returns the *nearest* ancestor's value (skipping the process
  itself), so anyone inside the session can shadow it with ``export``. The token that is
  believed is the **topmost** token-bearing ancestor's; any different token below it is
  tampering.
* ``proc.pid`` + ``proc.pid.ts`` is a unique key; a pid alone can be reused. But
  ``proc.pid.ts`` is the clone time of the *thread* that raised the event, so it is the
  process's start only when ``thread.tid == proc.pid`` (see ``falco.process_facts``).

A token is not secret (it is in ``/proc/<pid>/environ`` and in the audit log), so a
session root is believed only when it is **bound** (namespace, pod, pod UID and container
match the token), **fresh** (the root started within a bounded window after the token's
``iat``) and **first** (one root per session id and container, across consumers through
the store). Anything else is ``replayed``: no user is attributed, and what the token
claims is kept apart for the investigator (``docs/security.md``).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from webhook.attribution.falco import (
    FalcoAlert,
    ProcessFacts,
    is_whoexec_rule,
    process_facts,
    token_pattern,
)
from webhook.errors import TokenError, TokenFromFuture
from webhook.identity import DEFAULT_CLOCK_SKEW_SECONDS, Identity, verify_token

Status = Literal["verified", "unverified", "tampered", "replayed", "none"]
#: the statuses under which an alert names a user (``whoexec.user.*``, ``k8s_user=``)
ATTRIBUTED: frozenset[str] = frozenset({"verified", "tampered"})
#: the walk never goes further than this many parents (a process tree is never deeper)
MAX_WALK = 64


@dataclass(slots=True)
class ProcessRecord:
    """What the table knows of one process. ``token`` strings are interned."""

    ppid: int | None
    start_ts: int | None
    container_id: str | None
    token: str | None = None
    #: the root check's result once made: "" believed, else why it is a replay
    root_check: str | None = None
    #: the token entered the lineage here: in its own argv (the env execve), as a
    #: container entry (its parent is the runtime, or it is the container's pid 1), or
    #: below a parent whose whole environment (/proc) has no token. Only such a process
    #: can be a session root; a token seen only further down means the root is unseen
    entry: bool = False
    #: an entry only because Falco named no parent, with the token only in its
    #: environment: a process of a genuine session whose parent's events were dropped
    #: looks the same (seen on real Falco, issue #20's proof), so a failed root check on
    #: it is no proof of a replay
    weak_entry: bool = False


ProcessKey = tuple[str, int]  # (hostname, host pid)


class ProcessTable:
    """A bounded map of processes, least recently used evicted first."""

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self.evictions = 0
        self._records: dict[ProcessKey, ProcessRecord] = {}

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: ProcessKey) -> ProcessRecord | None:
        record = self._records.pop(key, None)
        if record is not None:
            self._records[key] = record  # most recently used goes last
        return record

    def put(self, key: ProcessKey, record: ProcessRecord) -> None:
        self._records.pop(key, None)
        self._records[key] = record
        while len(self._records) > self.max_entries:
            del self._records[next(iter(self._records))]
            self.evictions += 1


@dataclass(frozen=True, slots=True)
class Verdict:
    identity: Identity | None
    error: str | None


class TokenVerifier:
    """Ed25519 verification is far too slow to repeat per alert: results are cached."""

    def __init__(
        self,
        keys: Mapping[str, Ed25519PublicKey],
        max_skew: int = DEFAULT_CLOCK_SKEW_SECONDS,
        cache_size: int = 65_536,
    ) -> None:
        self.keys = keys
        self.max_skew = max_skew
        self.cache_size = cache_size
        self._cache: dict[str, Verdict] = {}
        self.verifications = 0

    def verify(self, token: str, now: int) -> Verdict:
        verdict = self._cache.get(token)
        if verdict is None:
            self.verifications += 1
            try:
                # the future check depends on the event's time, so it is done below
                verdict = Verdict(verify_token(token, self.keys, now=2**62), None)
            except TokenError as exc:
                verdict = Verdict(None, f"{type(exc).__name__}: {exc}")
            if len(self._cache) >= self.cache_size:
                del self._cache[next(iter(self._cache))]
            self._cache[token] = verdict
        identity = verdict.identity
        if identity is not None and identity.issued_at > now + self.max_skew:
            error = TokenFromFuture(
                f"token iat {identity.issued_at} is {identity.issued_at - now}s after the "
                f"event (allowed skew {self.max_skew}s)"
            )
            return Verdict(None, f"{type(error).__name__}: {error}")
        return verdict


#: A genuine root starts right after admission: the apiserver forwards the exec to the
#: kubelet, which asks the runtime to start ``env``. Measured on the real cluster (bench/),
#: the delay is well under a second; the window leaves room for a loaded node.
DEFAULT_FRESH_SECONDS = 30
#: node clocks against the webhook's clock; ``iat`` is also truncated to whole seconds
DEFAULT_ROOT_SKEW_SECONDS = 5


@dataclass(frozen=True, slots=True)
class ReplayPolicy:
    """When a session root is believed: its start lies in ``[iat - skew, iat + fresh]``."""

    fresh_seconds: int = DEFAULT_FRESH_SECONDS
    skew_seconds: int = DEFAULT_ROOT_SKEW_SECONDS


@dataclass(frozen=True, slots=True)
class SessionRoot:
    """The one process a session id may root: a process is (host, pid, start time)."""

    host: str
    pid: int
    start_ns: int


class RootClaims(Protocol):
    """Single use of session ids. ``claim`` records ``root`` as the root of
    (``session_id``, ``container``) unless another root holds it, and returns the holder.
    The store's implementation makes this hold across consumers (a unique key)."""

    def claim(self, session_id: str, container: str, root: SessionRoot) -> SessionRoot: ...


#: /proc's start time (clock ticks after a whole-second boot time) and Falco's
#: ``proc.pid.ts`` (ns) differ by up to a second for the same process
START_TOLERANCE_NS = 2_000_000_000


def same_process(a: SessionRoot, b: SessionRoot) -> bool:
    return (a.host, a.pid) == (b.host, b.pid) and abs(a.start_ns - b.start_ns) <= START_TOLERANCE_NS


class MemoryRootClaims:
    """Single use within one consumer, bounded (the oldest claims go first)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._roots: dict[tuple[str, str], SessionRoot] = {}

    def claim(self, session_id: str, container: str, root: SessionRoot) -> SessionRoot:
        holder = self._roots.setdefault((session_id, container), root)
        if len(self._roots) > self.max_entries:
            del self._roots[next(iter(self._roots))]
        return holder


def freshness_problem(issued_at: int, root_start_ns: int, policy: ReplayPolicy) -> str:
    """Why a root that started at ``root_start_ns`` cannot be the exec that minted
    ``issued_at``; "" when it can. (The same decision is in ``e2e/tokenverifier``.)"""
    start = root_start_ns // 1_000_000_000
    if start < issued_at - policy.skew_seconds:
        return (
            f"stale: the session root started {issued_at - start}s before the token was "
            f"issued (allowed skew {policy.skew_seconds}s)"
        )
    if start > issued_at + policy.fresh_seconds:
        return (
            f"stale: the session root started {start - issued_at}s after the token was "
            f"issued (freshness window {policy.fresh_seconds}s)"
        )
    return ""


BindingStatus = Literal["checked", "unchecked", "mismatch"]


@dataclass(frozen=True, slots=True)
class Binding:
    """How a token's binding compared with where its root's alert came from."""

    #: why the token is bound elsewhere; "" when nothing that could be compared differs
    mismatch: str = ""
    #: what the token names and the alert could not show (Falco printed null): the
    #: namespace, pod, pod_uid or container, in that order
    unchecked: tuple[str, ...] = ()

    @property
    def status(self) -> BindingStatus:
        if self.mismatch:
            return "mismatch"
        return "unchecked" if self.unchecked else "checked"


def check_binding(identity: Identity, facts: ProcessFacts) -> Binding:
    """A token is bound to its namespace, pod, pod UID and Kubernetes container name;
    elsewhere it is a replay. These are true of every container: the container's name is
    the kubelet's label, or Falco's ``container.name`` when that is not the container's
    id (``falco.kubernetes_container_name``). A fact the alert lacks (the container
    plugin has no k8s metadata yet, or no worker at all) cannot be compared: it is
    ``unchecked``, which is said in the alert, never taken for a match or a mismatch.
    A field the token does not carry (a pod UID the webhook could not look up) binds
    nothing and is not listed."""
    checks: list[tuple[str, str, str | None]] = [
        ("namespace", identity.namespace, facts.namespace),
        ("pod", identity.pod, facts.pod),
        # a pod recreated under the same name (a StatefulSet's payments-0) has a new UID
        ("pod_uid", identity.pod_uid or "", facts.pod_uid),
        ("container", identity.container, facts.container_name),
    ]
    unchecked: list[str] = []
    mismatch = ""
    for what, minted, seen in checks:
        if not minted:
            continue
        if seen is None:
            unchecked.append(what)
        elif minted != seen and not mismatch:
            label = what.replace("_", " ")
            mismatch = (
                f"bound elsewhere: token minted for {label} {minted!r} is used in {label} {seen!r}"
            )
    return Binding(mismatch, tuple(unchecked))


def binding_problem(identity: Identity, facts: ProcessFacts) -> str:
    """Why ``identity`` cannot be the token of a session in ``facts``' pod and container
    ("" when nothing that can be compared differs)."""
    return check_binding(identity, facts).mismatch


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who an alert is attributed to, and how sure we are."""

    status: Status
    identity: Identity | None = None
    root_pid: int | None = None
    via: str = ""  # lineage | env | aenv
    reason: str = ""  # why tampered / unverified / replayed
    token: str | None = field(default=None, repr=False)
    #: what a ``replayed`` root's token claims: never attributed, kept for the investigator
    claimed: Identity | None = None
    root_start_ns: int | None = None
    #: the lineage seen so far cannot settle it (the root or its start time is missing):
    #: worth holding back for a late root event
    incomplete: bool = False
    #: how the root's token compared with where the alert came from (None when no root
    #: was judged), and what could not be compared
    binding: BindingStatus | None = None
    unchecked: tuple[str, ...] = ()

    @property
    def settled(self) -> bool:
        return self.status != "none" and not self.incomplete


@dataclass(frozen=True, slots=True)
class Outcome:
    """An alert ready to be passed on, with its attribution and the facts it carried."""

    alert: FalcoAlert
    attribution: Attribution
    facts: ProcessFacts
    is_root_event: bool


class Attributor:
    """Learns lineage from every alert and attributes each one to its session root.

    Alerts that find no session while inside a container are held back for
    ``hold_seconds`` (the clock is passed in) in case their session root arrives late
    (out-of-order delivery); ``release`` and ``drain`` hand them on.
    """

    def __init__(
        self,
        verifier: TokenVerifier,
        table: ProcessTable | None = None,
        variable: str = "WHOEXEC_IDENTITY",
        hold_seconds: float = 0.0,
        max_held: int = 10_000,
        is_root_event: Callable[[FalcoAlert], bool] | None = None,
        lineage_source: Callable[[ProcessFacts, ProcessTable], object] | None = None,
        replay: ReplayPolicy | None = None,
        claims: RootClaims | None = None,
    ) -> None:
        self.verifier = verifier
        self.replay = replay or ReplayPolicy()
        self.claims: RootClaims = claims if claims is not None else MemoryRootClaims()
        self.table = table if table is not None else ProcessTable()
        self.variable = variable
        self.pattern: re.Pattern[str] = token_pattern(variable)
        self.hold_seconds = hold_seconds
        self.max_held = max_held
        self._is_root_event = is_root_event or is_whoexec_rule
        #: an adapter that adds what it knows about the lineage (``procfs.ProcFS.learn``)
        self._lineage_source = lineage_source
        # held alerts in deadline order (the hold time is the same for all)
        self._held: deque[tuple[float, FalcoAlert, ProcessFacts]] = deque()
        self._tokens: dict[str, str] = {}
        #: bumped whenever a process gains a token: only then can a held alert find a root
        self._roots_learnt = 0
        self._roots_seen_by_held = 0

    # -- learning --------------------------------------------------------------------

    def _intern(self, token: str | None) -> str | None:
        if token is None:
            return None
        kept = self._tokens.setdefault(token, token)
        if len(self._tokens) > self.table.max_entries:
            self._tokens.clear()
            self._tokens[token] = token
        return kept

    def learn(self, facts: ProcessFacts) -> None:
        """Record the process and the ancestors an alert names."""
        if facts.pid is None:
            return
        host = facts.host
        key = (host, facts.pid)
        record = self.table.get(key)
        own_token = self._intern(facts.token_in_args or facts.token_in_env)
        if (
            record is not None
            and record.start_ts is not None
            and facts.start_ts is not None
            and record.start_ts != facts.start_ts
        ):
            record = None  # the pid was reused: forget the old process entirely
        if record is None:
            record = ProcessRecord(facts.ppid, facts.start_ts, facts.container_id)
        else:
            record.ppid = facts.ppid if facts.ppid is not None else record.ppid
            record.start_ts = record.start_ts or facts.start_ts
            record.container_id = record.container_id or facts.container_id
        # a token learnt at the env execve sticks across the exec into the command
        if record.token is None and own_token is not None:
            record.token = own_token
            self._roots_learnt += 1
        if own_token is not None and (
            facts.token_in_args is not None or facts.is_container_entry or facts.vpid == 1
        ):
            weak = facts.token_in_args is None and facts.vpid != 1 and facts.parent_unknown
            # an alert that shows the entry for sure (its argv, a runtime parent) wins
            record.weak_entry = weak and (record.weak_entry or not record.entry)
            record.entry = True
        self.table.put(key, record)
        # the alert's own ancestor chain (proc.apid[N]) links parents to grandparents
        chain = [pid for pid, _ in facts.ancestors]
        for index, pid in enumerate(chain):
            parent = chain[index + 1] if index + 1 < len(chain) else None
            ancestor = self.table.get((host, pid))
            if ancestor is None:
                self.table.put((host, pid), ProcessRecord(parent, None, None))
            elif parent is not None:
                ancestor.ppid = parent

    # -- walking ---------------------------------------------------------------------

    def _lineage(self, facts: ProcessFacts) -> Iterator[tuple[int, ProcessRecord]]:
        """The alert's process, then each known ancestor, nearest first."""
        assert facts.pid is not None
        host = facts.host
        seen: set[int] = set()
        pid: int | None = facts.pid
        child_ts = facts.start_ts
        while pid is not None and pid > 1 and pid not in seen and len(seen) < MAX_WALK:
            seen.add(pid)
            record = self.table.get((host, pid))
            if record is None:
                return
            if child_ts is not None and record.start_ts is not None and record.start_ts > child_ts:
                return  # a parent cannot start after its child: this pid was reused
            if (
                record.container_id is not None
                and facts.container_id is not None
                and record.token is not None
                and record.container_id != facts.container_id
            ):
                return  # a token-bearing process of another container: stale pid
            yield pid, record
            child_ts = record.start_ts or child_ts
            pid = record.ppid

    def attribute(self, facts: ProcessFacts) -> Attribution:
        """Find the session root above ``facts``, verify its token, and check that the
        root is bound, fresh and first (see the module docstring)."""
        if facts.pid is None:
            return Attribution("none")
        now = facts.time_ns // 1_000_000_000
        bearers = [(pid, record) for pid, record in self._lineage(facts) if record.token]
        if not bearers:
            if not facts.token_in_ancestor_env:
                return Attribution("none")
            # only the nearest ancestor's value (proc.aenv): the root process itself was
            # never seen, so neither freshness nor single use can be checked
            token = facts.token_in_ancestor_env
            verdict = self.verifier.verify(token, now)
            reason = verdict.error or (
                "session root not seen: only proc.aenv carries the token, so freshness and "
                "single use cannot be checked"
            )
            return Attribution(
                "unverified",
                None,
                None,
                "aenv",
                reason,
                token=token,
                claimed=verdict.identity,
                incomplete=verdict.identity is not None,
            )
        root_pid, root = bearers[-1]  # the topmost token-bearing ancestor
        root_token = root.token
        assert root_token is not None
        via = "lineage"
        if len(bearers) == 1 and root_pid == facts.pid and facts.token_in_args is None:
            via = "env"
        verdict = self.verifier.verify(root_token, now)
        if verdict.identity is None:
            return Attribution(
                "unverified", None, root_pid, via, verdict.error or "", token=root_token
            )
        identity = verdict.identity
        if not root.entry:
            # the token was inherited from somewhere above that was never seen (a consumer
            # restarted mid-session, without --procfs): judging this process as the root
            # would call a genuine session stale or reused
            return Attribution(
                "unverified",
                None,
                root_pid,
                via,
                f"session root not seen: pid {root_pid} inherited its token from an "
                "ancestor this consumer never saw",
                token=root_token,
                claimed=identity,
                incomplete=True,
            )
        if root.start_ts is None:
            return Attribution(
                "unverified",
                None,
                root_pid,
                via,
                f"the start time of session root pid {root_pid} is unknown, so its freshness "
                "cannot be checked",
                token=root_token,
                claimed=identity,
                incomplete=True,
            )
        binding = check_binding(identity, facts)
        problem = binding.mismatch or self._root_problem(identity, facts.host, root_pid, root)
        if problem and not binding.mismatch and root.weak_entry:
            return Attribution(
                "unverified",
                None,
                root_pid,
                via,
                f"session root not seen: pid {root_pid} carries the token only in its "
                "environment and Falco named no parent, so it may be a process of a session "
                f"whose root Falco missed ({problem}); not judged a replay",
                token=root_token,
                claimed=identity,
                incomplete=True,
            )
        if problem:
            return Attribution(
                "replayed",
                None,
                root_pid,
                via,
                problem,
                token=root_token,
                claimed=identity,
                root_start_ns=root.start_ts,
                binding=binding.status,
                unchecked=binding.unchecked,
            )
        attribution = Attribution(
            "verified",
            identity,
            root_pid,
            via,
            token=root_token,
            root_start_ns=root.start_ts,
            binding=binding.status,
            unchecked=binding.unchecked,
        )
        # inside a genuine session, a different token below the root, in the process's own
        # env, or in the nearest ancestor's env (proc.aenv) means someone set the variable:
        # the session's owner keeps the attribution, and the alert is flagged
        for label, other in (
            ("its environment", facts.token_in_env),
            ("its parent's environment (proc.aenv)", facts.token_in_ancestor_env),
        ):
            if other and other != root_token:
                return replace(
                    attribution,
                    status="tampered",
                    reason=f"pid {facts.pid} carries a different {self.variable} in {label} "
                    f"than session root pid {root_pid}",
                )
        others = [pid for pid, record in bearers[:-1] if record.token != root_token]
        if others:
            return replace(
                attribution,
                status="tampered",
                reason=f"descendant pid {others[0]} carries a different {self.variable} than "
                f"session root pid {root_pid}",
            )
        return attribution

    def _root_problem(
        self, identity: Identity, host: str, root_pid: int, root: ProcessRecord
    ) -> str:
        """Freshness and single use of a root; decided once per root process."""
        if root.root_check is not None:
            return root.root_check
        assert root.start_ts is not None
        problem = freshness_problem(identity.issued_at, root.start_ts, self.replay)
        if not problem:
            this = SessionRoot(host, root_pid, root.start_ts)
            holder = self.claims.claim(identity.session_id, identity.container, this)
            if not same_process(holder, this):
                problem = (
                    f"reused: session {identity.session_id} was already rooted by pid "
                    f"{holder.pid} on {holder.host}"
                )
        root.root_check = problem
        return problem

    # -- the stream ------------------------------------------------------------------

    def submit(self, alert: FalcoAlert, now: float) -> list[Outcome]:
        """Learn from ``alert`` and return the outcomes that are ready, in order."""
        facts = process_facts(alert, self.variable, self.pattern)
        self.learn(facts)
        if self._lineage_source is not None:
            self._lineage_source(facts, self.table)
        ready = self._retry_held(now)
        attribution = self.attribute(facts)
        root_event = self._is_root_event(alert)
        if (
            not attribution.settled
            and self.hold_seconds > 0
            and facts.in_container
            and not root_event
        ):
            self._held.append((now + self.hold_seconds, alert, facts))
            if len(self._held) > self.max_held:
                _, old_alert, old_facts = self._held.popleft()
                ready.append(self._finish(old_alert, old_facts))
            return ready
        ready.append(Outcome(alert, attribution, facts, root_event))
        return ready

    def _finish(self, alert: FalcoAlert, facts: ProcessFacts) -> Outcome:
        # a root event is never held (see submit)
        return Outcome(alert, self.attribute(facts), facts, is_root_event=False)

    def _retry_held(self, now: float) -> list[Outcome]:
        """Release held alerts whose time is up, or that now find their session.

        Expired ones leave from the front (deadline order). The rest are only looked at
        again when a new token was learnt since the last look: O(1) per alert otherwise.
        """
        ready: list[Outcome] = []
        while self._held and self._held[0][0] <= now:
            _, alert, facts = self._held.popleft()
            ready.append(self._finish(alert, facts))
        if self._held and self._roots_learnt != self._roots_seen_by_held:
            self._roots_seen_by_held = self._roots_learnt
            keep: deque[tuple[float, FalcoAlert, ProcessFacts]] = deque()
            for deadline, alert, facts in self._held:
                attribution = self.attribute(facts)
                if attribution.settled:
                    ready.append(Outcome(alert, attribution, facts, is_root_event=False))
                else:
                    keep.append((deadline, alert, facts))
            self._held = keep
        return ready

    def release(self, now: float) -> list[Outcome]:
        """Outcomes of held alerts whose hold-back time has passed (call periodically)."""
        return self._retry_held(now) if self._held else []

    def drain(self) -> list[Outcome]:
        """Everything still held, attributed as well as it can be now (end of input)."""
        ready = [self._finish(alert, facts) for _, alert, facts in self._held]
        self._held.clear()
        return ready

    @property
    def held(self) -> int:
        return len(self._held)


def replay_id(attribution: Attribution, host: str) -> str | None:
    """A replayed root's own session key, ``replayed:<host>:<pid>:<start ns>`` (a root is
    judged a replay only once its pid and start are known); None for any other status.
    Its alerts are grouped under it: the victim's session id is never reused for them."""
    if attribution.status != "replayed":
        return None
    return f"replayed:{host}:{attribution.root_pid}:{attribution.root_start_ns}"


def enrichment(attribution: Attribution, host: str) -> dict[str, Any]:
    """The ``whoexec.*`` fields added to an alert's ``output_fields``.

    Only ``verified`` and ``tampered`` name a user. What a replayed (or unverifiable)
    token claims goes under ``whoexec.claimed.*``, which never means "this person"; a
    replayed root's alerts share its ``whoexec.replay.id`` (``host`` is the alert's).
    ``whoexec.binding`` says whether the token's namespace, pod, pod UID and container
    were compared with the alert's (``checked``), could not all be (``unchecked``, with
    what in ``whoexec.binding.unchecked``), or differ (``mismatch``, a replay).
    """
    identity = attribution.identity if attribution.status in ATTRIBUTED else None
    claimed = attribution.claimed if identity is None else None
    return {
        "whoexec.attribution": attribution.status,
        "whoexec.binding": attribution.binding,
        "whoexec.binding.unchecked": list(attribution.unchecked) if attribution.unchecked else None,
        "whoexec.claimed.session.id": claimed.session_id if claimed else None,
        "whoexec.claimed.user.name": claimed.user if claimed else None,
        "whoexec.replay.id": replay_id(attribution, host),
        "whoexec.session.id": identity.session_id if identity else None,
        "whoexec.user.groups": list(identity.groups) if identity else None,
        "whoexec.user.name": identity.user if identity else None,
        "whoexec.user.uid": identity.uid if identity else None,
    }


#: put before ``k8s_user=`` on a tampered session's alerts, so that a person who reads only
#: ``output`` (Slack, a SIEM) cannot miss it
TAMPERED_MARKER = "[WHOEXEC: IDENTITY TAMPERED INSIDE THE SESSION]"


def enrich(outcome: Outcome) -> FalcoAlert:
    """The alert as passed on: ``whoexec.*`` fields added, everything else unchanged."""
    alert = outcome.alert
    attribution = outcome.attribution
    fields = {**alert["output_fields"], **enrichment(attribution, outcome.facts.host)}
    enriched: FalcoAlert = {**alert, "output_fields": fields}
    identity = attribution.identity
    if identity is not None and attribution.status in ATTRIBUTED:
        marker = f" {TAMPERED_MARKER}" if attribution.status == "tampered" else ""
        # never "verified" in silence: a reader of the text alone learns it too
        unchecked = (
            f" k8s_binding=unchecked({','.join(attribution.unchecked)})"
            if attribution.unchecked
            else ""
        )
        enriched["output"] = (
            f"{alert.get('output', '')}{marker} k8s_user={identity.user} "
            f"k8s_session={identity.session_id}{unchecked}"
        )
    return enriched


FINDING_TAMPERED = "Exec identity tampered"
FINDING_INVALID = "Exec identity token invalid"
FINDING_REPLAYED = "Exec identity replayed"
FINDING_UNVERIFIABLE = "Exec identity not verifiable"
FINDING_NO_IDENTITY = "Exec session without identity"
FINDING_BINDING_UNCHECKED = "Exec identity binding unchecked"


def findings(outcome: Outcome) -> list[tuple[tuple[object, ...], FalcoAlert]]:
    """whoexec's own findings about an outcome, each with a key to report it only once.

    They are Falco-shaped alerts with ``source: "whoexec"``, so whatever reads Falco's
    output (falcosidekick, a SIEM) can route them the same way.
    """
    attribution = outcome.attribution
    facts = outcome.facts
    where = (
        f"k8s_ns={facts.namespace} k8s_pod_name={facts.pod} container={facts.container_name} "
        f"pid={facts.pid} proc={facts.name}"
    )
    base: dict[str, Any] = {
        "whoexec.attribution": attribution.status,
        "whoexec.session.root.pid": attribution.root_pid,
        "whoexec.trigger.rule": outcome.alert["rule"],
        "container.id": facts.container_id,
        "container.name": facts.container_name,
        "k8s.ns.name": facts.namespace,
        "k8s.pod.name": facts.pod,
        "proc.pid": facts.pid,
        "proc.name": facts.name,
        "proc.cmdline": facts.cmdline,
    }
    found: list[tuple[tuple[object, ...], FalcoAlert]] = []
    identity = attribution.identity
    if attribution.status in ATTRIBUTED and identity is not None and attribution.unchecked:
        found.append(_binding_unchecked(outcome, identity, base, where))
    if attribution.status == "tampered" and identity is not None:
        found.append(
            (
                (facts.host, attribution.root_pid, FINDING_TAMPERED, attribution.reason),
                _finding(
                    outcome,
                    FINDING_TAMPERED,
                    "Critical",
                    f"Exec identity tampered: {attribution.reason} "
                    f"(session={identity.session_id} k8s_user={identity.user} {where})",
                    {
                        **base,
                        "whoexec.reason": attribution.reason,
                        "whoexec.session.id": identity.session_id,
                        "whoexec.user.name": identity.user,
                    },
                ),
            )
        )
    elif attribution.status == "replayed" and attribution.claimed is not None:
        replay = {**base, "whoexec.replay.id": replay_id(attribution, facts.host)}
        found.append(
            (
                (facts.host, attribution.root_pid, attribution.root_start_ns, FINDING_REPLAYED),
                _claim_finding(outcome, FINDING_REPLAYED, "Critical", replay, where),
            )
        )
    elif attribution.status == "unverified" and attribution.claimed is not None:
        # a genuine token whose root was never seen (or whose start is unknown): it cannot
        # be told from a replay, so nobody is attributed
        found.append(
            (
                (FINDING_UNVERIFIABLE, attribution.token),
                _claim_finding(outcome, FINDING_UNVERIFIABLE, "Warning", base, where),
            )
        )
    elif attribution.status == "unverified":
        found.append(
            (
                (FINDING_INVALID, attribution.token),
                _finding(
                    outcome,
                    FINDING_INVALID,
                    "Warning",
                    f"Exec identity token invalid: {attribution.reason} ({where})",
                    {**base, "whoexec.reason": attribution.reason},
                ),
            )
        )
    elif attribution.status == "none" and facts.is_container_entry:
        found.append(
            (
                (facts.host, facts.pid, facts.start_ts, FINDING_NO_IDENTITY),
                _finding(
                    outcome,
                    FINDING_NO_IDENTITY,
                    "Notice",
                    "Exec session without identity: a process started by the container "
                    "runtime carries no WHOEXEC_IDENTITY; the webhook was bypassed, down or "
                    f"excluded ({where} parent={facts.parent_name or 'unknown'})",
                    base,
                ),
            )
        )
    return found


def _binding_unchecked(
    outcome: Outcome, identity: Identity, base: dict[str, Any], where: str
) -> tuple[tuple[object, ...], FalcoAlert]:
    """Attributed all the same (the token is genuine, fresh and first), and said so: once
    per session root, on the first alert whose binding could not all be checked."""
    attribution = outcome.attribution
    what = ", ".join(attribution.unchecked)
    key = (
        outcome.facts.host,
        attribution.root_pid,
        attribution.root_start_ns,
        FINDING_BINDING_UNCHECKED,
    )
    return key, _finding(
        outcome,
        FINDING_BINDING_UNCHECKED,
        "Warning",
        f"Exec identity binding unchecked: the alert does not show the {what} the token "
        "is bound to, so a replay into another pod or container cannot be ruled out "
        f"(session={identity.session_id} k8s_user={identity.user} {where})",
        {
            **base,
            "whoexec.binding": attribution.binding,
            "whoexec.binding.unchecked": list(attribution.unchecked),
            "whoexec.session.id": identity.session_id,
            "whoexec.user.name": identity.user,
        },
    )


def _claim_finding(
    outcome: Outcome, rule: str, priority: str, base: dict[str, Any], where: str
) -> FalcoAlert:
    """A finding about a token that names nobody: what it claims is kept apart."""
    attribution = outcome.attribution
    claimed = attribution.claimed
    assert claimed is not None
    return _finding(
        outcome,
        rule,
        priority,
        f"{rule}: {attribution.reason}. The token claims user {claimed.user} (session "
        f"{claimed.session_id}); nobody is attributed ({where})",
        {
            **base,
            "whoexec.reason": attribution.reason,
            "whoexec.claimed.session.id": claimed.session_id,
            "whoexec.claimed.user.name": claimed.user,
        },
    )


def _finding(
    outcome: Outcome, rule: str, priority: str, output: str, fields: dict[str, Any]
) -> FalcoAlert:
    return {
        "hostname": outcome.alert.get("hostname", ""),
        "output": output,
        "output_fields": dict(sorted(fields.items())),
        "priority": priority,
        "rule": rule,
        "source": "whoexec",
        "tags": ["k8s_exec", "whoexec"],
        "time": outcome.alert["time"],
    }
