"""Every error whoexec raises on purpose derives from :class:`WhoexecError`.

The hierarchy::

    WhoexecError
    ├── TokenError                  an identity token was refused
    │   ├── TokenMalformed          not ``v1.<kid>.<payload>.<sig>``, bad base64 or payload
    │   ├── UnknownKeyId            signed by a key we do not hold
    │   ├── BadSignature            the signature does not verify
    │   ├── TokenFromFuture         issued later than ``now`` plus the allowed skew
    │   └── TokenTooLarge           the identity cannot fit the 1 KiB budget
    ├── MalformedReview             the body is not a usable AdmissionReview v1 (HTTP 400)
    ├── MalformedAlert              a line is not a Falco alert
    ├── MalformedAuditEvent         a line is not a Kubernetes audit event
    ├── ConfigError                 a setting, flag or key file is unusable
    ├── SpoolFull                   a durable queue that refuses rather than drops is full
    └── StoreError                  the session store failed
        ├── StoreUnavailable        the database cannot be reached
        └── StoreRejected           a fact the database cannot hold (its data, not the store)

Messages name the bad field and the bad value, and never carry key material or a
token's signature.
"""

from __future__ import annotations


class WhoexecError(Exception):
    """Base class of all errors raised on purpose by whoexec."""


class TokenError(WhoexecError):
    """An identity token was refused."""


class TokenMalformed(TokenError):
    """The token does not follow the v1 format."""


class UnknownKeyId(TokenError):
    """The token names a key id that is not among the trusted public keys."""


class BadSignature(TokenError):
    """The token's Ed25519 signature does not verify."""


class TokenFromFuture(TokenError):
    """The token's ``iat`` lies further in the future than the allowed clock skew."""


class TokenTooLarge(TokenError):
    """The identity does not fit in a token under 1,024 bytes, even with no groups."""


class MalformedReview(WhoexecError):
    """The request body is not a usable AdmissionReview v1."""


class MalformedAlert(WhoexecError):
    """An input line is not a Falco alert."""


class MalformedAuditEvent(WhoexecError):
    """An input line or item is not a Kubernetes audit event."""


class ConfigError(WhoexecError):
    """A setting, a flag or a key file cannot be used."""


class SpoolFull(WhoexecError):
    """A durable queue that must not drop what it holds (the inbox) is full."""


class StoreError(WhoexecError):
    """The session store failed."""


class StoreUnavailable(StoreError):
    """The session store's database cannot be reached."""


class StoreRejected(StoreError):
    """A fact the database cannot hold: an integer past 64 bits, a NUL in a text, a value
    of the wrong type. Retrying cannot help; the input that carried it is dead-lettered."""
