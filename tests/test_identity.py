from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from webhook.errors import (
    BadSignature,
    TokenFromFuture,
    TokenMalformed,
    TokenTooLarge,
    UnknownKeyId,
)
from webhook.identity import (
    MAX_TOKEN_BYTES,
    Identity,
    Signer,
    b64url_encode,
    key_id,
    key_ring,
    sign_identity,
    token_key_id,
    verify_token,
)

from .conftest import NOW

ALICE = Identity(
    session_id="0d3c4a8e-7f21-4b6a-9c55-1e2f3a4b5c6d",
    user="alice@corp.example",
    uid="5b2f1e7c-1d0a-4c3e-9b7a-2f6d8e9c0a11",
    groups=("devs", "system:authenticated"),
    namespace="shop",
    pod="web-7d9f8b6c5-x2k4q",
    container="app",
    issued_at=NOW,
)


def resign(signer: Signer, payload: bytes) -> str:
    """A correctly signed token around an arbitrary payload."""
    signed = f"v1.{signer.kid}.{b64url_encode(payload)}"
    return f"{signed}.{b64url_encode(signer.private_key.sign(signed.encode()))}"


def test_token_round_trips_every_field(signer, trusted):
    identity = replace(ALICE, pod_uid="c0ffee00-1111-4222-8333-444455556666")
    token = sign_identity(identity, signer)
    assert verify_token(token, trusted, now=NOW) == identity


def test_token_has_documented_layout(signer):
    token = sign_identity(ALICE, signer)
    version, kid, _payload, signature = token.split(".")
    assert (version, kid) == ("v1", signer.kid)
    assert "=" not in token and len(signature) == 86
    assert token_key_id(token) == signer.kid


def test_kid_is_sha256_prefix_of_raw_public_key(signer):
    raw = signer.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key_id(signer.public_key) == hashlib.sha256(raw).hexdigest()[:16]


def test_any_of_several_rotated_keys_verifies(signer):
    old = Signer(Ed25519PrivateKey.generate())
    ring = key_ring([signer.public_key, old.public_key])
    assert verify_token(sign_identity(ALICE, old), ring, now=NOW).user == "alice@corp.example"
    assert verify_token(sign_identity(ALICE, signer), ring, now=NOW).user == "alice@corp.example"


def test_token_from_unknown_key_is_refused(trusted):
    stranger = Signer(Ed25519PrivateKey.generate())
    with pytest.raises(UnknownKeyId, match=stranger.kid):
        verify_token(sign_identity(ALICE, stranger), trusted, now=NOW)


def test_forged_token_with_our_kid_fails_the_signature(signer, trusted):
    forger = Signer(Ed25519PrivateKey.generate())
    forged = sign_identity(replace(ALICE, user="root-of-all"), forger)
    _, _, payload, signature = forged.split(".")
    with pytest.raises(BadSignature):
        verify_token(f"v1.{signer.kid}.{payload}.{signature}", trusted, now=NOW)


def test_edited_payload_fails_the_signature(signer, trusted):
    version, kid, _, signature = sign_identity(ALICE, signer).split(".")
    edited = b64url_encode(json.dumps(replace(ALICE, user="mallory").to_payload()).encode())
    with pytest.raises(BadSignature):
        verify_token(f"{version}.{kid}.{edited}.{signature}", trusted, now=NOW)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda t: t[: len(t) // 2], r"parts|base64|signature"),
        (lambda t: t + ".x", "5 dot-separated parts"),
        (lambda t: "v2" + t[2:], "version 'v2'"),
        (lambda t: t.replace(t.split(".")[1], t.split(".")[1].upper(), 1), "kid"),
        (lambda t: t + "=", "base64url"),
        (lambda t: t[:-3] + "*" + t[-2:], "base64url"),
        (lambda t: t.rsplit(".", 1)[0] + ".AAAA", "64"),
        (lambda t: "", "parts"),
        (lambda t: "v1." + "a" * 2000, "limit"),
    ],
    ids=[
        "truncated",
        "extra-part",
        "version",
        "kid-case",
        "padding",
        "alphabet",
        "short-signature",
        "empty",
        "oversize",
    ],
)
def test_malformed_tokens_are_refused_by_name(signer, trusted, mangle, message):
    with pytest.raises(TokenMalformed, match=message):
        verify_token(mangle(sign_identity(ALICE, signer)), trusted, now=NOW)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not json", "not UTF-8 JSON"),
        (b"[1,2]", "not a JSON object"),
        (b'{"sid":"s"}', "lacks"),
        (json.dumps({**ALICE.to_payload(), "admin": True}).encode(), "unknown keys"),
        (json.dumps({**ALICE.to_payload(), "iat": "1795341600"}).encode(), "'iat' must be int"),
        (json.dumps({**ALICE.to_payload(), "iat": True}).encode(), "'iat' must be int"),
        (json.dumps({**ALICE.to_payload(), "groups": ["a", 1]}).encode(), "list of strings"),
        (json.dumps({**ALICE.to_payload(), "user": ""}).encode(), "'user' must not be empty"),
        (json.dumps({**ALICE.to_payload(), "trunc": False}).encode(), "'trunc' must be true"),
    ],
    ids=[
        "not-json",
        "array",
        "missing",
        "unknown-key",
        "iat-str",
        "iat-bool",
        "groups",
        "empty-user",
        "trunc-false",
    ],
)
def test_signed_but_ill_typed_payloads_are_malformed(signer, trusted, payload, message):
    with pytest.raises(TokenMalformed, match=message):
        verify_token(resign(signer, payload), trusted, now=NOW)


