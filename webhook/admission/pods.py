"""Pod CREATE: every new pod gets a static ``env``, so that exec can be attributed even
in distroless images (pure core)."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from webhook.admission.policy import (
    ENV_VOLUME,
    MIRROR_ANNOTATION,
    OPT_OUT_ANNOTATION,
    STATIC_ENV_IN_IMAGE,
    AdmissionPolicy,
    _Context,
    _targets_windows,
)
from webhook.admission.review import Decision, _field, _optional
from webhook.errors import MalformedReview

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
