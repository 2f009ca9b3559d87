"""The AdmissionReview (admission.k8s.io/v1): its wire shapes, the parsing of what whoexec
reads of a request, and the rendering of the answer (pure core).

Kubernetes facts this module depends on:

* CONNECT requests carry ``oldObject: null``, ``options: null`` and ``dryRun: false``; the
  request ``uid`` is new per webhook call and is not the audit ID.
* ``auditAnnotations`` land in the audit event as ``<webhook-name>/<key>``; keys must be
  valid qualified-name parts.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

import orjson

from webhook.errors import MalformedReview

API_VERSION = "admission.k8s.io/v1"

#: the groups of a caller that are read: a token holds a few hundred at most (1 KiB), and a
#: 3 MiB review can carry 500,000, which cost 0.65 s of CPU to check and fit (issue 21)
MAX_GROUPS = 1000


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
    #: the outcome recorded in the audit annotation, when it differs: a reinvocation
    #: answers what the first call did, since the apiserver keeps the first value of a
    #: key and logs a conflict for any other
    audit_outcome: str = ""


@dataclass(frozen=True, slots=True)
class Admission:
    """A rendered answer plus what the adapter logs and counts about it."""

    response: AdmissionReview
    decision: Decision


def _field(obj: Mapping[str, Any], key: str, kind: type, path: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise MalformedReview(f"{path}.{key} must be {kind.__name__}, got {_show(value)}")
    return value


def _optional(obj: Mapping[str, Any], key: str, kind: type, path: str) -> Any:
    if obj.get(key) is None:
        return None
    return _field(obj, key, kind, path)


def _show(value: object) -> str:
    if isinstance(value, bytes):
        text = repr(value)
    else:
        try:
            text = orjson.dumps(value).decode()
        except TypeError:  # orjson writes 254 levels (json.dumps hit the recursion limit)
            text = f"a {type(value).__name__} nested more than 254 levels deep"
    return text if len(text) <= 60 else text[:57] + "..."


def _string_list(obj: Mapping[str, Any], key: str, path: str, read: int | None = None) -> list[str]:
    """The list of strings at ``key`` ([] when null or absent); only its first ``read``
    items are checked (the rest are never read)."""
    value = _optional(obj, key, list, path)
    if value is None:
        return []
    for index, item in enumerate(value[:read] if read is not None else value):
        if not isinstance(item, str):
            raise MalformedReview(f"{path}.{key}[{index}] must be str, got {_show(item)}")
    checked: list[str] = value
    return checked


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
    # Go's encoding/json accepts null for any of these, and the apiserver may omit them;
    # from here on they are always present, with their empty value
    for key in ("subResource", "name", "namespace"):
        request[key] = _optional(request, key, str, "request") or ""
    user_info = _field(request, "userInfo", dict, "request")
    for key in ("username", "uid"):
        user_info[key] = _optional(user_info, key, str, "request.userInfo") or ""
    # a body of 3 MiB holds 500,000 groups; only the first MAX_GROUPS are ever read
    user_info["groups"] = _string_list(user_info, "groups", "request.userInfo", MAX_GROUPS)
    _optional(request, "object", dict, "request")
    _optional(request, "oldObject", dict, "request")
    _optional(request, "dryRun", bool, "request")
    checked: AdmissionRequest = request
    return checked


def is_pod_connect(request: AdmissionRequest, subresource: str) -> bool:
    """``CONNECT`` on ``pods/<subresource>`` (``exec`` or ``attach``)."""
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


def _is_pod_create(request: AdmissionRequest) -> bool:
    return (
        request.get("operation") == "CREATE"
        and request["resource"].get("resource") == "pods"
        and not request.get("subResource")
    )


def render_response(
    request: AdmissionRequest, decision: Decision, pod_lookup: str
) -> AdmissionReview:
    """The AdmissionReview the apiserver expects, echoing ``request.uid``."""
    annotations = {"outcome": decision.audit_outcome or decision.outcome}
    if pod_lookup:
        annotations["pod-lookup"] = pod_lookup
    if decision.session_id:
        annotations["session-id"] = decision.session_id
    username = request["userInfo"]["username"]
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