def test_token_from_the_future_is_refused_beyond_the_skew(signer, trusted):
    token = sign_identity(replace(ALICE, issued_at=NOW + 301), signer)
    with pytest.raises(TokenFromFuture, match="301s in the future"):
        verify_token(token, trusted, now=NOW, max_skew=300)
    assert verify_token(token, trusted, now=NOW + 1, max_skew=300).issued_at == NOW + 301


def test_old_tokens_stay_valid_because_sessions_last_hours(signer, trusted):
    token = sign_identity(ALICE, signer)
    assert verify_token(token, trusted, now=NOW + 7 * 24 * 3600).session_id == ALICE.session_id


@pytest.mark.parametrize("group_name", ["g" * 60, "équipe-sécurité-" * 4], ids=["ascii", "utf8"])
def test_five_hundred_long_groups_are_cut_to_fit_under_one_kib(signer, trusted, group_name):
    groups = tuple(f"{group_name}-{i:03d}" for i in range(500))
    token = sign_identity(replace(ALICE, groups=groups), signer)
    assert len(token.encode()) < MAX_TOKEN_BYTES
    identity = verify_token(token, trusted, now=NOW)
    assert identity.groups_truncated
    assert 0 < len(identity.groups) < 500
    assert identity.groups == groups[: len(identity.groups)], "a prefix is kept, in order"
    # the cut is as long as possible: one more group would not have fitted
    untruncated = replace(identity, groups=groups[: len(identity.groups) + 1])
    payload = json.dumps(untruncated.to_payload(), separators=(",", ":"), ensure_ascii=False)
    assert 3 + 16 + 1 + len(b64url_encode(payload.encode())) + 1 + 86 >= MAX_TOKEN_BYTES


def test_small_group_lists_are_not_marked_truncated(signer, trusted):
    identity = verify_token(sign_identity(ALICE, signer), trusted, now=NOW)
    assert not identity.groups_truncated
    assert "trunc" not in identity.to_payload()


def test_identity_that_cannot_fit_even_without_groups_is_refused(signer):
    # the user name is the caller's: it is shown cut to 64 characters
    with pytest.raises(
        TokenTooLarge,
        match=r"^identity of user '"
        + "u" * 64
        + "' does not fit in 1024 bytes even without groups$",
    ):
        sign_identity(replace(ALICE, user="u" * 900), signer)


