"""A local HTTP server that speaks the part of the Kubernetes REST API the pod cache uses.

The real apiserver (tests/e2e) is what the pod cache is proven on; this fake is for what
the real one will not do on request: outages, hangs, a compaction at a chosen moment.
Where it answers, it answers as kube-apiserver does:

- ``GET /api/v1/pods`` is a ``PodList`` with ``metadata.resourceVersion`` (``limit`` and
  ``continue`` page it);
- ``?watch=true&resourceVersion=RV`` streams, one JSON event per line in a chunked
  response (one event a chunk, or all that are pending in one with ``rechunk``, as a
  proxy between may send them: chunks are hop-by-hop), every change after RV, then every
  new one, to **each** watcher (they do not share a queue); ``allowWatchBookmarks=true``
  gets ``BOOKMARK`` events carrying the current version; a version older than the last
  compaction gets an ``ERROR`` event with a 410 ``Status`` ("too old resource version")
  and the stream ends; the stream ends after ``timeoutSeconds``;
- ``GET /api/v1/namespaces/NS/pods/NAME`` is the Pod or a 404 ``Status``.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def make_pod(
    namespace: str,
    name: str,
    uid: str,
    rv: int,
    *,
    annotations=None,
    volumes=None,
    image: str = "nginx:1.27",
) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "resourceVersion": str(rv),
            "annotations": annotations or {},
            "creationTimestamp": "2026-11-22T09:00:00Z",
        },
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": image,
                    # as the pod CREATE mutation leaves it: the volume mounted in the container
                    "volumeMounts": [
                        {"name": v["name"], "mountPath": "/.whoexec", "readOnly": True}
                        for v in volumes or []
                        if v["name"] == "whoexec-env"
                    ],
                }
            ],
            "volumes": volumes or [],
        },
        "status": {"phase": "Running"},
    }


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class FakeApiserver:
    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.rv = 100
        #: every change as (resourceVersion, event); what a compaction removed is gone
        self._history: list[tuple[int, dict[str, Any]]] = []
        self._floor = self.rv  # a watch from below this version is too old
        self._ends = 0  # end_watches() calls: every stream open before one ends
        self._bookmarks = 0
        self._changed = threading.Condition()
        self._closed = threading.Event()
        self._before_next_watch: list[Any] = []
        self.lists = 0
        self.watches: list[str] = []  # the resourceVersion each watch asked for
        self.watch_timeouts: list[str] = []  # the timeoutSeconds each watch asked for
        #: send what is pending as one chunk, as a proxy may re-chunk (chunks are hop-by-hop)
        self.rechunk = False
        self.sent: list[int] = []  # per watch: the version of the last event it sent
        self.open_watches = 0
        self.expired: list[str] = []  # versions answered with 410
        self.gets: list[str] = []
        self.gets_answered = 0
        self.refused = 0  # requests answered 503 while down
        self.hang_gets = 0.0  # seconds a pod GET takes
        self.down = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _json(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True

            def do_GET(self) -> None:
                if outer.down:
                    with outer._changed:
                        outer.refused += 1
                        outer._changed.notify_all()
                    self._json(503, status(503, "ServiceUnavailable", "apiserver is down"))
                    return
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                parts = url.path.strip("/").split("/")
                if url.path == "/api/v1/pods" and query.get("watch") == ["true"]:
                    self._watch(query)
                elif url.path == "/api/v1/pods":
                    self._list(query)
                elif (
                    len(parts) == 6
                    and parts[:3] == ["api", "v1", "namespaces"]
                    and parts[4] == "pods"
                ):
                    outer.gets.append(f"{parts[3]}/{parts[5]}")
                    if outer.hang_gets:
                        outer._closed.wait(outer.hang_gets)
                    pod = outer.pods.get((parts[3], parts[5]))
                    outer.gets_answered += 1
                    if pod is None:
                        self._json(404, status(404, "NotFound", f'pods "{parts[5]}" not found'))
                    else:
                        self._json(200, pod)
                else:
                    self._json(404, status(404, "NotFound", "the server could not find it"))

            def _list(self, query: dict[str, list[str]]) -> None:
                with outer._changed:
                    outer.lists += 1
                    items = sorted(outer.pods.values(), key=lambda p: p["metadata"]["uid"])
                    rv = outer.rv
                start = int(query.get("continue", ["0"])[0] or 0)
                limit = int(query.get("limit", ["0"])[0] or 0) or len(items)
                page = items[start : start + limit]
                metadata: dict[str, Any] = {"resourceVersion": str(rv)}
                if start + limit < len(items):
                    metadata["continue"] = str(start + limit)
                self._json(
                    200,
                    {"kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": page},
                )

            def _send(self, *events: dict[str, Any]) -> bool:
                line = b"".join(json.dumps(event).encode() + b"\n" for event in events)
                try:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                except OSError:
                    return False
                return True

            def _watch(self, query: dict[str, list[str]]) -> None:
                asked = query.get("resourceVersion", [""])[0]
                bookmarks = query.get("allowWatchBookmarks") == ["true"]
                timeout = float(query.get("timeoutSeconds", ["1800"])[0])
                # like kube-apiserver: a chunked response, one event per chunk
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                with outer._changed:
                    for change in outer._before_next_watch:
                        change()  # what happened while the client was between two watches
                    outer._before_next_watch.clear()
                    outer.watches.append(asked)
                    outer.watch_timeouts.append(query.get("timeoutSeconds", [""])[0])
                    outer.sent.append(0)
                    me = len(outer.watches) - 1
                    outer.open_watches += 1
                    since = int(asked) if asked.isdigit() and asked != "0" else outer.rv
                    too_old = since < outer._floor
                    ends, marks = outer._ends, outer._bookmarks
                    outer._changed.notify_all()
                try:
                    if too_old:
                        outer.expired.append(asked)
                        message = f"too old resource version: {since} ({outer._floor})"
                        self._send({"type": "ERROR", "object": status(410, "Expired", message)})
                        return
                    self._stream(me, since, bookmarks, ends, marks, time.monotonic() + timeout)
                finally:
                    with outer._changed:
                        outer.open_watches -= 1
                        outer._changed.notify_all()
                    with contextlib.suppress(OSError):
                        self.wfile.write(b"0\r\n\r\n")

            def _stream(
                self, me: int, since: int, bookmarks: bool, ends: int, marks: int, deadline: float
            ) -> None:
                while True:
                    with outer._changed:
                        while (
                            not any(rv > since for rv, _ in outer._history)
                            and outer._ends == ends
                            and outer._bookmarks == marks
                            and not outer._closed.is_set()
                            and time.monotonic() < deadline
                        ):
                            outer._changed.wait(0.05)
                        # what happened before the end is sent before the stream ends
                        events = [e for rv, e in outer._history if rv > since]
                        since = outer.rv
                        bookmark = bookmarks and outer._bookmarks != marks
                        marks = outer._bookmarks
                        ending = (
                            outer._ends != ends
                            or outer._closed.is_set()
                            or time.monotonic() >= deadline
                        )
                    batches = [events] if outer.rechunk and events else [[e] for e in events]
                    for batch in batches:
                        if not self._send(*batch):
                            return
                    with outer._changed:
                        outer.sent[me] = since
                        outer._changed.notify_all()
                    if bookmark:
                        mark = {
                            "kind": "Pod",
                            "apiVersion": "v1",
                            "metadata": {"resourceVersion": str(since)},
                        }
                        if not self._send({"type": "BOOKMARK", "object": mark}):
                            return
                    if ending:
                        return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    # -- changes, as the apiserver's clients would make them -------------------------------

    def _record(self, kind: str, pod: dict[str, Any]) -> None:
        self._history.append((self.rv, {"type": kind, "object": json.loads(json.dumps(pod))}))
        self._changed.notify_all()

    def add(self, pod: dict[str, Any]) -> None:
        """Create or update a pod: ADDED or MODIFIED for every watcher."""
        with self._changed:
            self.rv += 1
            pod["metadata"]["resourceVersion"] = str(self.rv)
            key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
            kind = "MODIFIED" if key in self.pods else "ADDED"
            self.pods[key] = pod
            self._record(kind, pod)

    def delete(self, namespace: str, name: str) -> None:
        with self._changed:
            self.rv += 1
            pod = self.pods.pop((namespace, name))
            pod["metadata"]["resourceVersion"] = str(self.rv)
            self._record("DELETED", pod)

    # -- what the apiserver does on its own -----------------------------------------------

    def compact(self) -> None:
        """Forget every change so far (etcd compaction, the watch cache moving on): a watch
        that resumes from an older version is answered 410."""
        with self._changed:
            self._history.clear()
            self._floor = self.rv

    def before_next_watch(self, change: Any) -> None:
        """Run ``change`` (add, delete, compact) when the next watch request arrives: what
        happens while a client is between two watches, at exactly that moment."""
        with self._changed:
            self._before_next_watch.append(change)

    def end_watches(self) -> None:
        """End every open watch stream, as a timeout or an apiserver restart does."""
        with self._changed:
            self._ends += 1
            self._changed.notify_all()

    def bookmark(self) -> None:
        """A BOOKMARK with the current version to every watch that allows them."""
        with self._changed:
            self._bookmarks += 1
            self._changed.notify_all()

    def wait_for(self, condition: Any, seconds: float = 10.0, what: str = "") -> None:
        """Block until ``condition()`` holds, re-checked whenever a request arrives."""
        deadline = time.monotonic() + seconds
        with self._changed:
            while not condition():
                left = deadline - time.monotonic()
                assert left > 0, f"timed out waiting for {what or condition}"
                self._changed.wait(min(left, 0.05))

    def close(self) -> None:
        self._closed.set()
        with self._changed:
            self._changed.notify_all()
        self.server.shutdown()
        self.server.server_close()
