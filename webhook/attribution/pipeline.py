"""The Falco consumer (adapter): inputs, the pipeline around the lineage core, and sinks.

Inputs: a file or stdin read to the end (batch), a file followed with ``tail -F``
semantics, or HTTP (``POST /falco``, Falco's ``http_output`` and falcosidekick's webhook
output). Sinks: stdout, a file, an HTTP forward with an on-disk spool, the session store.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Protocol

import orjson
import urllib3
from prometheus_client import Counter, Gauge

from webhook.attribution.falco import (
    FINDING_SOURCE,
    FalcoAlert,
    check_alert,
    is_internal,
    render_json,
    shallow_text,
)
from webhook.attribution.inbox import InboxLogReader
from webhook.attribution.lineage import Attributor, Outcome, enrich, findings
from webhook.attribution.plugin_fields import plugin_outcome
from webhook.attribution.spool import Spool
from webhook.deadletters import DeadLetters
from webhook.errors import MalformedAlert, StoreRejected, StoreUnavailable
from webhook.stopflag import StopFlag
from webhook.text import loggable

log = logging.getLogger("whoexec.consumer")

ALERTS_IN = Counter("whoexec_consumer_alerts_in", "Alerts read, by input.", ["input"])
ALERTS_OUT = Counter(
    "whoexec_consumer_alerts_out", "Alerts passed on, by attribution.", ["attribution"]
)
SKIPPED = Counter(
    "whoexec_consumer_lines_skipped", "Input lines that were not usable alerts.", ["reason"]
)
FINDINGS = Counter("whoexec_consumer_findings", "whoexec's own findings, by rule.", ["rule"])
# gauges are set by the one pipeline process; the intake process serves /metrics, so the
# values are summed over live processes (prometheus-client multiprocess mode)
TABLE_SIZE = Gauge(
    "whoexec_consumer_process_table_entries", "Processes tracked.", multiprocess_mode="livesum"
)
EVICTIONS = Gauge(
    "whoexec_consumer_process_table_evictions",
    "Processes evicted (LRU).",
    multiprocess_mode="livesum",
)
HELD = Gauge(
    "whoexec_consumer_alerts_held",
    "Alerts held back waiting for a late root.",
    multiprocess_mode="livesum",
)
SPOOLED = Gauge(
    "whoexec_consumer_spool_items",
    "Items waiting in an on-disk spool.",
    ["spool"],
    multiprocess_mode="livesum",
)
INBOX_BYTES = Gauge(
    "whoexec_consumer_inbox_bytes",
    "Bytes accepted over HTTP and not yet handled by the pipeline.",
    multiprocess_mode="livesum",
)
SPOOL_DROPPED = Counter(
    "whoexec_consumer_spool_dropped", "Items dropped because a spool was full.", ["spool"]
)
FORWARDED = Counter("whoexec_consumer_forwarded", "Alerts forwarded, by result.", ["result"])


class Sink(Protocol):
    """Where enriched alerts and findings go. ``write`` returns once they are accepted."""

    def write(self, alerts: list[FalcoAlert]) -> None: ...

    def close(self) -> None: ...


class StreamSink:
    """JSON lines on a binary stream (stdout by default)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream

    def write(self, alerts: list[FalcoAlert]) -> None:
        if alerts:
            self.stream.write(b"".join(render_json(a) + b"\n" for a in alerts))
            self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class FileSink(StreamSink):
    """JSON lines appended to a file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(path.open("ab"))

    def close(self) -> None:
        self.stream.close()


class MemorySink:
    """Keeps what it is given (the demo and tests read it back)."""

    def __init__(self) -> None:
        self.alerts: list[FalcoAlert] = []
        self._lock = threading.Lock()

    def write(self, alerts: list[FalcoAlert]) -> None:
        with self._lock:
            self.alerts.extend(alerts)

    def close(self) -> None:
        pass


class ForwardSink:
    """POST each alert to a downstream (falcosidekick, any webhook) from an on-disk spool.

    ``write`` only appends to the spool. Up to ``concurrency`` requests are in flight at
    once (a thread each), so one slow or failing answer does not hold back the rest:
    an alert answered 5xx/429 or not answered is retried on its own schedule, 0.2 s then
    doubling up to 30 s, while the others go on; only when every request in flight fails
    (the downstream is down) does the whole sink back off. Alerts are not kept in order:
    each carries its own ``time``, attribution was done before they were queued, and
    falcosidekick and SIEMs handle each alert on its own.

    Nothing is lost while the downstream is down (up to the spool's bound; beyond it the
    oldest are dropped and counted). Delivery is at-least-once: an alert whose POST
    succeeded right before a crash, but was not yet removed from the spool, is sent again
    after the restart. A 4xx other than 429 means the downstream will never take that
    alert: it is logged, counted as rejected, and skipped.
    """

    def __init__(
        self,
        url: str,
        spool_path: Path,
        *,
        max_items: int = 1_000_000,
        timeout: float = 5.0,
        backoff: tuple[float, float] = (0.2, 30.0),
        headers: dict[str, str] | None = None,
        ca_file: Path | None = None,
        concurrency: int = 8,
    ) -> None:
        self.url = url
        self.spool = Spool(spool_path, max_items=max_items)
        self.timeout = timeout
        self.backoff = backoff
        self.concurrency = concurrency
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self._http = urllib3.PoolManager(
            retries=False,
            timeout=urllib3.Timeout(total=timeout),
            ca_certs=ca_file,
            maxsize=concurrency,
        )
        self._stop = threading.Event()
        self._lock = threading.Condition()
        self._cursor = 0  # the highest spool id handed out; below it: delivered or in retry
        self._in_flight = 0
        self._retry: list[tuple[float, int, bytes, float]] = []  # (due, id, body, delay)
        self._failing_streak = 0
        self._paused_until = 0.0
        self._pause = backoff[0]
        self.delivered = 0
        self.rejected = 0
        self.retries = 0  # failed attempts, each followed by a backoff
        self.max_in_flight_seen = 0
        self._warnings = RateLimitedLog(topic="forward")
        self._workers = [
            threading.Thread(target=self._work, name=f"whoexec-forward-{n}", daemon=True)
            for n in range(concurrency)
        ]
        for worker in self._workers:
            worker.start()

    def write(self, alerts: list[FalcoAlert]) -> None:
        before = self.spool.dropped
        self.spool.put_many([render_json(a) for a in alerts])
        if self.spool.dropped > before:
            SPOOL_DROPPED.labels("forward").inc(self.spool.dropped - before)
            log.warning("forward spool full: dropped %d oldest alerts", self.spool.dropped - before)

    def _post(self, body: bytes) -> int:
        reply = self._http.request("POST", self.url, body=body, headers=self.headers)
        return int(reply.status)

    def _next(self) -> tuple[int, bytes, float] | None:
        """The next alert to send (a due retry first, then a new one), or None for now."""
        with self._lock:
            now = time.monotonic()
            if now < self._paused_until:
                return None
            if self._retry and self._retry[0][0] <= now:
                _, item_id, body, delay = heapq.heappop(self._retry)
                self._in_flight += 1
                return item_id, body, delay
            batch = self.spool.peek(1, after=self._cursor)
            if not batch:
                return None
            item_id, body = batch[0]
            self._cursor = item_id
            self._in_flight += 1
            self.max_in_flight_seen = max(self.max_in_flight_seen, self._in_flight)
            return item_id, body, self.backoff[0]

    def _work(self) -> None:
        while not self._stop.is_set():
            item = self._next()
            if item is None:
                self._stop.wait(0.02)
                continue
            item_id, body, delay = item
            try:
                status = self._post(body)
            except urllib3.exceptions.HTTPError as exc:
                status, problem = 0, type(exc).__name__
            else:
                problem = f"HTTP {status}"
            with self._lock:
                self._in_flight -= 1
                if 200 <= status < 300 or (400 <= status < 500 and status != 429):
                    if status >= 300:
                        self.rejected += 1
                        FORWARDED.labels("rejected").inc()
                        self._warnings.warn(
                            "forward_rejected",
                            f"downstream {self.url} rejected an alert: {problem}",
                        )
                    else:
                        self.delivered += 1
                        FORWARDED.labels("delivered").inc()
                    self.spool.ack([item_id])
                    self._failing_streak = 0
                    self._pause = self.backoff[0]
                    continue
                FORWARDED.labels("retry").inc()
                self.retries += 1
                self._failing_streak += 1
                heapq.heappush(
                    self._retry,
                    (time.monotonic() + delay, item_id, body, min(delay * 2, self.backoff[1])),
                )
                if self._failing_streak >= 2 * self.concurrency:
                    # two rounds of requests and not one success: the downstream is down,
                    # not this alert; everything waits
                    self._paused_until = time.monotonic() + self._pause
                    self._warnings.warn(
                        "forward_paused",
                        f"downstream {self.url} unavailable ({problem}); "
                        f"pausing {self._pause:.1f}s",
                    )
                    self._pause = min(self._pause * 2, self.backoff[1])
                    self._failing_streak = 0

    def drain(self, timeout: float) -> bool:
        """Wait until the spool is empty or ``timeout`` passes; True if it emptied."""
        deadline = time.monotonic() + timeout
        while len(self.spool) and time.monotonic() < deadline:
            time.sleep(0.02)
        return not len(self.spool)

    def close(self) -> None:
        self.drain(2.0)
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=10)
        SPOOLED.labels("forward").set(len(self.spool))
        self.spool.close()


class RateLimitedLog:
    """At most one log line per reason per ``interval`` seconds, with the count skipped."""

    def __init__(
        self,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        topic: str = "skipped input",
    ):
        self.interval = interval
        self.clock = clock
        self.topic = topic
        self._last: dict[str, float] = {}
        self._suppressed: Tally[str] = Tally()

    def warn(self, reason: str, detail: str) -> None:
        now = self.clock()
        if now - self._last.get(reason, -1e18) >= self.interval:
            extra = self._suppressed.pop(reason, 0)
            more = f" ({extra} more since the last report)" if extra else ""
            log.warning("%s: %s: %s%s", self.topic, reason, loggable(detail), more)
            self._last[reason] = now
        else:
            self._suppressed[reason] += 1


def _as_received(item: object, line: bytes | str) -> bytes | str:
    """One item of a line, for its dead letter; the whole line when orjson cannot write
    the item back (it reads 1,024 levels of nesting and writes 254)."""
    try:
        return orjson.dumps(item)
    except TypeError:
        return line


class _StepFailed(Exception):
    """A step of one outcome's way out failed (``step`` names it)."""

    def __init__(self, step: str, error: Exception) -> None:
        super().__init__(step)
        self.step = step
        self.error = error