def verify_by_the_written_spec(token: str, public_pem: bytes, now: int) -> dict[str, object]:
    """An independent verifier that follows docs/token.md only, with raw cryptography."""
    public_key = serialization.load_pem_public_key(public_pem)
    assert isinstance(public_key, Ed25519PublicKey)
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    version, kid, payload_b64, signature_b64 = token.split(".")
    assert version == "v1"
    assert kid == hashlib.sha256(raw).hexdigest()[:16]

    def unb64(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    public_key.verify(unb64(signature_b64), f"v1.{kid}.{payload_b64}".encode("ascii"))
    payload = json.loads(unb64(payload_b64).decode("utf-8"))
    required = {"sid", "user", "uid", "groups", "ns", "pod", "container", "iat"}
    assert required <= set(payload) <= required | {"pod_uid", "trunc"}
    assert payload["iat"] <= now + 300
    return payload


def test_token_verifies_with_raw_cryptography_following_the_spec(signer):
    pem = signer.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = sign_identity(replace(ALICE, pod_uid="c0ffee00-1111-4222-8333-444455556666"), signer)
    payload = verify_by_the_written_spec(token, pem, NOW)
    assert payload == {
        "sid": ALICE.session_id,
        "user": "alice@corp.example",
        "uid": ALICE.uid,
        "groups": ["devs", "system:authenticated"],
        "ns": "shop",
        "pod": "web-7d9f8b6c5-x2k4q",
        "container": "app",
        "iat": NOW,
        "pod_uid": "c0ffee00-1111-4222-8333-444455556666",
    }


# --- the edges a mutation run found untested (tools/mutation.py) --------------------------


def padded_token(signer: Signer, length: int) -> str:
    """A validly signed token of exactly ``length`` bytes: ALICE's payload with JSON
    whitespace added, which changes nothing it says."""
    compact = json.dumps(ALICE.to_payload(), separators=(",", ":")).encode()
    for pad in range(2000):
        token = resign(signer, compact[:-1] + b" " * pad + b"}")
        if len(token) == length:
            return token
    raise AssertionError(f"no padding gives {length} bytes")


def test_the_largest_token_that_can_exist_under_the_limit_verifies(signer, trusted):
    # "v1." + kid (16) + "." + payload + "." + signature (86): 107 bytes + the payload's
    # base64url, whose length is never 1 mod 4. So 1023 bytes can exist and 1024 cannot;
    # the limit's ">=" and ">" agree on every token that could be well-formed.
    fits = padded_token(signer, MAX_TOKEN_BYTES - 1)
    assert verify_token(fits, trusted, now=NOW).user == ALICE.user
    with pytest.raises(AssertionError, match="no padding gives 1024 bytes"):
        padded_token(signer, MAX_TOKEN_BYTES)


@pytest.mark.parametrize("size", [MAX_TOKEN_BYTES, 2003])
def test_an_oversize_token_is_refused_naming_its_size_and_the_limit(trusted, size):
    with pytest.raises(TokenMalformed, match=rf"^token is {size} bytes, the limit is 1023$"):
        verify_token("v1." + "a" * (size - 3), trusted, now=NOW)


def spec_length(identity: Identity) -> int:
    """The length of ``identity``'s token as docs/token.md defines it, without signing."""
    payload = json.dumps(identity.to_payload(), separators=(",", ":"), ensure_ascii=False)
    encoded = base64.urlsafe_b64encode(payload.encode("utf-8")).rstrip(b"=")
    return len("v1.") + 16 + len(".") + len(encoded) + len(".") + 86


@pytest.mark.parametrize("letter", ["g", "é"], ids=["ascii", "utf8"])
def test_the_groups_kept_are_exactly_the_longest_prefix_that_fits(signer, trusted, letter):
    # each user name length moves the payload's base64 alignment by a byte, and the
    # groups have many lengths, so the cut meets every edge of the size estimate
    groups = tuple(letter * (1 + (i * 7) % 23) + str(i) for i in range(80))
    for user_length in range(1, 49):
        identity = replace(ALICE, user="u" * user_length, groups=groups)
        token = sign_identity(identity, signer)
        assert len(token) < MAX_TOKEN_BYTES
        longest = max(
            m
            for m in range(len(groups) + 1)
            if spec_length(replace(identity, groups=groups[:m], groups_truncated=True))
            < MAX_TOKEN_BYTES
        )
        kept = verify_token(token, trusted, now=NOW)
        assert (kept.groups, kept.groups_truncated) == (groups[:longest], True), user_length


def test_an_identity_is_refused_exactly_when_not_even_an_empty_group_list_fits(signer, trusted):
    refused = 0
    for user_length in range(440, 520):  # the edge is near 487 bytes
        identity = replace(ALICE, user="u" * user_length, groups=("devs",))
        fits_bare = spec_length(replace(identity, groups=(), groups_truncated=True)) < 1024
        if spec_length(identity) < MAX_TOKEN_BYTES:
            assert verify_token(sign_identity(identity, signer), trusted, now=NOW) == identity
        elif fits_bare:
            token = sign_identity(identity, signer)
            assert len(token) < MAX_TOKEN_BYTES
            assert verify_token(token, trusted, now=NOW).groups == ()
        else:
            refused += 1
            with pytest.raises(TokenTooLarge, match="even without groups"):
                sign_identity(identity, signer)
    assert 0 < refused < 80, "the sweep crosses the edge"


def test_when_not_one_group_fits_the_token_says_its_groups_were_cut(signer, trusted):
    groups = ("g" * 120, "h" * 120)
    for n in range(300, 900):  # a user so long that no group fits beside it
        if len(sign_identity(replace(ALICE, user="u" * n, groups=()), signer)) > 930:
            break
    identity = verify_token(
        sign_identity(replace(ALICE, user="u" * n, groups=groups), signer), trusted, now=NOW
    )
    assert identity.groups == ()
    assert identity.groups_truncated is True, "an empty list must not read as 'no groups'"


@pytest.mark.parametrize(
    ("token", "kid"),
    [
        ("v1.0123456789abcdef.e30.c2ln", "0123456789abcdef"),
        ("v1.0123456789abcdef.e30", None),  # three parts
        ("v1.0123456789abcdef.e30.c2ln.x", None),  # five parts
        ("v2.0123456789abcdef.e30.c2ln", None),  # another version
        ("v1.0123456789ABCDEF.e30.c2ln", None),  # not lowercase hex
        ("v1.not-a-kid.e30.c2ln", None),
        ("", None),
    ],
)
def test_the_key_id_is_read_only_from_a_well_formed_token(token, kid):
    assert token_key_id(token) == kid


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda t: t + ".x", r"^token has 5 dot-separated parts, expected 4$"),
        (lambda t: "v2toolong" + t[2:], r"^token version 'v2toolon' is not 'v1'$"),
        (lambda t: t.replace("v1.", "v1.Z", 1), r"^token kid 'Z[0-9a-f]{16}' is not 16 lowercase"),
        # a hostile kid is shown cut to 32 characters
        (
            lambda t: t.replace("v1.", "v1." + "k" * 100, 1),
            r"^token kid '" + "k" * 32 + r"' is not 16 lowercase hex characters$",
        ),
        (
            lambda t: ".".join([*t.split(".")[:2], t.split(".")[2] + "=", t.split(".")[3]]),
            r"^token payload is not unpadded base64url$",
        ),
        (lambda t: t + "=", r"^token signature is not unpadded base64url$"),
        (
            lambda t: ".".join([*t.split(".")[:3], t.split(".")[3][:-1] + "B"]),
            r"^token signature (is not canonical base64url|does not verify)",
        ),
    ],
    ids=["parts", "version", "kid", "long-kid", "payload-b64", "signature-b64", "signature-bits"],
)
def test_malformed_tokens_name_the_part_and_the_value(signer, trusted, mangle, message):
    with pytest.raises((TokenMalformed, BadSignature), match=message):
        verify_token(mangle(sign_identity(ALICE, signer)), trusted, now=NOW)


