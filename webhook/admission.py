"""AdmissionReview in, AdmissionReview out: the webhook's decisions.

Pure core: the clock (``now``) and the signing key come in as arguments, nothing is read
from the environment and nothing is written anywhere.

Kubernetes facts this module depends on:

* ``kubectl exec`` reaches admission as ``CONNECT`` on ``pods`` with sub-resource
  ``exec`` and a ``PodExecOptions`` object; the apiserver rebuilds the kubelet URL from
  the patched ``command`` (honoured since 1.12, for SPDY and WebSocket exec alike).
* A JSON patch that fails to apply fails the exec even under ``failurePolicy: Ignore``,
  so the patch is a single ``add`` on ``/command`` (RFC 6902 ``add`` replaces an existing
  member) and nothing else is touched.
* CONNECT requests carry ``oldObject: null``, ``options: null`` and ``dryRun: false``; the
  request ``uid`` is new per webhook call and is not the audit ID.
* ``kubectl debug`` arrives as ``UPDATE`` of ``pods/ephemeralcontainers`` whose object is
  the whole Pod; new containers get the variable in their ``env``.
* ``auditAnnotations`` land in the audit event as ``<webhook-name>/<key>``; keys must be
  valid qualified-name parts.
"""

from __future__ import annotations

import base64
import fnmatch
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, TypedDict

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from webhook.errors import MalformedReview, TokenError, TokenTooLarge
from webhook.identity import Identity, Signer, sign_identity, verify_token

API_VERSION = "admission.k8s.io/v1"


# --- wire shapes (admission.k8s.io/v1) ---------------------------------------------------


class GroupVersionKind(TypedDict):
    group: str
    version: str
    kind: str


class GroupVersionResource(TypedDict):
    group: str
    version: str
    resource: str


class UserInfo(TypedDict, total=False):
    username: str
    uid: str
    groups: list[str]
    extra: dict[str, list[str]]


class PodExecOptions(TypedDict, total=False):
    kind: str
    apiVersion: str
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool
    container: str
    command: list[str]


class AdmissionRequest(TypedDict, total=False):
    uid: str
    kind: GroupVersionKind
    resource: GroupVersionResource
    subResource: str
    requestKind: GroupVersionKind
    requestResource: GroupVersionResource
    requestSubResource: str
    name: str
    namespace: str
    operation: str
    userInfo: UserInfo
    object: dict[str, Any] | None
    oldObject: dict[str, Any] | None
    dryRun: bool
    options: dict[str, Any] | None


class Status(TypedDict, total=False):
    code: int
    message: str
    reason: str


class AdmissionResponse(TypedDict):
    uid: str
    allowed: bool
    status: NotRequired[Status]
    patch: NotRequired[str]
    patchType: NotRequired[Literal["JSONPatch"]]
    auditAnnotations: NotRequired[dict[str, str]]
    warnings: NotRequired[list[str]]


class AdmissionReview(TypedDict):
    apiVersion: str
    kind: Literal["AdmissionReview"]
    response: AdmissionResponse


