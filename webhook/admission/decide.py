"""AdmissionReview in, AdmissionReview out: the webhook's decisions (the public entry).

Pure core: the clock (``now``) and the signing key come in as arguments, nothing is read
from the environment and nothing is written anywhere. Each kind of request is decided in
its own module: ``exec`` (``kubectl exec``; ``attach`` is let through), ``debug``
(``kubectl debug``'s ephemeral containers) and ``pods`` (pod CREATE). They share
``review`` (the AdmissionReview's shapes, its parsing and the rendered answer) and
``policy`` (the policy, the target pod's facts, the caller). The names the adapters use
are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from webhook.admission.debug import _decide_ephemeral
from webhook.admission.exec import _decide_exec, _with_warning
from webhook.admission.pods import _decide_pod_create, quantity
from webhook.admission.policy import (
    DEFAULT_CONTAINER_ANNOTATION,
    ENV_VOLUME,
    MIRROR_ANNOTATION,
    OPT_OUT_ANNOTATION,
    STATIC_ENV_IN_IMAGE,
    AdmissionPolicy,
    PodFacts,
    _Context,
    pod_facts,
)
from webhook.admission.review import (
    API_VERSION,
    MAX_GROUPS,
    Admission,
    AdmissionRequest,
    AdmissionResponse,
    AdmissionReview,
    Decision,
    GroupVersionKind,
    GroupVersionResource,
    PodExecOptions,
    Status,
    UserInfo,
    _is_ephemeral_update,
    _is_pod_create,
    is_pod_connect,
    parse_review,
    render_response,
)
from webhook.identity import Signer

__all__ = [
    "API_VERSION",
    "DEFAULT_CONTAINER_ANNOTATION",
    "ENV_VOLUME",
    "MAX_GROUPS",
    "MIRROR_ANNOTATION",
    "OPT_OUT_ANNOTATION",
    "STATIC_ENV_IN_IMAGE",
    "Admission",
    "AdmissionPolicy",
    "AdmissionRequest",
    "AdmissionResponse",
    "AdmissionReview",
    "Decision",
    "GroupVersionKind",
    "GroupVersionResource",
    "PodExecOptions",
    "PodFacts",
    "Status",
    "UserInfo",
    "decide",
    "is_pod_connect",
    "outcomes",
    "parse_review",
    "pod_facts",
    "quantity",
    "render_response",
    "review_admission",
]


def decide(
    request: AdmissionRequest,
    policy: AdmissionPolicy,
    signer: Signer,
    trusted_keys: Mapping[str, Ed25519PublicKey],
    now: int,
    pod: PodFacts | None,
    pod_lookup: str,
) -> Decision:
    """Decide on one parsed request. ``trusted_keys`` recognise our own earlier rewrites.

    ``pod`` is what the pod cache knows of the exec's target (None without a cache, or
    when the look-up failed or timed out, which ``pod_lookup`` then says).
    """
    ctx = _Context(request, policy, signer, trusted_keys, now, pod)
    if is_pod_connect(request, "exec"):
        return _with_warning(_decide_exec(ctx), pod_lookup)
    if is_pod_connect(request, "attach"):
        # attach joins a process that already runs: there is no command to rewrite
        return _with_warning(Decision(allowed=True, outcome="skipped-attach"), pod_lookup)
    if _is_ephemeral_update(request):
        return _decide_ephemeral(ctx)
    if _is_pod_create(request):
        return _decide_pod_create(ctx)
    return Decision(allowed=True, outcome="skipped-not-exec")


def review_admission(
    body: object,
    policy: AdmissionPolicy,
    signer: Signer,
    trusted_keys: Mapping[str, Ed25519PublicKey],
    now: int,
    pod: PodFacts | None = None,
    pod_lookup: str = "",
) -> Admission:
    """Parse an AdmissionReview body, decide, and render the answer."""
    request = parse_review(body)
    decision = decide(request, policy, signer, trusted_keys, now, pod, pod_lookup)
    return Admission(render_response(request, decision, pod_lookup), decision)


def outcomes() -> Sequence[str]:
    """Every outcome label :func:`decide` can produce, for metrics pre-registration."""
    return (
        "injected",
        "denied",
        "skipped-already-injected",
        "skipped-excluded-namespace",
        "skipped-excluded-user",
        "skipped-excluded-group",
        "skipped-empty-command",
        "skipped-argv0-assignment",
        "skipped-token-too-large",
        "skipped-too-many-groups",
        "skipped-attach",
        "skipped-no-new-container",
        "skipped-not-exec",
        "skipped-pod-opt-out",
        "skipped-no-env",
        "skipped-no-static-env",
        "skipped-env-volume-conflict",
        "skipped-name-collision",
        "skipped-windows",
        "skipped-static-pod",
        "env-volume-added",
    )