class Pipeline:
    """Lines in, attributed alerts and findings out to every sink. Not thread-safe."""

    def __init__(
        self,
        attributor: Attributor,
        sinks: list[Sink],
        *,
        forward_roots: bool = False,
        input_name: str = "file",
        clock: Callable[[], float] = time.monotonic,
        max_reported: int = 100_000,
        dead_letters: DeadLetters | None = None,
        on_done: Callable[[list[object]], None] | None = None,
    ) -> None:
        self.attributor = attributor
        self.sinks = sinks
        self.dead_letters = dead_letters
        #: called with the tags of input lines once everything they carried reached every
        #: sink (or the dead letters): what the durable inbox may forget
        self.on_done = on_done
        # alerts on their way (held back, or in the batch being emitted): id -> its tag
        self._tags: dict[int, tuple[FalcoAlert, object]] = {}
        self._open: Tally[object] = Tally()
        self.forward_roots = forward_roots
        self.input_name = input_name
        self.clock = clock
        self.stats: Tally[str] = Tally()
        self.warnings = RateLimitedLog(clock=clock)
        self._reported: dict[tuple[object, ...], None] = {}
        self._max_reported = max_reported
        #: where each alert on its way came from (``http line 3``), for its dead letter
        self._places: dict[int, str] = {}
        self._observers: list[Callable[[Outcome], None]] = []

    def observe(self, callback: Callable[[Outcome], None]) -> None:
        """Also hand every outcome (roots included) to ``callback`` (the session store)."""
        self._observers.append(callback)

    def _skip(self, reason: str, where: str, detail: str, line: bytes | str | None = None) -> None:
        """Count, log (rate-limited) and, when it carried data, dead-letter an input."""
        self.stats[f"skipped_{reason}"] += 1
        SKIPPED.labels(reason).inc()
        self.warnings.warn(reason, f"{where}: {detail}")
        if line is not None and self.dead_letters is not None:
            self.dead_letters.add(reason, where, line, detail)

    def parse(self, line: bytes | str, where: str) -> Iterator[FalcoAlert]:
        """Alerts in one input line; broken lines are counted, logged and dead-lettered,
        never raised."""
        text = line.strip()
        if not text:
            return
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            self._skip("not_json", where, str(exc), line)
            return
        shallow = shallow_text(text)
        for item in data if isinstance(data, list) else [data]:
            try:
                alert = check_alert(item, shallow=shallow)  # nested past MAX_DEPTH too
            except MalformedAlert as exc:
                self._skip("not_an_alert", where, str(exc), _as_received(item, line))
                continue
            if is_internal(alert):
                self._skip("internal", where, f"Falco internal message {alert['rule']!r}")
                continue
            if alert["source"] == FINDING_SOURCE:
                # whoexec's own findings are made here, never taken in: one sent in would
                # be filed in the store as a finding, an accusation nobody made
                detail = f"source {FINDING_SOURCE!r} is whoexec's own; Falco never sends it"
                self._skip("not_an_alert", where, detail, orjson.dumps(item))
                continue
            yield alert

    def feed(
        self,
        lines: Iterable[bytes | str],
        where: str = "",
        tags: Iterable[object] | None = None,
    ) -> int:
        """Process lines; returns how many alerts were read. Sinks have them on return,
        except those held back for a late root. With ``tags`` (one per line), ``on_done``
        learns which lines are done with.

        Every step of an alert's way (parse, attribute, the store observer, enrich, each
        sink) fails for that alert alone: it goes to the dead letters with the reason and
        its place, and every other alert goes on."""
        outcomes: list[Outcome] = []
        done: list[object] = []
        count = 0
        tagged = iter(tags) if tags is not None else None
        for number, line in enumerate(lines, 1):
            tag = next(tagged) if tagged is not None else None
            place = f"{where or self.input_name} line {number}"
            alerts = list(self.parse(line, place))
            if tag is not None and not alerts:
                done.append(tag)  # nothing in it to wait for
            for alert in alerts:
                self._places[id(alert)] = place
                if tag is not None:
                    self._tags[id(alert)] = (alert, tag)
                    self._open[tag] += 1
            for alert in alerts:
                count += 1
                try:
                    # with whoexec's Falco plugin the alert says who: checked, not rebuilt
                    a = self.attributor
                    plugin = plugin_outcome(alert, a.variable, a.pattern, a.verifier)
                    if plugin is not None:
                        outcomes.append(plugin)
                    else:
                        outcomes.extend(self.attributor.submit(alert, self.clock()))
                except MalformedAlert as exc:
                    self._skip("not_an_alert", place, str(exc), orjson.dumps(alert))
                    self._finished(alert, done)
                except Exception as exc:  # a bug must cost one alert, never the stream
                    detail = f"{type(exc).__name__}: {exc}"
                    self._skip("error", place, detail, orjson.dumps(alert))
                    self._finished(alert, done)
        ALERTS_IN.labels(self.input_name).inc(count)
        self.stats["alerts_in"] += count
        outcomes.extend(self.attributor.release(self.clock()))
        self._emit(outcomes, done)
        return count

    def _finished(self, alert: FalcoAlert, done: list[object]) -> None:
        self._places.pop(id(alert), None)
        entry = self._tags.pop(id(alert), None)
        if entry is None:
            return
        tag = entry[1]
        self._open[tag] -= 1
        if self._open[tag] <= 0:
            del self._open[tag]
            done.append(tag)

    def tick(self) -> None:
        """Release held alerts whose wait is over (call this when input is idle)."""
        self._emit(self.attributor.release(self.clock()), [])

    def _outputs(self, outcome: Outcome) -> list[FalcoAlert]:
        """What one outcome passes on (its enriched alert, its new findings); the store
        observer is told first. Raises ``_StepFailed`` naming the step that failed."""
        step = "store observer"
        try:
            for observer in self._observers:
                observer(outcome)
            step = "enrich"
            out: list[FalcoAlert] = []
            if not outcome.is_root_event or self.forward_roots:
                out.append(enrich(outcome))
            step = "findings"
            new = [(k, f) for k, f in findings(outcome) if k not in self._reported]
        except Exception as exc:
            raise _StepFailed(step, exc) from exc
        if out:
            self.stats[f"attribution_{outcome.attribution.status}"] += 1
            ALERTS_OUT.labels(outcome.attribution.status).inc()
        for key, finding in new:
            self._reported[key] = None
            if len(self._reported) > self._max_reported:
                del self._reported[next(iter(self._reported))]
            out.append(finding)
            self.stats["findings"] += 1
            FINDINGS.labels(finding["rule"]).inc()
        return out

    def _emit(self, outcomes: list[Outcome], done: list[object]) -> None:
        out: list[FalcoAlert] = []
        sources: list[FalcoAlert] = []  # the input alert each item of ``out`` came from
        for outcome in outcomes:
            try:
                items = self._outputs(outcome)
            except _StepFailed as failed:
                reason = "store_rejected" if isinstance(failed.error, StoreRejected) else "error"
                self._skip(
                    reason,
                    f"{self._place(outcome.alert)} ({failed.step})",
                    f"{type(failed.error).__name__}: {failed.error}",
                    orjson.dumps(outcome.alert),
                )
                continue
            out.extend(items)
            sources.extend(outcome.alert for _ in items)
        table = self.attributor.table
        TABLE_SIZE.set(len(table))
        EVICTIONS.set(table.evictions)
        HELD.set(self.attributor.held)
        if outcomes:
            # even with nothing to pass on (a batch of session roots): the store writer
            # must have written what its observer learnt before the lines are done with
            for sink in self.sinks:
                self._write(sink, out, sources)
        for outcome in outcomes:
            self._finished(outcome.alert, done)
        if done and self.on_done is not None:
            self.on_done(done)

    def _place(self, alert: FalcoAlert) -> str:
        return self._places.get(id(alert), self.input_name)

    def _write(self, sink: Sink, out: list[FalcoAlert], sources: list[FalcoAlert]) -> None:
        """A sink takes the batch; if it fails on the data (not on its disk or network:
        an OSError or an unreachable store propagates, and the inbox keeps the batch), each
        alert is tried alone and the one it cannot take goes to the dead letters."""
        try:
            sink.write(out)
            return
        except (OSError, StoreUnavailable):
            raise
        except Exception as exc:
            if len(out) <= 1:
                if out:
                    self._skip(
                        "sink_error",
                        f"{self._place(sources[0])} ({type(sink).__name__})",
                        f"{type(exc).__name__}: {exc}",
                        render_json(out[0]),
                    )
                else:  # nothing of its own failed: what the observer queued
                    self._skip("sink_error", type(sink).__name__, f"{type(exc).__name__}: {exc}")
                return
        for alert, source in zip(out, sources, strict=True):
            self._write(sink, [alert], [source])

    def close(self) -> None:
        self._emit(self.attributor.drain(), [])
        for sink in self.sinks:
            sink.close()


