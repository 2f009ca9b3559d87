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
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Literal, NotRequired, TypedDict

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from webhook.errors import MalformedReview, TokenError, TokenTooLarge
from webhook.identity import Identity, Signer, sign_identity, verify_token

API_VERSION = "admission.k8s.io/v1"
#: the groups of a caller that are read: a token holds a few hundred at most (1 KiB), and a
#: 3 MiB review can carry 500,000, which cost 0.65 s of CPU to check and fit (issue 21)
MAX_GROUPS = 1000


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
    #: where the static env the pod CREATE mutation ships is mounted in every container
    env_volume_path: str = "/.whoexec/env"
    #: image globs known to lack /usr/bin/env (distroless, scratch): exec is not rewritten
    images_without_env: tuple[str, ...] = ()
    #: where the static env is not mounted, exec is rewritten to ``env_path`` only in
    #: namespaces, or for images, that the operator vouches have it (globs); elsewhere it
    #: is skipped (``skipped-no-static-env``): an exec that worked must keep working
    env_trusted_namespaces: tuple[str, ...] = ()
    env_trusted_images: tuple[str, ...] = ()
    #: the static env's init container: requests and limits alike (ResourceQuota on limits,
    #: LimitRange minimums)
    static_env_cpu: str = "10m"
    static_env_memory: str = "16Mi"
    #: the image whose init container copies the static env into the pod
    static_env_image: str = "ghcr.io/whoexec/whoexec:0.1.0"

    @property
    def env_mount_dir(self) -> str:
        """The directory the static env's volume is mounted at (``/.whoexec``); settings
        refuse an ``env_volume_path`` that is not a file in a directory below ``/``."""
        return self.env_volume_path.rsplit("/", 1)[0]


#: pod annotation that opts a pod out: ``whoexec.io/inject: "false"``
OPT_OUT_ANNOTATION = "whoexec.io/inject"
ENV_VOLUME = "whoexec-env"
#: where the init container finds the static env in the whoexec image (see Dockerfile)
STATIC_ENV_IN_IMAGE = "/opt/whoexec/static/env"


#: the annotation of a mirror pod: the apiserver's copy of a static pod, whose real pod
#: (from the kubelet's manifest file) never gets what a mutation adds to the copy
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
#: kubectl's default container for exec, when a pod names one
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"
_CONTAINER_KINDS = ("containers", "initContainers", "ephemeralContainers")


@dataclass(frozen=True, slots=True)
class PodFacts:
    """What the webhook knows of the exec's target pod (from the pod cache)."""

    uid: str
    opted_out: bool
    #: every container of every kind (containers, init containers including native
    #: sidecars, ephemeral containers): (name, image), in spec order
    images: tuple[tuple[str, str], ...]
    #: the containers in which the static env is really mounted, so known to exist
    mounted: frozenset[str] = frozenset()
    default_container: str = ""
    #: a Windows pod: no env binary of ours exists there, whatever the operator vouches
    windows: bool = False

    @property
    def has_env_volume(self) -> bool:
        return bool(self.mounted)

    def container_of(self, requested: str) -> str:
        return requested or self.default_container

    def image_of(self, container: str) -> str | None:
        name = self.container_of(container)
        return next((image for each, image in self.images if each == name), None)


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def pod_facts(pod: Mapping[str, Any]) -> PodFacts:
    """Facts from a Pod object (as the apiserver serialises it); a part of the wrong type
    counts as absent (the review's own fields are checked where a review is parsed)."""
    metadata = _dict(pod.get("metadata"))
    spec = _dict(pod.get("spec"))
    annotations = _dict(metadata.get("annotations"))
    volumes = _list(spec.get("volumes"))
    has_volume = any(isinstance(v, dict) and v.get("name") == ENV_VOLUME for v in volumes)
    mirror = MIRROR_ANNOTATION in annotations
    images: list[tuple[str, str]] = []
    mounted: set[str] = set()
    for kind in _CONTAINER_KINDS:
        for container in _list(spec.get(kind)):
            if not isinstance(container, dict):
                continue
            name = str(container.get("name", ""))
            images.append((name, str(container.get("image", ""))))
            mounts = _list(container.get("volumeMounts"))
            if (
                has_volume
                and not mirror
                and any(isinstance(m, dict) and m.get("name") == ENV_VOLUME for m in mounts)
            ):
                mounted.add(name)
    containers = [c for c in _list(spec.get("containers")) if isinstance(c, dict)]
    default = str(annotations.get(DEFAULT_CONTAINER_ANNOTATION, "")) or (
        str(containers[0].get("name", "")) if containers else ""
    )
    return PodFacts(
        uid=str(metadata.get("uid", "")),
        opted_out=str(annotations.get(OPT_OUT_ANNOTATION, "")).lower() == "false",
        images=tuple(images),
        mounted=frozenset(mounted),
        default_container=default,
        windows=_targets_windows(spec),
    )


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


