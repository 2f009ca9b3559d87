"""No input stops the pipeline, and one bad alert never costs another session its facts.

Hostile alerts (JSON nested past what orjson can write back, every field the pipeline reads
given every wrong type, numbers past 64 bits, times out of any database's range, escapes
that are not UTF-8) are mixed with good sessions in one batch, through the real pipeline
that ``whoexec consume --db`` builds (SQLite, a file sink beside the tests' own sink). Two
promises hold whatever the mix: every good session's alerts reach every sink and its facts
are in the store; every hostile line reaches the sinks or the dead letters, and every
line is done with (the inbox would otherwise hand it out forever).
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import DATA
from webhook.attribution.app import build_consumer
from webhook.attribution.falco import LINEAGE_FIELDS
from webhook.attribution.pipeline import MemorySink
from webhook.identity import Identity, Signer, sign_identity
from webhook.sessions.store import Batch, open_store
from webhook.settings import Settings

_spec = importlib.util.spec_from_file_location("make_fixtures", DATA / "falco" / "make_fixtures.py")
assert _spec is not None and _spec.loader is not None
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)

S = 1_000_000_000
T0 = fixtures.T0
SHIM = [(fixtures.SHIM, "containerd-shim")]
HOSTILE_HOST = "hostile-node"
#: every field of output_fields the pipeline reads, with the identity variable named
READ_FIELDS = sorted(
    {f.replace("{variable}", "WHOEXEC_IDENTITY") for f in LINEAGE_FIELDS}
    | {"evt.time.iso8601", "proc.env", "whoexec.session.id", "whoexec.user.name"}
)
TOP_FIELDS = ["hostname", "output", "output_fields", "priority", "rule", "source", "tags"]
TOP_FIELDS += ["time", "uuid"]
OUT_OF_RANGE_TIMES = [
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+01:00",
    "2262-04-11T23:47:16.854775808Z",
    "2026-13-01T00:00:00Z",
]
PAST_64_BITS = [2**63, 2**63 + 1, 2**64 - 1, -(2**63) - 1, 10**30, -(10**30)]


@dataclass(frozen=True)
class Deep:
    """A value nested ``depth`` arrays deep, written into the JSON text as it is."""

    depth: int


def numbers() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(),
        st.sampled_from(PAST_64_BITS),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
    )


def wrong_values() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        numbers(),
        st.text(max_size=12),
        st.sampled_from(OUT_OF_RANGE_TIMES),
        st.sampled_from(["<NA>", "", "²³", "٣٤", "1" * 30, "v1.0123456789abcdef.x.y"]),
        st.lists(st.one_of(st.integers(), st.text(max_size=4)), max_size=3),
        st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
        st.integers(33, 600).map(Deep),
    )


def encode(alert: dict[str, Any]) -> bytes:
    """JSON text; a :class:`Deep` becomes its brackets (no JSON library writes 600 levels)."""
    deep: list[int] = []

    def placeholder(value: object) -> object:
        if isinstance(value, Deep):
            deep.append(value.depth)
            return f"@@deep{len(deep) - 1}@@"
        raise TypeError(type(value).__name__)

    text = json.dumps(alert, default=placeholder)
    for n, depth in enumerate(deep):
        text = text.replace(f'"@@deep{n}@@"', "[" * depth + "]" * depth)
    return text.encode()


class Keys:
    def __init__(self, folder: Path) -> None:
        key = Ed25519PrivateKey.generate()
        self.signer = Signer(key)
        self.pub = folder / "identity.pub"
        self.pub.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def token(self, sid: str, user: str) -> str:
        ns, pod, container, pod_uid = fixtures.SHOP
        identity = Identity(sid, user, "", ("devs",), ns, pod, container, T0 // S - 1, pod_uid)
        return sign_identity(identity, self.signer)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


def good_session(keys: Keys, n: int) -> tuple[str, str, list[dict[str, Any]]]:
    """A session root and one alert under it, on a host of its own."""
    sid, user = f"good-{n}", f"user-{n}@corp.example"
    token = keys.token(sid, user)
    root_pid, child_pid = 4000 + 10 * n, 4001 + 10 * n
    t = T0 + n * S
    root = fixtures.root_alert(t + 200, root_pid, t + 100, token, "/bin/sh")
    child = fixtures.alert(
        f"Read sensitive file {n}",
        "Warning",
        t=t + 500,
        pid=child_pid,
        vpid=9,
        pid_ts=t + 400,
        name="cat",
        args="/etc/shadow",
        env_var=token,
        ancestors=[(root_pid, "sh"), *SHIM],
    )
    return sid, user, [root, child]


@st.composite
def hostile_lines(draw: st.DrawFn, keys: Keys) -> tuple[bytes, bool]:
    """One hostile line, and whether it certainly cannot be an alert."""
    kind = draw(st.sampled_from(["field", "field", "field", "raw"]))
    if kind == "raw":
        raw = draw(
            st.sampled_from(
                [
                    b"[" * 300 + b"]" * 300,  # orjson reads it, and cannot write it back
                    b'{"a":' * 900 + b"1" + b"}" * 900,
                    b'{"rule": "\\ud800"}',  # a lone surrogate: not UTF-8
                    b'{"rule": "\xff\xfe"}',
                    b"\xff{}",
                    b"not json at all",
                ]
            )
        )
        return raw, True
    marker = draw(st.integers(0, 10**6))
    if draw(st.booleans()):  # a session root with a real token: its own session
        token = keys.token(f"hostile-{marker}", "mallory@corp.example")
        alert = fixtures.root_alert(T0 + 900, 7000, T0 + 800, token, "/bin/sh")
    else:
        alert = fixtures.alert(
            "Hostile",
            "Warning",
            t=T0 + 900,
            pid=7001,
            vpid=3,
            pid_ts=T0 + 800,
            name="x",
            args="",
            ancestors=[(7000, "sh"), *SHIM],
        )
    alert["hostname"] = HOSTILE_HOST  # its process table entries are never a good one's
    alert["output_fields"]["test.marker"] = marker
    for _ in range(draw(st.integers(1, 3))):
        value = draw(wrong_values())
        if draw(st.booleans()):
            alert[draw(st.sampled_from(TOP_FIELDS))] = value
        elif isinstance(alert.get("output_fields"), dict):
            alert["output_fields"][draw(st.sampled_from(READ_FIELDS))] = value
    if isinstance(alert.get("output_fields"), dict):  # replaced by another object, too
        alert["output_fields"]["test.marker"] = marker
    # what is left after every change (a later one may undo an earlier one)
    fields = alert["output_fields"]
    values = [*alert.values(), *(fields.values() if isinstance(fields, dict) else ())]
    certain = any(isinstance(v, Deep) for v in values) or alert.get("time") in OUT_OF_RANGE_TIMES
    return encode(alert), certain


def dead_lines(state: Path) -> set[int]:
    path = state / "dead-letters.jsonl"
    if not path.exists():
        return set()
    found = set()
    # bytes: str.splitlines() would also cut at a U+0085 or U+2028 that JSON keeps raw
    for line in path.read_bytes().splitlines():
        where = json.loads(line)["where"]  # "file line 3", "file line 3 (enrich)"
        found.add(int(where.split(" line ")[1].split()[0]))
    return found


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_hostile_alert_stops_the_pipeline_or_costs_a_good_session_its_facts(keys, data):
    sessions = [good_session(keys, n) for n in range(3)]
    lines: list[tuple[bytes, str]] = [
        (json.dumps(a).encode(), "good") for _, _, alerts in sessions for a in alerts
    ]
    hostile = data.draw(st.lists(hostile_lines(keys), min_size=1, max_size=8))
    for line, certain in hostile:
        at = data.draw(st.integers(0, len(lines)))
        lines.insert(at, (line, "bad" if certain else "maybe"))
    with tempfile.TemporaryDirectory() as folder:
        state = Path(folder)
        settings_ = Settings(
            identity_pub=(keys.pub,),
            db=f"sqlite:///{state}/whoexec.db",
            state_dir=state,
            output=state / "enriched.jsonl",
            hold_seconds=0,
            forward_roots=True,  # so that every alert that is not dead-lettered is passed on
        )
        sink = MemorySink()
        consumer = build_consumer(settings_, stdout=None, input_name="file", extra_sinks=[sink])
        done: list[object] = []
        consumer.pipeline.on_done = done.extend
        consumer.pipeline.feed([line for line, _ in lines], tags=range(1, len(lines) + 1))
        consumer.close()

        assert sorted(done) == list(range(1, len(lines) + 1)), "every line is done with"
        written = [json.loads(x) for x in (state / "enriched.jsonl").read_bytes().splitlines()]
        assert len(written) == len(sink.alerts), "the file sink got what the memory sink got"
        passed = {(a["rule"], a["output_fields"].get("whoexec.user.name")) for a in sink.alerts}
        store = open_store(settings_.db)
        try:
            for sid, user, (root, child) in sessions:
                assert (child["rule"], user) in passed, "every good alert reaches the sinks"
                stored = store.session(sid)
                assert stored is not None, f"session {sid} lost its facts"
                assert (stored["user_name"], stored["attribution"]) == (user, "verified")
                pids = {p["pid"] for p in stored["processes"]}
                assert {
                    root["output_fields"]["proc.pid"],
                    child["output_fields"]["proc.pid"],
                } <= pids
                assert {a["rule"] for a in stored["alerts"]} == {root["rule"], child["rule"]}
        finally:
            store.close()
        dead = dead_lines(state)
        markers = {a["output_fields"].get("test.marker") for a in sink.alerts}
        for number, (line, kind) in enumerate(lines, 1):
            if kind == "bad":
                assert number in dead, f"line {number} cannot be an alert: dead-lettered"
            elif kind == "maybe":
                if number not in dead:
                    marker = json.loads(line)["output_fields"]["test.marker"]
                    assert marker in markers, f"line {number} went nowhere"
            else:
                assert number not in dead, f"good line {number} was dead-lettered"


# --- each way an alert can break, named ----------------------------------------------------


def consumer_for(keys: Keys, state: Path, **changes: Any):
    values: dict[str, Any] = {
        "identity_pub": (keys.pub,),
        "db": f"sqlite:///{state}/whoexec.db",
        "state_dir": state,
        "hold_seconds": 0,
        **changes,
    }
    sink = MemorySink()
    consumer = build_consumer(
        Settings(**values), stdout=None, input_name="file", extra_sinks=[sink]
    )
    return consumer, sink


def letters(state: Path) -> list[dict[str, Any]]:
    path = state / "dead-letters.jsonl"
    return [json.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def stored(state: Path, sid: str) -> dict[str, Any] | None:
    store = open_store(f"sqlite:///{state}/whoexec.db")
    try:
        return store.session(sid)
    finally:
        store.close()


@pytest.mark.parametrize(
    "change",
    [
        {"time": "9999-12-31T23:59:59Z"},
        {"output_fields": {"evt.time": 2**63}, "time": "9999-12-31T23:59:59Z"},
        {"time": "0001-01-01T00:00:00+01:00"},
    ],
    ids=["year 9999", "evt.time past 64 bits", "year 1 east of UTC"],
)
def test_an_alert_out_of_every_database_s_time_range_costs_its_batch_nothing(
    keys, tmp_path, change
):
    sid, user, (root, child) = good_session(keys, 1)
    bad = {**child, "rule": "from the far future", "time": change["time"]}
    bad["output_fields"] = {**child["output_fields"], **change.get("output_fields", {})}
    consumer, sink = consumer_for(keys, tmp_path)
    consumer.pipeline.feed([json.dumps(a).encode() for a in (root, bad, child)])
    consumer.close()
    session = stored(tmp_path, sid)
    assert session is not None and session["user_name"] == user
    assert len(session["processes"]) == 2 and [a["rule"] for a in session["alerts"]] == [
        child["rule"]
    ]
    assert [a["rule"] for a in sink.alerts] == [child["rule"]]
    (letter,) = letters(tmp_path)
    assert (letter["reason"], letter["where"]) == ("not_an_alert", "file line 2")
    assert "out of range" in letter["detail"] or "not a valid date" in letter["detail"]


def test_json_nested_300_deep_is_dead_lettered_as_it_came_and_the_batch_goes_on(keys, tmp_path):
    _sid, user, (root, child) = good_session(keys, 1)
    deep = b"[" * 300 + b"]" * 300  # orjson reads 1,024 levels, and writes 254
    consumer, sink = consumer_for(keys, tmp_path)
    consumer.pipeline.feed([json.dumps(root).encode(), deep, json.dumps(child).encode()])
    consumer.close()
    assert [a["output_fields"]["whoexec.user.name"] for a in sink.alerts] == [user]
    (letter,) = letters(tmp_path)
    assert (letter["reason"], letter["where"], letter["line"]) == (
        "not_an_alert",
        "file line 2",
        deep.decode(),
    )


def test_a_session_root_whose_args_are_a_list_is_stored_without_its_command(keys, tmp_path):
    sid, user, (root, child) = good_session(keys, 1)
    fields = root["output_fields"]
    # the token still reaches the root through proc.cmdline
    odd = {**root, "output_fields": {**fields, "proc.args": fields["proc.args"].split()}}
    consumer, _sink = consumer_for(keys, tmp_path)
    consumer.pipeline.feed([json.dumps(odd).encode(), json.dumps(child).encode()])
    consumer.close()
    session = stored(tmp_path, sid)
    assert session is not None and session["user_name"] == user
    assert session["command"] is None
    assert letters(tmp_path) == []


def test_an_alert_sent_in_as_a_whoexec_finding_is_refused(keys, tmp_path):
    _, _, (_, child) = good_session(keys, 1)
    forged = {**child, "source": "whoexec", "rule": "Exec identity tampered"}
    consumer, sink = consumer_for(keys, tmp_path)
    consumer.pipeline.feed([json.dumps(forged).encode()])
    consumer.close()
    assert sink.alerts == []
    (letter,) = letters(tmp_path)
    assert letter["reason"] == "not_an_alert" and "whoexec's own" in letter["detail"]
    assert count_rows(tmp_path, "findings") == 0, "no accusation nobody made"


def count_rows(state: Path, table: str, name: str = "whoexec.db") -> int:
    store = open_store(f"sqlite:///{state}/{name}")
    try:
        return int(store._query(f"SELECT count(*) AS n FROM {table}")[0]["n"])  # noqa: S608
    finally:
        store.close()


def test_a_step_that_fails_on_one_alert_dead_letters_it_with_the_step_named(keys, tmp_path):
    _sid, _user, (root, child) = good_session(keys, 1)
    other = {**child, "rule": "poison"}
    consumer, sink = consumer_for(keys, tmp_path)

    def observer(outcome) -> None:
        if outcome.alert["rule"] == "poison":
            raise RuntimeError("a defect")

    consumer.pipeline.observe(observer)
    consumer.pipeline.feed([json.dumps(a).encode() for a in (root, other, child)])
    consumer.close()
    assert [a["rule"] for a in sink.alerts] == [child["rule"]]
    (letter,) = letters(tmp_path)
    assert (letter["reason"], letter["where"]) == ("error", "file line 2 (store observer)")
    assert letter["detail"] == "RuntimeError: a defect"
    assert json.loads(letter["line"])["rule"] == "poison"


def test_a_batch_of_session_roots_alone_is_stored_before_its_lines_are_done(keys, tmp_path):
    sid, user, (root, _) = good_session(keys, 1)
    consumer, sink = consumer_for(keys, tmp_path)
    done: list[object] = []
    consumer.pipeline.on_done = done.extend
    consumer.pipeline.feed([json.dumps(root).encode()], tags=["root"])
    assert done == ["root"] and sink.alerts == [], "a root is learnt, not passed on"
    session = stored(tmp_path, sid)  # before close: the line may be forgotten now
    assert session is not None and session["user_name"] == user
    consumer.close()


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (2**63, "an integer past 64 bits"),
        (-(2**63) - 1, "an integer past 64 bits"),
        ("a\x00b", "a NUL character"),
        ("\ud800", "a lone surrogate"),
        ({"a": 1}, "a dict where a text or a number goes"),
    ],
)
def test_a_fact_no_database_can_hold_is_refused_before_it_is_queued(tmp_path, value, why):
    from webhook.errors import StoreRejected
    from webhook.sessions.store.model import ProcessFact
    from webhook.sessions.store.writer import StoreWriter

    writer = StoreWriter(open_store(f"sqlite:///{tmp_path}/w.db"))
    good = ProcessFact("s", "node", 1, 0, None, "sh", T0)
    bad = ProcessFact("s", "node", 2, 0, None, value, T0)  # type: ignore[arg-type]
    with pytest.raises(StoreRejected, match=why):
        writer.add(Batch(processes=[good, bad]))
    assert len(writer.pending) == 0, "all or nothing: the caller tries its items apart"
    writer.close()


class Refusing:
    """A real SQLite store that refuses facts whose ``args`` is "refuse" (as PostgreSQL
    refuses data it cannot hold), and can be 'down' from the ``down_after``-th write."""

    def __init__(self, url: str, down_after: int | None = None) -> None:
        self.real = open_store(url)
        self.down_after = down_after
        self.writes = 0

    def ingest(self, batch: Batch) -> None:
        from webhook.errors import StoreError, StoreUnavailable

        self.writes += 1
        if self.down_after is not None and self.writes > self.down_after:
            raise StoreUnavailable("database is down")
        if any(p.args == "refuse" for p in batch.processes):
            raise StoreError("invalid byte sequence")
        self.real.ingest(batch)

    def close(self) -> None:
        self.real.close()


def facts(n: int, refused: set[int]) -> Batch:
    from webhook.sessions.store.model import ProcessFact

    return Batch(
        processes=[
            ProcessFact("s", "node", pid, 0, None, "refuse" if pid in refused else "sh", T0)
            for pid in range(n)
        ]
    )


def test_a_fact_the_database_refuses_costs_that_fact_alone(tmp_path):
    from webhook.sessions.store.writer import StoreWriter

    url = f"sqlite:///{tmp_path}/w.db"
    rejected: list[tuple[str, str]] = []
    writer = StoreWriter(Refusing(url), on_rejected=lambda fact, why: rejected.append((fact, why)))  # type: ignore[arg-type]
    writer.add(facts(40, refused={7, 31}))
    writer.flush()
    assert count_rows(tmp_path, "processes", "w.db") == 38
    assert [json.loads(fact)["pid"] for fact, _ in rejected] == [7, 31]
    assert rejected[0][1] == "StoreError: invalid byte sequence"
    assert writer.rejected == 2
    writer.close()


def test_a_database_lost_while_writing_apart_keeps_what_was_not_written(tmp_path):
    from webhook.errors import StoreUnavailable
    from webhook.sessions.store.writer import StoreWriter

    url = f"sqlite:///{tmp_path}/w.db"
    store = Refusing(url, down_after=3)
    writer = StoreWriter(store, max_wait=0.0, sleep=lambda _: None)  # type: ignore[arg-type]
    writer.add(facts(40, refused={0}))
    with pytest.raises(StoreUnavailable):
        writer.flush()
    written = count_rows(tmp_path, "processes", "w.db")
    assert written + len(writer.pending) == 40, "stored, or kept for the next flush"
    store.down_after = None
    writer.flush()
    assert count_rows(tmp_path, "processes", "w.db") == 39
    writer.close()


def test_a_store_that_stays_down_stops_a_batch_run_and_dead_letters_nothing(keys, tmp_path):
    from webhook.attribution.lineage import Attributor, TokenVerifier
    from webhook.attribution.pipeline import Pipeline
    from webhook.deadletters import DeadLetters
    from webhook.errors import StoreUnavailable
    from webhook.keyfiles import load_key_ring
    from webhook.sessions.store.writer import StoreWriter

    store = Refusing(f"sqlite:///{tmp_path}/w.db", down_after=0)
    writer = StoreWriter(store, max_wait=0.0, sleep=lambda _: None)  # type: ignore[arg-type]
    letters = DeadLetters(tmp_path / "dead.jsonl")
    verifier = TokenVerifier(load_key_ring([keys.pub]))
    pipeline = Pipeline(Attributor(verifier), [writer], dead_letters=letters)
    pipeline.observe(writer.record)
    _, _, alerts = good_session(keys, 1)
    with pytest.raises(StoreUnavailable):
        pipeline.feed([json.dumps(a).encode() for a in alerts])
    assert letters.written == 0, "the database is away: no alert is to blame"
    assert len(writer.pending) > 0, "and what was learnt is kept for the next flush"


def depth_of(value: object) -> int:
    """The nesting depth, recursively (the reference the loop is checked against)."""
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet="[]{}ab", max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=40,
)


@given(value=json_values, limit=st.integers(0, 12))
def test_the_depth_check_is_exact_and_the_bracket_count_never_lets_a_deep_one_by(value, limit):
    from webhook.attribution.falco import MAX_DEPTH, nests_deeper, shallow_text

    assert nests_deeper(value, limit) == (depth_of(value) > limit)
    if shallow_text(json.dumps(value)):
        assert depth_of(value) <= MAX_DEPTH