def test_a_bad_signature_names_the_key_it_was_checked_with(signer, trusted):
    token = sign_identity(ALICE, signer)
    version, kid, payload, _ = token.split(".")
    other = b64url_encode(b"\0" * 64)
    with pytest.raises(BadSignature, match=rf"^token signature does not verify with key '{kid}'$"):
        verify_token(f"{version}.{kid}.{payload}.{other}", trusted, now=NOW)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sid", "", r"^token payload field 'sid' must not be empty$"),
        ("user", "", r"^token payload field 'user' must not be empty$"),
        ("pod_uid", "", r"^token payload field 'pod_uid' must not be empty$"),
        ("admin", True, r"^token payload has unknown keys \['admin'\]$"),
        # a hostile payload's keys are named five at most
        (
            {f"k{n}": n for n in range(7)},
            None,
            r"^token payload has unknown keys \['k0', 'k1', 'k2', 'k3', 'k4'\]$",
        ),
        ("groups", [1], r"^token payload field 'groups' must be a list of strings$"),
        ("trunc", False, r"^token payload field 'trunc' must be true when present$"),
    ],
)
def test_signed_payload_fields_are_checked_by_name(signer, trusted, field, value, message):
    extra = field if isinstance(field, dict) else {field: value}
    payload = {**replace(ALICE, pod_uid="u-1").to_payload(), **extra}
    with pytest.raises(TokenMalformed, match=message):
        verify_token(resign(signer, json.dumps(payload).encode()), trusted, now=NOW)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xff", r"^token payload is not UTF-8 JSON$"),
        (b"[]", r"^token payload is not a JSON object$"),
    ],
)
def test_payloads_that_are_not_objects_say_so(signer, trusted, payload, message):
    with pytest.raises(TokenMalformed, match=message):
        verify_token(resign(signer, payload), trusted, now=NOW)


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff", b"\xfb\xef", b"\xfb\xef\xbe", bytes(range(256)), b"\x00\x00\x17"],
    ids=["empty", "one", "two", "three", "all-bytes", "ends-in-X"],
)
def test_base64url_round_trips_and_never_strips_data(data):
    from webhook.identity import b64url_decode

    text = b64url_encode(data)
    assert "=" not in text
    assert b64url_decode(text, "payload") == data