# --- parsing ------------------------------------------------------------------------------


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


# --- decisions ----------------------------------------------------------------------------


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


def _exclusion(request: AdmissionRequest, policy: AdmissionPolicy) -> str | None:
    # parse_review made namespace and userInfo's username and groups present
    user_info = request["userInfo"]
    namespace = request["namespace"]
    if any(fnmatch.fnmatchcase(namespace, pattern) for pattern in policy.exclude_namespaces):
        return "skipped-excluded-namespace"
    username = user_info["username"]
    if any(fnmatch.fnmatchcase(username, pattern) for pattern in policy.exclude_users):
        return "skipped-excluded-user"
    groups = user_info["groups"]
    if len(groups) > MAX_GROUPS and policy.exclude_groups:
        # an excluded group could be among those never read: leave the exec alone
        return "skipped-too-many-groups"
    for group in groups if policy.exclude_groups else ():
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
    pod: PodFacts | None

    def identity_for(self, container: str, session_id: str = "") -> Identity:
        user_info = self.request["userInfo"]  # parse_review made every field read present
        return Identity(
            session_id=session_id or self.request["uid"],
            user=user_info["username"],
            uid=user_info["uid"],
            groups=tuple(user_info["groups"][:MAX_GROUPS]),
            # the token holds far fewer anyway (fit_identity cuts and marks them again)
            groups_truncated=len(user_info["groups"]) > MAX_GROUPS,
            namespace=self.request["namespace"],
            pod=self.request["name"],
            container=container,
            issued_at=self.now,
            pod_uid=self.pod.uid if self.pod is not None and self.pod.uid else None,
        )

    def own_earlier_token(self, value: str, container: str) -> Identity | None:
        """The identity if ``value`` is a token we minted for this caller and target."""
        try:
            identity = verify_token(
                value, self.trusted_keys, self.now, self.policy.clock_skew_seconds
            )
        except TokenError:
            return None
        # parse_review made these present (the empty string where the apiserver sent none)
        same_caller = identity.user == self.request["userInfo"]["username"]
        target = (self.request["namespace"], self.request["name"], container)
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
    # that starts with an env path and a token we minted for this caller and target.
    env_paths = (ctx.policy.env_path, ctx.policy.env_volume_path)
    if len(command) >= 3 and command[0] in env_paths and command[1].startswith(marker):
        earlier = ctx.own_earlier_token(command[1][len(marker) :], container)
        if earlier is not None and not any(marker in arg for arg in command[2:]):
            return Decision(
                allowed=True,
                outcome="skipped-already-injected",
                audit_outcome="injected",
                session_id=earlier.session_id,
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
    env_path = _env_path_for(ctx, container)
    if env_path.startswith("skipped-"):
        return Decision(allowed=True, outcome=env_path)
    try:
        token = sign_identity(ctx.identity_for(container), ctx.signer)
    except TokenTooLarge:
        return Decision(allowed=True, outcome="skipped-token-too-large")
    new_command = [env_path, marker + token, *command]
    return Decision(
        allowed=True,
        outcome="injected",
        patch=({"op": "add", "path": "/command", "value": new_command},),
        session_id=ctx.request["uid"],
        token_bytes=len(token),
    )


def _static_env_mount(
    ctx: _Context, index: int, container: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """A later ``kubectl exec -c <debug container>`` finds the static env there too, when
    the pod has it (ephemeral containers may mount the pod's volumes)."""
    pod = ctx.request.get("object") or {}
    # a part of the wrong type counts as absent, as in pod_facts (`volumes: true` was a 500)
    volumes = _list(_dict(pod.get("spec")).get("volumes"))
    if not any(isinstance(v, dict) and v.get("name") == ENV_VOLUME for v in volumes):
        return []
    mount_dir = ctx.policy.env_mount_dir
    mounts = container.get("volumeMounts")
    if not isinstance(mounts, list | None) or any(
        isinstance(m, dict) and str(m.get("mountPath", "")).rstrip("/") == mount_dir
        for m in mounts or []
    ):
        return []
    mount = {"name": ENV_VOLUME, "mountPath": mount_dir, "readOnly": True}
    base = f"/spec/ephemeralContainers/{index}/volumeMounts"
    if mounts is None:
        return [{"op": "add", "path": base, "value": [mount]}]
    return [{"op": "add", "path": base + "/-", "value": mount}]


def _env_path_for(ctx: _Context, container: str) -> str:
    """The env binary known to exist in the exec's container, or the skip outcome.

    Rewriting to a binary that is not there turns an exec that works into "no such
    file": the worst thing whoexec can do. So the command is rewritten only to the
    static env where it is mounted in *that* container, or to ``env_path`` where the
    operator vouches for the namespace or the image.
    """
    policy, pod = ctx.policy, ctx.pod
    namespace = ctx.request["namespace"]
    if pod is not None:
        if pod.opted_out:
            return "skipped-pod-opt-out"
        if pod.windows:
            return "skipped-windows"
        if pod.container_of(container) in pod.mounted:
            return policy.env_volume_path  # the static env our CREATE mutation added
        image = pod.image_of(container)
        if image and any(fnmatch.fnmatchcase(image, p) for p in policy.images_without_env):
            return "skipped-no-env"
        if image and any(fnmatch.fnmatchcase(image, p) for p in policy.env_trusted_images):
            return policy.env_path
    if any(fnmatch.fnmatchcase(namespace, p) for p in policy.env_trusted_namespaces):
        return policy.env_path
    return "skipped-no-static-env"


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
    pod = ctx.request.get("object")
    if pod is None:
        raise MalformedReview("request.object must be a Pod for pods/ephemeralcontainers")
    containers = _container_names(pod, "request.object")
    # the object is the whole Pod: its UID is known without any look-up
    ctx = replace(ctx, pod=pod_facts(pod))
    existing = {
        c["name"] for c in _container_names(ctx.request.get("oldObject"), "request.oldObject")
    }
    variable = ctx.policy.identity_variable
    new = [(index, c) for index, c in enumerate(containers) if c["name"] not in existing]
    if not new:
        return Decision(allowed=True, outcome="skipped-no-new-container")

    patch: list[dict[str, Any]] = []
    # every webhook call has a new request.uid, reinvocations too (k8s.io/apiserver
    # CreateAdmissionObjects), and the apiserver refuses to overwrite an audit annotation
    # with another value: a reinvocation names the session the first call minted
    session_id = ""
    for index, container in new:
        env = container.get("env")
        if env is not None and not isinstance(env, list):
            raise MalformedReview(
                f"request.object.spec.ephemeralContainers[{index}].env must be a list"
            )
        supplied = [e for e in env or [] if isinstance(e, dict) and e.get("name") == variable]
        if supplied:
            value = supplied[0].get("value")
            own = None
            if isinstance(value, str):
                own = ctx.own_earlier_token(value, container["name"])
            if len(supplied) == 1 and own is not None:
                session_id = session_id or own.session_id
                continue
            return _denied(
                f"whoexec: ephemeral container {container['name']!r} sets {variable}, which "
                "only the whoexec webhook may set"
            )
    if skipped := _exclusion(ctx.request, ctx.policy):
        return Decision(allowed=True, outcome=skipped)
    if ctx.pod is not None and ctx.pod.opted_out:
        return Decision(allowed=True, outcome="skipped-pod-opt-out")
    token_bytes = 0
    for index, container in new:
        if any(
            isinstance(e, dict) and e.get("name") == variable for e in container.get("env") or []
        ):
            continue  # our own earlier token, verified above
        try:
            token = sign_identity(ctx.identity_for(container["name"], session_id), ctx.signer)
        except TokenTooLarge:
            return Decision(allowed=True, outcome="skipped-token-too-large")
        token_bytes = max(token_bytes, len(token))
        entry = {"name": variable, "value": token}
        base = f"/spec/ephemeralContainers/{index}/env"
        if container.get("env") is None:
            patch.append({"op": "add", "path": base, "value": [entry]})
        else:
            patch.append({"op": "add", "path": base + "/-", "value": entry})
        patch.extend(_static_env_mount(ctx, index, container))
    if not patch:
        return Decision(
            allowed=True,
            outcome="skipped-already-injected",
            audit_outcome="injected",
            session_id=session_id,
        )
    return Decision(
        allowed=True,
        outcome="injected",
        patch=tuple(patch),
        session_id=session_id or ctx.request["uid"],
        token_bytes=token_bytes,
    )


def _is_pod_create(request: AdmissionRequest) -> bool:
    return (
        request.get("operation") == "CREATE"
        and request["resource"].get("resource") == "pods"
        and not request.get("subResource")
    )


def _targets_windows(spec: Mapping[str, Any]) -> bool:
    """A Windows pod (``spec.os.name``), or one that can only land on a Windows node."""
    os_spec = spec.get("os")
    if isinstance(os_spec, dict) and os_spec.get("name") == "windows":
        return True
    selector = spec.get("nodeSelector")
    if isinstance(selector, dict) and selector.get("kubernetes.io/os") == "windows":
        return True
    affinity = spec.get("affinity")
    node_affinity = affinity.get("nodeAffinity") if isinstance(affinity, dict) else None
    required = (
        node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
        if isinstance(node_affinity, dict)
        else None
    )
    terms = required.get("nodeSelectorTerms") if isinstance(required, dict) else None
    if not isinstance(terms, list) or not terms:
        return False

    def windows_only(term: object) -> bool:
        expressions = term.get("matchExpressions") if isinstance(term, dict) else None
        return any(
            isinstance(e, dict)
            and e.get("key") == "kubernetes.io/os"
            and e.get("operator") == "In"
            and e.get("values") == ["windows"]
            for e in _list(expressions)
        )

    # the terms are ORed: the pod is Windows-only when every term asks for Windows
    return all(windows_only(term) for term in terms)


_QUANTITY_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
}
_QUANTITY = re.compile(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?")


def quantity(text: object) -> Decimal | None:
    """A Kubernetes resource quantity (``100m``, ``64Mi``, ``1.5``) as a number."""
    if isinstance(text, bool):
        return None  # an int to Python, but no quantity
    if isinstance(text, int | float):
        return Decimal(str(text))
    match = _QUANTITY.fullmatch(str(text).strip())
    if not match:
        return None
    try:
        return Decimal(match.group(1)) * _QUANTITY_SUFFIXES[match.group(2) or ""]
    except ArithmeticError:
        return None


def _init_resources(
    containers: list[dict[str, Any]], policy: AdmissionPolicy
) -> dict[str, dict[str, str]]:
    """Requests and limits for the static env's init container.

    The largest value the pod's own containers have, per resource, else the settings. By
    the time a webhook runs, LimitRanger has already given the containers the namespace's
    defaults, so a LimitRange's min and max hold for these values too; and an init
    container never adds to the pod's effective request (max of init, sum of the rest),
    so ResourceQuota sees no more than before.
    """
    fallback = {"cpu": policy.static_env_cpu, "memory": policy.static_env_memory}
    chosen: dict[str, dict[str, str]] = {"requests": {}, "limits": {}}
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            best: tuple[Decimal, str] | None = None
            for container in containers:
                resources = container.get("resources")  # containers are objects by now
                values = resources.get(kind) if isinstance(resources, dict) else None
                raw = values.get(resource) if isinstance(values, dict) else None
                amount = quantity(raw)  # None for an absent or malformed value
                if amount is not None and (best is None or amount > best[0]):
                    best = (amount, str(raw))
            if best is not None:
                chosen[kind][resource] = best[1]
    for resource, value in fallback.items():
        request = chosen["requests"].get(resource)
        limit = chosen["limits"].get(resource)
        if request is None:
            request = limit if limit is not None else value
        if limit is None:
            limit = request
        # a limit below the request is invalid
        low, high = quantity(request), quantity(limit)
        if low is not None and high is not None and high < low:
            limit = request
        chosen["requests"][resource] = request
        chosen["limits"][resource] = limit
    return chosen


def _decide_pod_create(ctx: _Context) -> Decision:
    """Give a new pod a static ``env`` so that exec works even in distroless images.

    An emptyDir, an init container (first, so that every later init container and native
    sidecar finds the file) that copies the static env into it, and a read-only mount at
    the same path in every container and init container. It must never make a valid pod
    invalid (pod validation runs after mutation, so ``failurePolicy: Ignore`` would not
    save it): Windows pods and name or path collisions are skipped with an outcome, and
    the init container has requests and limits (ResourceQuota, LimitRange).
    """
    pod = ctx.request.get("object")
    if pod is None:
        raise MalformedReview("request.object must be a Pod for a pod CREATE")
    metadata = _optional(pod, "metadata", dict, "request.object") or {}
    spec = _field(pod, "spec", dict, "request.object")
    annotations = _optional(metadata, "annotations", dict, "request.object.metadata") or {}
    if str(annotations.get(OPT_OUT_ANNOTATION, "")).lower() == "false":
        return Decision(allowed=True, outcome="skipped-pod-opt-out")
    if MIRROR_ANNOTATION in annotations:
        # a static pod's mirror: the kubelet runs the manifest file, never this copy
        return Decision(allowed=True, outcome="skipped-static-pod")
    if _targets_windows(spec):
        # the init container's securityContext is invalid on Windows pods
        return Decision(allowed=True, outcome="skipped-windows")
    volumes = _optional(spec, "volumes", list, "request.object.spec")
    containers = _field(spec, "containers", list, "request.object.spec")
    init_containers = _optional(spec, "initContainers", list, "request.object.spec")
    ours = [c for c in init_containers or [] if isinstance(c, dict) and c.get("name") == ENV_VOLUME]
    if any(isinstance(v, dict) and v.get("name") == ENV_VOLUME for v in volumes or []):
        if ours and ours[0].get("image") == ctx.policy.static_env_image:
            # our own earlier mutation (reinvocation): the same audit annotation again
            return Decision(
                allowed=True, outcome="skipped-already-injected", audit_outcome="env-volume-added"
            )
        return Decision(allowed=True, outcome="skipped-name-collision")
    mount_dir = ctx.policy.env_mount_dir
    for kind, items in (("containers", containers), ("initContainers", init_containers or [])):
        for index, container in enumerate(items):
            if not isinstance(container, dict):
                raise MalformedReview(f"request.object.spec.{kind}[{index}] must be an object")
            if container.get("name") == ENV_VOLUME:
                return Decision(allowed=True, outcome="skipped-name-collision")
            mounts = _optional(
                container, "volumeMounts", list, f"request.object.spec.{kind}[{index}]"
            )
            if any(
                isinstance(m, dict) and str(m.get("mountPath", "")).rstrip("/") == mount_dir
                for m in mounts or []
            ):
                return Decision(allowed=True, outcome="skipped-env-volume-conflict")
    volume = {"name": ENV_VOLUME, "emptyDir": {"sizeLimit": "8Mi"}}
    init = {
        "name": ENV_VOLUME,
        "image": ctx.policy.static_env_image,
        "command": ["cp", STATIC_ENV_IN_IMAGE, ctx.policy.env_volume_path],
        "volumeMounts": [{"name": ENV_VOLUME, "mountPath": mount_dir}],
        "resources": _init_resources(containers, ctx.policy),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    mount = {"name": ENV_VOLUME, "mountPath": mount_dir, "readOnly": True}
    patch: list[dict[str, Any]] = []

    def append(path: str, present: bool, value: dict[str, Any]) -> None:
        # `add` of the whole list when it is absent: adding to /- of a missing list fails
        if present:
            patch.append({"op": "add", "path": f"{path}/-", "value": value})
        else:
            patch.append({"op": "add", "path": path, "value": [value]})

    append("/spec/volumes", volumes is not None, volume)
    for kind, items in (("initContainers", init_containers or []), ("containers", containers)):
        for index, container in enumerate(items):
            append(
                f"/spec/{kind}/{index}/volumeMounts",
                container.get("volumeMounts") is not None,
                mount,
            )
    if init_containers is None:
        patch.append({"op": "add", "path": "/spec/initContainers", "value": [init]})
    else:
        # first: an earlier init container or native sidecar would find no file yet
        patch.append({"op": "add", "path": "/spec/initContainers/0", "value": init})
    return Decision(allowed=True, outcome="env-volume-added", patch=tuple(patch))


#: outcomes after which the exec runs without the caller's identity; the kubectl user is
#: told why in an AdmissionResponse warning
_UNATTRIBUTED = {
    "skipped-excluded-namespace": "namespace excluded",
    "skipped-excluded-user": "user excluded",
    "skipped-excluded-group": "group excluded",
    "skipped-empty-command": "empty command",
    "skipped-argv0-assignment": "the command starts with NAME=VALUE",
    "skipped-token-too-large": "identity too large for a token",
    "skipped-too-many-groups": "too many groups to check the excluded ones",
    "skipped-attach": "attach joins a running process",
    "skipped-pod-opt-out": "the pod opted out (whoexec.io/inject=false)",
    "skipped-no-env": "the image has no env binary",
    "skipped-no-static-env": "no env binary is known to exist in this container",
    "skipped-windows": "a Windows pod",
}


def _with_warning(decision: Decision, pod_lookup: str) -> Decision:
    reason = _UNATTRIBUTED.get(decision.outcome)
    if reason is None:
        return decision
    text = f"whoexec: this session is not attributed to you: {reason}"
    if pod_lookup == "timeout":
        text += " (pod look-up timed out)"
    return replace(decision, warnings=(*decision.warnings, text[:120]))


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
