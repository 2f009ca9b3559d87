"""``kubectl debug``: a new ephemeral container gets the caller's token in its ``env``
(pure core).

Kubernetes facts this module depends on:

* ``kubectl debug`` arrives as ``UPDATE`` of ``pods/ephemeralcontainers`` whose object is
  the whole Pod; new containers get the variable in their ``env``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from webhook.admission.policy import (
    ENV_VOLUME,
    _Context,
    _denied,
    _dict,
    _exclusion,
    _list,
    pod_facts,
)
from webhook.admission.review import Decision, _field, _optional, _show
from webhook.errors import MalformedReview, TokenTooLarge
from webhook.identity import sign_identity


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
