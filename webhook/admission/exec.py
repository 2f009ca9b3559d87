"""``kubectl exec``: the command rewritten to run under ``env``, with the caller's token
(pure core).

Kubernetes facts this module depends on:

* ``kubectl exec`` reaches admission as ``CONNECT`` on ``pods`` with sub-resource
  ``exec`` and a ``PodExecOptions`` object; the apiserver rebuilds the kubelet URL from
  the patched ``command`` (honoured since 1.12, for SPDY and WebSocket exec alike).
* A JSON patch that fails to apply fails the exec even under ``failurePolicy: Ignore``,
  so the patch is a single ``add`` on ``/command`` (RFC 6902 ``add`` replaces an existing
  member) and nothing else is touched.
"""

from __future__ import annotations

import fnmatch
from dataclasses import replace

from webhook.admission.policy import _Context, _denied, _exclusion
from webhook.admission.review import (
    Decision,
    _optional,
    _show,
    _string_list,
)
from webhook.errors import MalformedReview, TokenTooLarge
from webhook.identity import sign_identity


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