# --- policy and results -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    """What the webhook injects, and whom it leaves alone (globs, ``fnmatch`` syntax)."""

    identity_variable: str = "WHOEXEC_IDENTITY"
    env_path: str = "/usr/bin/env"
    exclude_namespaces: tuple[str, ...] = ()
    exclude_users: tuple[str, ...] = ()
    exclude_groups: tuple[str, ...] = ()
    clock_skew_seconds: int = 300


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one admission, before it is rendered as an AdmissionReview."""

    allowed: bool
    outcome: str  # injected | denied | skipped-<reason>
    patch: tuple[dict[str, Any], ...] = ()
    message: str = ""
    session_id: str = ""
    token_bytes: int = 0
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Admission:
    """A rendered answer plus what the adapter logs and counts about it."""

    response: AdmissionReview
    decision: Decision
    request: AdmissionRequest = field(repr=False)


# --- parsing ------------------------------------------------------------------------------


def _field(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise MalformedReview(f"{path}.{key} must be {names}, got {_show(value)}")
    return value


def _optional(obj: Mapping[str, Any], key: str, kind: type, path: str) -> Any:
    if obj.get(key) is None:
        return None
    return _field(obj, key, kind, path)


def _show(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _string_list(obj: Mapping[str, Any], key: str, path: str) -> list[str]:
    value = _optional(obj, key, list, path)
    if value is None:
        return []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise MalformedReview(f"{path}.{key}[{index}] must be str, got {_show(item)}")
    return list(value)


def parse_review(body: object) -> AdmissionRequest:
    """Validate the parts of an AdmissionReview v1 that whoexec reads.

    Raises :class:`MalformedReview` naming the first bad field; the server answers 400.
    """
    if not isinstance(body, dict):
        raise MalformedReview(f"body must be a JSON object, got {type(body).__name__}")
    if body.get("apiVersion") != API_VERSION or body.get("kind") != "AdmissionReview":
        raise MalformedReview(
            f"body must be apiVersion {API_VERSION} kind AdmissionReview, got "
            f"apiVersion {_show(body.get('apiVersion'))} kind {_show(body.get('kind'))}"
        )
    request = _field(body, "request", dict, "body")
    uid = _field(request, "uid", str, "request")
    if not uid:
        raise MalformedReview("request.uid must not be empty")
    _field(request, "operation", str, "request")
    for key in ("kind", "resource"):
        _field(request, key, dict, "request")
    _field(request["resource"], "resource", str, "request.resource")
    for key in ("subResource", "name", "namespace"):
        _optional(request, key, str, "request")
    user_info = _field(request, "userInfo", dict, "request")
    _optional(user_info, "username", str, "request.userInfo")
    _optional(user_info, "uid", str, "request.userInfo")
    _string_list(user_info, "groups", "request.userInfo")
    _optional(request, "object", dict, "request")
    _optional(request, "oldObject", dict, "request")
    _optional(request, "dryRun", bool, "request")
    checked: AdmissionRequest = request
    return checked


# --- decisions ----------------------------------------------------------------------------


def _is_exec(request: AdmissionRequest, subresource: str) -> bool:
    return (
        request.get("operation") == "CONNECT"
        and request["resource"].get("resource") == "pods"
        and request.get("subResource") == subresource
    )


def _is_ephemeral_update(request: AdmissionRequest) -> bool:
    return (
        request.get("operation") == "UPDATE"
        and request["resource"].get("resource") == "pods"
        and request.get("subResource") == "ephemeralcontainers"
    )


def _exclusion(request: AdmissionRequest, policy: AdmissionPolicy) -> str | None:
    user_info = request.get("userInfo", {})
    namespace = request.get("namespace", "")
    if any(fnmatch.fnmatchcase(namespace, pattern) for pattern in policy.exclude_namespaces):
        return "skipped-excluded-namespace"
    username = user_info.get("username", "")
    if any(fnmatch.fnmatchcase(username, pattern) for pattern in policy.exclude_users):
        return "skipped-excluded-user"
    for group in user_info.get("groups", []):
        if any(fnmatch.fnmatchcase(group, pattern) for pattern in policy.exclude_groups):
            return "skipped-excluded-group"
    return None


@dataclass(frozen=True, slots=True)
class _Context:
    request: AdmissionRequest
    policy: AdmissionPolicy
    signer: Signer
    trusted_keys: Mapping[str, Ed25519PublicKey]
    now: int
    pod_uid: str | None

    def identity_for(self, container: str) -> Identity:
        user_info = self.request.get("userInfo", {})
        return Identity(
            session_id=self.request["uid"],
            user=user_info.get("username", ""),
            uid=user_info.get("uid", ""),
            groups=tuple(user_info.get("groups", [])),
            namespace=self.request.get("namespace", ""),
            pod=self.request.get("name", ""),
            container=container,
            issued_at=self.now,
            pod_uid=self.pod_uid,
        )

    def own_earlier_token(self, value: str, container: str) -> Identity | None:
        """The identity if ``value`` is a token we minted for this caller and target."""
        try:
            identity = verify_token(
                value, self.trusted_keys, self.now, self.policy.clock_skew_seconds
            )
        except TokenError:
            return None
        user_info = self.request.get("userInfo", {})
        same_caller = identity.user == user_info.get("username", "")
        target = (self.request.get("namespace", ""), self.request.get("name", ""), container)
        return identity if same_caller and identity.is_bound_to(*target) else None


def _denied(reason: str) -> Decision:
    return Decision(allowed=False, outcome="denied", message=reason)


def _decide_exec(ctx: _Context) -> Decision:
    obj = ctx.request.get("object")
    if obj is None:
        raise MalformedReview("request.object must be a PodExecOptions for pods/exec, got null")
    if obj.get("kind") not in (None, "PodExecOptions"):
        raise MalformedReview(
            f"request.object.kind must be PodExecOptions, got {_show(obj['kind'])}"
        )
    command = _string_list(obj, "command", "request.object")
    container = _optional(obj, "container", str, "request.object") or ""
    variable = ctx.policy.identity_variable
    marker = variable + "="

    # Our own earlier rewrite (reinvocation, or a second webhook in the chain): a command
    # that starts with the env path and a token we minted for this caller and target.
    if len(command) >= 3 and command[0] == ctx.policy.env_path and command[1].startswith(marker):
        earlier = ctx.own_earlier_token(command[1][len(marker) :], container)
        if earlier is not None and not any(marker in arg for arg in command[2:]):
            return Decision(
                allowed=True, outcome="skipped-already-injected", session_id=earlier.session_id
            )
    if any(marker in arg for arg in command):
        return _denied(
            f"whoexec: the command sets {variable}, which only the whoexec webhook may set; "
            "remove it from the command"
        )
    if skipped := _exclusion(ctx.request, ctx.policy):
        return Decision(allowed=True, outcome=skipped)
    if not command:
        return Decision(allowed=True, outcome="skipped-empty-command")
    if "=" in command[0]:
        # env would read argv[0] as another NAME=VALUE assignment, not as the program
        return Decision(allowed=True, outcome="skipped-argv0-assignment")
    try:
        token = sign_identity(ctx.identity_for(container), ctx.signer)
    except TokenTooLarge:
        return Decision(allowed=True, outcome="skipped-token-too-large")
    new_command = [ctx.policy.env_path, marker + token, *command]
    return Decision(
        allowed=True,
        outcome="injected",
        patch=({"op": "add", "path": "/command", "value": new_command},),
        session_id=ctx.request["uid"],
        token_bytes=len(token),
    )


def _container_names(pod: Mapping[str, Any] | None, path: str) -> list[dict[str, Any]]:
    if pod is None:
        return []
    spec = _optional(pod, "spec", dict, path) or {}
    containers = _optional(spec, "ephemeralContainers", list, f"{path}.spec") or []
    for index, container in enumerate(containers):
        where = f"{path}.spec.ephemeralContainers[{index}]"
        if not isinstance(container, dict):
            raise MalformedReview(f"{where} must be an object, got {_show(container)}")
        _field(container, "name", str, where)
    return containers


def _decide_ephemeral(ctx: _Context) -> Decision:
    if ctx.request.get("object") is None:
        raise MalformedReview("request.object must be a Pod for pods/ephemeralcontainers")
    containers = _container_names(ctx.request.get("object"), "request.object")
    existing = {
        c["name"] for c in _container_names(ctx.request.get("oldObject"), "request.oldObject")
    }
    variable = ctx.policy.identity_variable
    new = [(index, c) for index, c in enumerate(containers) if c["name"] not in existing]
    if not new:
        return Decision(allowed=True, outcome="skipped-no-new-container")

    patch: list[dict[str, Any]] = []
    already = 0
    for index, container in new:
        env = container.get("env")
        if env is not None and not isinstance(env, list):
            raise MalformedReview(
                f"request.object.spec.ephemeralContainers[{index}].env must be a list"
            )
        supplied = [e for e in env or [] if isinstance(e, dict) and e.get("name") == variable]
        if supplied:
            value = supplied[0].get("value")
            own = isinstance(value, str) and ctx.own_earlier_token(value, container["name"])
            if len(supplied) == 1 and own:
                already += 1
                continue
            return _denied(
                f"whoexec: ephemeral container {container['name']!r} sets {variable}, which "
                "only the whoexec webhook may set"
            )
    if skipped := _exclusion(ctx.request, ctx.policy):
        return Decision(allowed=True, outcome=skipped)
    token_bytes = 0
    for index, container in new:
        if any(
            isinstance(e, dict) and e.get("name") == variable for e in container.get("env") or []
        ):
            continue  # our own earlier token, verified above
        try:
            token = sign_identity(ctx.identity_for(container["name"]), ctx.signer)
        except TokenTooLarge:
            return Decision(allowed=True, outcome="skipped-token-too-large")
        token_bytes = max(token_bytes, len(token))
        entry = {"name": variable, "value": token}
        base = f"/spec/ephemeralContainers/{index}/env"
        if container.get("env") is None:
            patch.append({"op": "add", "path": base, "value": [entry]})
        else:
            patch.append({"op": "add", "path": base + "/-", "value": entry})
    if not patch:
        return Decision(
            allowed=True, outcome="skipped-already-injected", session_id=ctx.request["uid"]
        )
    return Decision(
        allowed=True,
        outcome="injected",
        patch=tuple(patch),
        session_id=ctx.request["uid"],
        token_bytes=token_bytes,
    )


def decide(
    request: AdmissionRequest,
    policy: AdmissionPolicy,
    signer: Signer,
    trusted_keys: Mapping[str, Ed25519PublicKey],
    now: int,
    pod_uid: str | None = None,
) -> Decision:
    """Decide on one parsed request. ``trusted_keys`` recognise our own earlier rewrites."""
    ctx = _Context(request, policy, signer, trusted_keys, now, pod_uid)
    if _is_exec(request, "exec"):
        return _decide_exec(ctx)
    if _is_exec(request, "attach"):
        # attach joins a process that already runs: there is no command to rewrite
        return Decision(allowed=True, outcome="skipped-attach")
    if _is_ephemeral_update(request):
        return _decide_ephemeral(ctx)
    return Decision(allowed=True, outcome="skipped-not-exec")


def render_response(request: AdmissionRequest, decision: Decision) -> AdmissionReview:
    """The AdmissionReview the apiserver expects, echoing ``request.uid``."""
    annotations = {"outcome": decision.outcome}
    if decision.session_id:
        annotations["session-id"] = decision.session_id
    username = request.get("userInfo", {}).get("username")
    if username:
        annotations["user"] = username
    response: AdmissionResponse = {
        "uid": request["uid"],
        "allowed": decision.allowed,
        "auditAnnotations": annotations,
    }
    if not decision.allowed:
        response["status"] = {"code": 403, "reason": "Forbidden", "message": decision.message}
    if decision.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(
            json.dumps(list(decision.patch), separators=(",", ":")).encode()
        ).decode("ascii")
    if decision.warnings:
        response["warnings"] = list(decision.warnings)
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}


def review_admission(
    body: object,
    policy: AdmissionPolicy,
    signer: Signer,
    trusted_keys: Mapping[str, Ed25519PublicKey],
    now: int,
    pod_uid: str | None = None,
) -> Admission:
    """Parse an AdmissionReview body, decide, and render the answer."""
    request = parse_review(body)
    decision = decide(request, policy, signer, trusted_keys, now, pod_uid)
    return Admission(render_response(request, decision), decision, request)


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
        "skipped-attach",
        "skipped-no-new-container",
        "skipped-not-exec",
    )
