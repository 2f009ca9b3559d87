"""A cache of pods fed by list+watch through the official ``kubernetes`` client (adapter).

A PodExecOptions request names only namespace, pod and container; Kubernetes gives the
webhook nothing else (``objectSelector`` never matches a CONNECT, k8s#132287). The cache
supplies the pod's UID, its ``whoexec.io/inject`` annotation, whether it has the static
env volume, and its images.

An exec admission never waits on the API server: a hit is a dict look-up; a miss may do
one GET bounded by ``lookup_timeout`` (well under the webhook's ``timeoutSeconds``), and
past that the admission proceeds without pod data. Watch errors, ``410 Gone`` and
disconnects lead to a relist with exponential backoff. The cache is bounded.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import orjson
from prometheus_client import Counter, Gauge

from webhook.admission.decide import PodFacts, pod_facts
from webhook.errors import ConfigError
from webhook.text import loggable

log = logging.getLogger("whoexec.podcache")

LOOKUPS = Counter("whoexec_pod_lookups", "Pod look-ups by exec admissions, by result.", ["result"])
RELISTS = Counter("whoexec_pod_cache_relists", "Full relists of pods, by reason.", ["reason"])
CACHED = Gauge("whoexec_pod_cache_pods", "Pods in the cache.", multiprocess_mode="max")

PodKey = tuple[str, str]  # (namespace, name)


def api_client(kube: str) -> Any:
    """``in-cluster``, a kubeconfig path, or an apiserver URL (``http(s)://...``)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        if kube == "in-cluster":
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        elif kube.startswith(("http://", "https://")):
            configuration.host = kube
        else:
            config.load_kube_config(config_file=kube, client_configuration=configuration)  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError) as exc:
        raise ConfigError(f"cannot configure the Kubernetes client from {kube!r}: {exc}") from None
    # one bounded attempt per request: urllib3's default retries would multiply the timeout
    configuration.retries = False
    return client.ApiClient(configuration)


