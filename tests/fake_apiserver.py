"""A local HTTP server that speaks enough of the Kubernetes REST API for the pod cache.

It answers like kube-apiserver: `GET /api/v1/pods` is a `PodList` with
`metadata.resourceVersion`; `?watch=true` streams one JSON event per line
(`{"type": "ADDED|MODIFIED|DELETED|BOOKMARK|ERROR", "object": ...}`), an expired watch is an
`ERROR` event carrying a `Status` with code 410; `GET /api/v1/namespaces/NS/pods/NAME` is
the Pod or a 404 `Status`.
"""

from __future__ import annotations

import contextlib
import json
import queue
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
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.lists = 0
        self.watches: list[str] = []
        self.gets: list[str] = []
        self.hang_gets = 0.0  # seconds a pod GET takes
        self.down = False
        self._lock = threading.Lock()
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
                    self._json(503, status(503, "ServiceUnavailable", "apiserver is down"))
                    return
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                parts = url.path.strip("/").split("/")
                if url.path == "/api/v1/pods" and query.get("watch") == ["true"]:
                    self._watch(query)
                elif url.path == "/api/v1/pods":
                    with outer._lock:
                        outer.lists += 1
                        items = list(outer.pods.values())
                        rv = outer.rv
                    self._json(
                        200,
                        {
                            "kind": "PodList",
                            "apiVersion": "v1",
                            "metadata": {"resourceVersion": str(rv)},
                            "items": items,
                        },
                    )
                elif (
                    len(parts) == 6
                    and parts[:3] == ["api", "v1", "namespaces"]
                    and parts[4] == "pods"
                ):
                    outer.gets.append(f"{parts[3]}/{parts[5]}")
                    if outer.hang_gets:
                        time.sleep(outer.hang_gets)
                    pod = outer.pods.get((parts[3], parts[5]))
                    if pod is None:
                        self._json(404, status(404, "NotFound", f'pods "{parts[5]}" not found'))
                    else:
                        self._json(200, pod)
                else:
                    self._json(404, status(404, "NotFound", "the server could not find it"))

            def _watch(self, query: dict[str, list[str]]) -> None:
                outer.watches.append(query.get("resourceVersion", [""])[0])
                # like kube-apiserver: a chunked response, one event per chunk
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                deadline = time.monotonic() + float(query.get("timeoutSeconds", ["30"])[0])
                while time.monotonic() < deadline:
                    try:
                        event = outer.events.get(timeout=0.05)
                    except queue.Empty:
                        continue
                    if event is None:  # the server ends this watch
                        break
                    line = json.dumps(event).encode() + b"\n"
                    try:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                        self.wfile.flush()
                    except OSError:
                        return
                    if event["type"] == "ERROR":
                        break
                with contextlib.suppress(OSError):
                    self.wfile.write(b"0\r\n\r\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, pod: dict[str, Any], announce: bool = True) -> None:
        with self._lock:
            self.rv += 1
            pod["metadata"]["resourceVersion"] = str(self.rv)
            key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
            kind = "MODIFIED" if key in self.pods else "ADDED"
            self.pods[key] = pod
        if announce:
            self.events.put({"type": kind, "object": pod})

    def delete(self, namespace: str, name: str) -> None:
        with self._lock:
            self.rv += 1
            pod = self.pods.pop((namespace, name))
            pod["metadata"]["resourceVersion"] = str(self.rv)
        self.events.put({"type": "DELETED", "object": pod})

    def expire_watch(self) -> None:
        self.events.put(
            {
                "type": "ERROR",
                "object": status(410, "Expired", f"too old resource version: 100 ({self.rv})"),
            }
        )

    def close(self) -> None:
        self.events.put(None)
        self.server.shutdown()
        self.server.server_close()
