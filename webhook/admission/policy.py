"""What every admission decision knows: the policy, the target pod's facts, the caller
(pure core)."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from webhook.admission.review import MAX_GROUPS, AdmissionRequest, Decision
from webhook.errors import TokenError
from webhook.identity import Identity, Signer, verify_token


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
            # more than MAX_GROUPS never fit in a token (each costs 3 bytes at least):
            # sign_identity's fit_identity cuts them further and marks them cut
            groups=tuple(user_info["groups"][:MAX_GROUPS]),
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