class PodCache:
    """Pods by namespace and name, kept current by a list+watch thread."""

    def __init__(
        self,
        api: Any,
        *,
        max_pods: int = 200_000,
        lookup_timeout: float = 0.5,
        watch_timeout: int = 300,
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api)
        self.max_pods = max_pods
        self.lookup_timeout = lookup_timeout
        self.watch_timeout = watch_timeout
        self.backoff = backoff
        self.synced = threading.Event()
        self.relists = 0
        self.watches = 0  # watch requests made: a resumed watch counts, a relist does not
        self._pods: dict[PodKey, PodFacts] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._response: Any = None  # the open watch stream, closed by stop()
        self._thread: threading.Thread | None = None

    # -- the admission side ----------------------------------------------------------------

    def lookup(self, namespace: str, name: str) -> tuple[PodFacts | None, str]:
        """The pod's facts and how they were found: cached, fetched, not-found, timeout, error."""
        with self._lock:
            facts = self._pods.get((namespace, name))
        if facts is not None:
            LOOKUPS.labels("cached").inc()
            return facts, "cached"
        result: tuple[PodFacts | None, str]
        try:
            reply: Any = self.core.read_namespaced_pod(
                name, namespace, _preload_content=False, _request_timeout=self.lookup_timeout
            )
            pod = orjson.loads(reply.data)
            facts = pod_facts(pod)
            self._put(pod, facts)
            result = facts, "fetched"
        except Exception as exc:
            result = None, _classify(exc)
            if result[1] != "not-found":
                log.warning("pod look-up %s/%s: %s", loggable(namespace), loggable(name), result[1])
        LOOKUPS.labels(result[1]).inc()
        return result

    def ready(self) -> str | None:
        return None if self.synced.is_set() else "the pod cache has not synced yet"

    def __len__(self) -> int:
        return len(self._pods)

    # -- the list+watch side ---------------------------------------------------------------

    def _put(self, pod: dict[str, Any], facts: PodFacts | None = None) -> None:
        metadata = pod.get("metadata") or {}
        key = (str(metadata.get("namespace", "")), str(metadata.get("name", "")))
        with self._lock:
            self._pods.pop(key, None)
            self._pods[key] = facts or pod_facts(pod)
            while len(self._pods) > self.max_pods:
                del self._pods[next(iter(self._pods))]
        CACHED.set(len(self._pods))

    def _delete(self, pod: dict[str, Any]) -> None:
        metadata = pod.get("metadata") or {}
        with self._lock:
            self._pods.pop(
                (str(metadata.get("namespace", "")), str(metadata.get("name", ""))), None
            )
        CACHED.set(len(self._pods))

    def relist(self) -> str:
        """Replace the cache with a full list, a page at a time; returns its resourceVersion.

        Paginated (``limit``/``continue``): an unpaginated list of a large cluster is one
        response of every whole Pod, decoded at once in every gunicorn worker.
        """
        pods: dict[tuple[str, str], PodFacts] = {}
        token: str | None = None
        version = ""
        while True:
            reply: Any = self.core.list_pod_for_all_namespaces(
                limit=LIST_PAGE,
                _continue=token,
                _preload_content=False,
                _request_timeout=(5, 60),
            )
            listing = orjson.loads(reply.data)
            for pod in listing.get("items") or []:
                metadata = pod.get("metadata") or {}
                key = (str(metadata.get("namespace", "")), str(metadata.get("name", "")))
                if len(pods) < self.max_pods:
                    pods[key] = pod_facts(pod)  # only the facts are kept, never the Pod
            meta = listing.get("metadata") or {}
            version = str(meta.get("resourceVersion", "")) or version
            token = meta.get("continue") or None
            if token is None:
                break
        with self._lock:
            self._pods = pods
        CACHED.set(len(pods))
        self.relists += 1
        self.synced.set()
        return version

    def watch(self, resource_version: str) -> str:
        """Apply watch events until the stream ends; returns the last resourceVersion.

        The stream is read here, one JSON event per line, rather than through the
        client's ``Watch``, whose handling of ERROR events changed across releases (with
        ``deserialize=False`` 37.x raises ``KeyError('raw_object')``). An ERROR event with
        code 410 means the version is too old: :class:`WatchExpired`, then a relist.
        """
        reply: Any = self.core.list_pod_for_all_namespaces(
            watch=True,
            resource_version=resource_version,
            timeout_seconds=self.watch_timeout,
            allow_watch_bookmarks=True,
            _preload_content=False,
            _request_timeout=(5, self.watch_timeout + 30),
        )
        self._response = reply
        self.watches += 1
        buffer = b""
        try:
            if self._stop.is_set():  # stop() ran while the request was on its way
                return resource_version
            for chunk in reply.stream(65536):
                if self._stop.is_set():
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        resource_version = self._apply(orjson.loads(line), resource_version)
        finally:
            self._response = None
            reply.release_conn()
        return resource_version

    def _apply(self, event: dict[str, Any], resource_version: str) -> str:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise WatchExpired
            raise WatchFailed(f"an ERROR event, code {code}: {str(obj.get('message', ''))[:200]}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED"):
            self._put(obj)
        elif kind == "DELETED":
            self._delete(obj)
        return str(version) if version else resource_version

    def run(self) -> None:
        delay = self.backoff[0]
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self.relist()
                version = self.watch(version)
                delay = self.backoff[0]
            except Exception as exc:
                if self._stop.is_set():
                    break
                reason = _classify(exc)
                RELISTS.labels("gone" if reason == "gone" else "error").inc()
                if reason == "gone":
                    log.info("pod watch expired (410 Gone): relisting")
                    version = None
                    continue
                # the apiserver's own words for an ERROR event: why the watch failed
                said = f": {loggable(str(exc))}" if isinstance(exc, WatchFailed) else ""
                log.warning("pod list/watch failed (%s%s): relisting in %.1fs", reason, said, delay)
                version = None
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="whoexec-pod-cache", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            # a watch waiting for its next event is blocked in recv(), which close() from
            # another thread does not wake on Linux; urllib3's shutdown() (>= 2.3) does
            with contextlib.suppress(Exception):
                response.shutdown()
            with contextlib.suppress(Exception):
                response.close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (410 Gone): relist."""


class WatchFailed(Exception):
    """The watch stream carried an ERROR event other than 410."""


#: pods per page of a relist
LIST_PAGE = 500


def _classify(exc: BaseException) -> str:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, TimeoutError

    if isinstance(exc, WatchExpired):
        return "gone"
    if isinstance(exc, WatchFailed):
        return "watch-error"

    if isinstance(exc, ApiException):
        if exc.status == 404:
            return "not-found"
        if exc.status == 410:
            return "gone"
        return f"http-{exc.status}"
    cause = exc.reason if isinstance(exc, MaxRetryError) else exc
    # urllib3 makes a refused connection a ConnectTimeoutError too (NewConnectionError
    # subclasses it): the apiserver is unreachable, not slow
    if isinstance(cause, NewConnectionError):
        return "unreachable"
    if isinstance(cause, TimeoutError):
        return "timeout"
    if isinstance(exc, MaxRetryError | ProtocolError | ConnectionError | OSError):
        return "unreachable"
    return "error"