# --- inputs -------------------------------------------------------------------------------


def read_batch(pipeline: Pipeline, stream: IO[bytes], chunk: int = 512) -> int:
    """Read a stream to its end (batch mode and stdin)."""
    total = 0
    batch: list[bytes] = []
    for line in stream:
        batch.append(line)
        if len(batch) >= chunk:
            total += pipeline.feed(batch)
            batch = []
    total += pipeline.feed(batch)
    return total


class InboxReader:
    """Feeds the pipeline from the durable inbox that the HTTP intake appends to.

    Items leave the inbox only after the pipeline's sinks accepted them: a crash in
    between hands them out again after the restart (at-least-once).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        inbox: InboxLogReader,
        heartbeat: Path | None = None,
        poll: float = 0.02,
    ) -> None:
        self.pipeline = pipeline
        self.inbox = inbox
        self.heartbeat = heartbeat
        self.poll = poll
        self._beat = 0.0
        self._stop = StopFlag()  # stop() is called from the pipeline's SIGTERM handler
        pipeline.on_done = self._done

    def _done(self, tags: list[object]) -> None:
        self.inbox.ack([int(tag) for tag in tags])  # type: ignore[call-overload]

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Process until :meth:`stop`, then drain the inbox and close the pipeline."""
        while not self._stop.is_set():
            if not self.process_pending():
                self._stop.wait(self.poll)  # caught up: the intake appends meanwhile
            self._touch_heartbeat()
        while self.process_pending():
            pass
        self.pipeline.close()  # releases what is held: acknowledged through on_done
        self.inbox.close()

    def _touch_heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._beat >= 1.0:
            if self.heartbeat is not None:
                self.heartbeat.touch()
            INBOX_BYTES.set(self.inbox.backlog_bytes())
            self._beat = now

    def process_pending(self) -> int:
        """Feed the next items; each leaves the inbox once every sink has what it carried
        (a held alert only when it is released). A crash before that hands it out again."""
        batch = self.inbox.read(512)
        if batch:
            self.pipeline.feed(
                [body for _, body in batch], where="http", tags=[item for item, _ in batch]
            )
        else:
            self.pipeline.tick()
        return len(batch)
