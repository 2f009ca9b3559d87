"""The admission webhook's Flask app (adapter), run by gunicorn through ``whoexec serve``.

Routes: ``POST /mutate``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``.
A malformed review gets HTTP 400 with a JSON error; a policy denial gets HTTP 200 with
``allowed: false``. Input never causes a 500.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flask import Flask, Response, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from werkzeug.exceptions import HTTPException

from webhook.admission.decide import (
    AdmissionPolicy,
    PodFacts,
    decide,
    is_pod_connect,
    outcomes,
    parse_review,
    render_response,
)
from webhook.errors import MalformedReview
from webhook.identity import Signer
from webhook.text import loggable

log = logging.getLogger("whoexec.admission")

ADMISSIONS = Counter("whoexec_admissions", "Admission reviews answered, by outcome.", ["outcome"])
BAD_REQUESTS = Counter(
    "whoexec_bad_requests", "Requests refused before admission, by HTTP status.", ["status"]
)
LATENCY = Histogram(
    "whoexec_admission_duration_seconds",
    "Time from request body received to response rendered.",
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
TOKEN_BYTES = Histogram(
    "whoexec_token_bytes",
    "Size of minted identity tokens.",
    buckets=(256, 384, 512, 640, 768, 896, 1024),
)
for _outcome in outcomes():
    ADMISSIONS.labels(_outcome)


class PodLookup(Protocol):
    """What the server needs of the pod cache (``webhook.admission.podcache.PodCache``)."""

    def lookup(self, namespace: str, name: str) -> tuple[PodFacts | None, str]: ...

    def ready(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class WebhookState:
    """What the app needs, loaded by the caller (keys and certificates are IO)."""

    policy: AdmissionPolicy
    signer: Signer
    trusted_keys: Mapping[str, Ed25519PublicKey]
    max_body_bytes: int
    clock: Callable[[], float] = time.time
    #: extra readiness check, e.g. "the TLS certificate loads"; returns a problem or None
    readiness: Callable[[], str | None] = field(default=lambda: None)
    #: registry for /metrics; gunicorn with several workers passes a multiprocess one
    registry: Callable[[], CollectorRegistry] | None = None
    #: the pod cache, when the webhook is pod-aware
    pods: PodLookup | None = None


def _json(payload: object, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status=status, mimetype="application/json")


def create_app(state: WebhookState) -> Flask:
    """The Flask application factory."""
    app = Flask("whoexec")
    app.config["MAX_CONTENT_LENGTH"] = state.max_body_bytes

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if request.path == "/mutate":
            BAD_REQUESTS.labels(str(status)).inc()
        return _json({"error": exc.description or exc.name, "status": status}, status)

    @app.post("/mutate")
    def mutate() -> Response:
        started = time.perf_counter()
        body = request.get_data(cache=False)  # 413 above MAX_CONTENT_LENGTH
        try:
            review = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            BAD_REQUESTS.labels("400").inc()
            return _json({"error": f"body is not JSON: {exc}", "status": 400}, 400)
        try:
            req = parse_review(review)
            pod, lookup = None, ""
            if state.pods is not None and is_pod_connect(req, "exec"):
                pod, lookup = state.pods.lookup(req.get("namespace", ""), req.get("name", ""))
            decision = decide(
                req,
                state.policy,
                state.signer,
                state.trusted_keys,
                now=int(state.clock()),
                pod=pod,
                pod_lookup=lookup,
            )
        except MalformedReview as exc:
            BAD_REQUESTS.labels("400").inc()
            return _json({"error": str(exc), "status": 400}, 400)
        answer = render_response(req, decision, lookup)
        elapsed = time.perf_counter() - started
        ADMISSIONS.labels(decision.outcome).inc()
        LATENCY.observe(elapsed)
        if decision.token_bytes:
            TOKEN_BYTES.observe(decision.token_bytes)
        obj = req.get("object") or {}
        # one JSON line per admission; it never holds the token or key material
        log.info(
            orjson.dumps(
                {
                    "msg": "admission",
                    "uid": req["uid"],
                    "outcome": decision.outcome,
                    "allowed": decision.allowed,
                    # attacker-sized strings: escaped and capped (a 70 KB pod name
                    # once went into one log line whole)
                    "user": loggable(req.get("userInfo", {}).get("username", "")),
                    "namespace": loggable(req.get("namespace", "")),
                    "pod": loggable(req.get("name", "")),
                    "container": loggable(
                        obj.get("container", "") if isinstance(obj, dict) else ""
                    ),
                    "subresource": req.get("subResource", ""),
                    "operation": req.get("operation", ""),
                    "dry_run": bool(req.get("dryRun", False)),
                    "kid": state.signer.kid if decision.token_bytes else "",
                    "token_bytes": decision.token_bytes,
                    "pod_lookup": lookup,
                    "duration_ms": round(elapsed * 1000, 3),
                }
            ).decode()
        )
        return _json(answer)

    @app.get("/healthz")
    def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        problem = state.readiness() or (state.pods.ready() if state.pods is not None else None)
        if problem:
            return _json({"status": "not ready", "reason": problem}, 503)
        return _json({"status": "ready", "kid": state.signer.kid})

    @app.get("/metrics")
    def metrics() -> Response:
        registry = state.registry() if state.registry else None
        data = generate_latest(registry) if registry else generate_latest()
        return Response(data, mimetype=CONTENT_TYPE_LATEST)

    return app
