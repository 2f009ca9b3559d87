//! The whoexec identity token, v1 (`docs/token.md`): parsing and Ed25519 verification.
//!
//! Pure: no IO, no clock (`now` is passed in), no Falco SDK types. It accepts exactly the
//! tokens `webhook/identity.py` accepts, in the same order of checks, so that the shared
//! vectors in `tests/data/token-vectors.json` give the same error kinds here.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;

/// Every token is strictly shorter than this many bytes.
pub const MAX_TOKEN_BYTES: usize = 1024;
const SIGNATURE_BYTES: usize = 64;
const REQUIRED_KEYS: [&str; 8] = [
    "sid",
    "user",
    "uid",
    "groups",
    "ns",
    "pod",
    "container",
    "iat",
];
const OPTIONAL_KEYS: [&str; 2] = ["pod_uid", "trunc"];

/// Who opened an exec session, and where (the token's payload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub session_id: String,
    pub user: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub issued_at: i64,
    pub pod_uid: Option<String>,
    pub groups_truncated: bool,
}

/// Why a token is refused; the kinds are those of `webhook/errors.py`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenError {
    Malformed(String),
    UnknownKid(String),
    BadSignature(String),
    FromFuture(String),
}

impl TokenError {
    /// The error's name in the shared vectors.
    pub fn kind(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "malformed",
            TokenError::UnknownKid(_) => "unknown_kid",
            TokenError::BadSignature(_) => "bad_signature",
            TokenError::FromFuture(_) => "from_future",
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, detail) = match self {
            TokenError::Malformed(d) => ("TokenMalformed", d),
            TokenError::UnknownKid(d) => ("UnknownKeyId", d),
            TokenError::BadSignature(d) => ("BadSignature", d),
            TokenError::FromFuture(d) => ("TokenFromFuture", d),
        };
        write!(f, "{name}: {detail}")
    }
}

fn malformed(detail: impl Into<String>) -> TokenError {
    TokenError::Malformed(detail.into())
}

/// A hostile string shown in a message: cut, and escaped where it is not printable ASCII.
pub fn shown(text: &str, max_chars: usize) -> String {
    text.chars()
        .take(max_chars)
        .flat_map(char::escape_default)
        .collect()
}

/// The first 16 lowercase hex characters of SHA-256 over the raw 32-byte public key.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Trusted public keys by key id (several during a rotation).
#[derive(Clone, Debug, Default)]
pub struct KeyRing {
    keys: HashMap<String, VerifyingKey>,
}

impl KeyRing {
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        Self {
            keys: keys.into_iter().map(|k| (key_id(&k), k)).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.keys.keys().cloned().collect();
        kids.sort();
        kids
    }
}

/// A public key as an operator writes it: the PEM that `whoexec certs` writes
/// (`identity.pub`, SubjectPublicKeyInfo), or the raw 32 bytes in standard base64.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(text)
            .map_err(|e| format!("not an Ed25519 public key in PEM: {e}"));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| "neither PEM nor base64".to_string())?;
    let raw: [u8; 32] = raw
        .try_into()
        .map_err(|_| "a raw Ed25519 public key is 32 bytes".to_string())?;
    VerifyingKey::from_bytes(&raw).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

fn is_kid(text: &str) -> bool {
    text.len() == 16
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Strict base64url without padding: no `=`, no stray characters, canonical trailing bits.
fn b64url_decode(text: &str, what: &str) -> Result<Vec<u8>, TokenError> {
    let alphabet_ok = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !alphabet_ok || text.len() % 4 == 1 {
        return Err(malformed(format!("token {what} is not unpadded base64url")));
    }
    let data = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| malformed(format!("token {what} is not canonical base64url")))?;
    if URL_SAFE_NO_PAD.encode(&data) != text {
        return Err(malformed(format!(
            "token {what} is not canonical base64url"
        )));
    }
    Ok(data)
}

/// Check a token's format and signature and return the identity it asserts, without the
/// check against the future (that depends on the event's time: see [`check_not_future`]).
pub fn verify_signed(token: &str, ring: &KeyRing) -> Result<Identity, TokenError> {
    if token.len() >= MAX_TOKEN_BYTES {
        return Err(malformed(format!(
            "token is {} bytes, the limit is {}",
            token.len(),
            MAX_TOKEN_BYTES - 1
        )));
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [version, kid, payload_b64, signature_b64] = parts[..] else {
        return Err(malformed(format!(
            "token has {} dot-separated parts, expected 4",
            parts.len()
        )));
    };
    if version != "v1" {
        return Err(malformed(format!(
            "token version '{}' is not 'v1'",
            shown(version, 8)
        )));
    }
    if !is_kid(kid) {
        return Err(malformed(format!(
            "token kid '{}' is not 16 lowercase hex characters",
            shown(kid, 32)
        )));
    }
    let payload = b64url_decode(payload_b64, "payload")?;
    let signature = b64url_decode(signature_b64, "signature")?;
    let signature: [u8; SIGNATURE_BYTES] = signature.as_slice().try_into().map_err(|_| {
        malformed(format!(
            "token signature is {} bytes, expected {SIGNATURE_BYTES}",
            signature.len()
        ))
    })?;
    let Some(key) = ring.keys.get(kid) else {
        return Err(TokenError::UnknownKid(format!(
            "token kid '{kid}' is not among the {} trusted keys",
            ring.len()
        )));
    };
    let signed_len = version.len() + 1 + kid.len() + 1 + payload_b64.len();
    let signed = &token.as_bytes()[..signed_len];
    // RFC 8032 verification, as OpenSSL (Python's `cryptography`) does it
    key.verify(signed, &Signature::from_bytes(&signature))
        .map_err(|_| {
            TokenError::BadSignature(format!("token signature does not verify with key '{kid}'"))
        })?;
    parse_payload(&payload)
}

/// `iat` more than `max_skew` seconds after `now` (both unix seconds) is refused.
pub fn check_not_future(identity: &Identity, now: i64, max_skew: i64) -> Result<(), TokenError> {
    if identity.issued_at > now.saturating_add(max_skew) {
        return Err(TokenError::FromFuture(format!(
            "token iat {} is {}s after the event (allowed skew {max_skew}s)",
            identity.issued_at,
            identity.issued_at.saturating_sub(now)
        )));
    }
    Ok(())
}

/// [`verify_signed`] then [`check_not_future`]: what `webhook.identity.verify_token` does.
pub fn verify_token(
    token: &str,
    ring: &KeyRing,
    now: i64,
    max_skew: i64,
) -> Result<Identity, TokenError> {
    let identity = verify_signed(token, ring)?;
    check_not_future(&identity, now, max_skew)?;
    Ok(identity)
}

fn string_field(
    payload: &serde_json::Map<String, Value>,
    key: &str,
    empty_ok: bool,
) -> Result<String, TokenError> {
    match payload.get(key) {
        Some(Value::String(s)) if empty_ok || !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(malformed(format!(
            "token payload field '{key}' must not be empty"
        ))),
        _ => Err(malformed(format!(
            "token payload field '{key}' must be str"
        ))),
    }
}

/// Decode and type-check a payload (after the signature was verified).
pub fn parse_payload(payload: &[u8]) -> Result<Identity, TokenError> {
    let value: Value = serde_json::from_slice(payload)
        .map_err(|_| malformed("token payload is not UTF-8 JSON"))?;
    let Value::Object(map) = value else {
        return Err(malformed("token payload is not a JSON object"));
    };
    let mut missing: Vec<&str> = REQUIRED_KEYS
        .iter()
        .copied()
        .filter(|k| !map.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        missing.sort_unstable();
        return Err(malformed(format!("token payload lacks {missing:?}")));
    }
    let mut unknown: Vec<String> = map
        .keys()
        .filter(|k| !REQUIRED_KEYS.contains(&k.as_str()) && !OPTIONAL_KEYS.contains(&k.as_str()))
        .map(|k| shown(k, 32))
        .collect();
    if !unknown.is_empty() {
        unknown.sort();
        unknown.truncate(5);
        return Err(malformed(format!(
            "token payload has unknown keys {unknown:?}"
        )));
    }
    let groups = match map.get("groups") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|g| g.as_str().map(str::to_owned))
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| malformed("token payload field 'groups' must be a list of strings"))?,
        _ => return Err(malformed("token payload field 'groups' must be list")),
    };
    let pod_uid = if map.contains_key("pod_uid") {
        Some(string_field(&map, "pod_uid", false)?)
    } else {
        None
    };
    let groups_truncated = match map.get("trunc") {
        None => false,
        Some(Value::Bool(true)) => true,
        Some(_) => {
            return Err(malformed(
                "token payload field 'trunc' must be true when present",
            ))
        }
    };
    // an integer, not a boolean and not a float (`1.0` and `1e3` are floats in JSON parsers)
    let issued_at = match map.get("iat") {
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n
            .as_i64()
            .ok_or_else(|| malformed("token payload field 'iat' is out of range"))?,
        _ => return Err(malformed("token payload field 'iat' must be int")),
    };
    Ok(Identity {
        session_id: string_field(&map, "sid", false)?,
        user: string_field(&map, "user", false)?,
        uid: string_field(&map, "uid", true)?,
        groups,
        namespace: string_field(&map, "ns", true)?,
        pod: string_field(&map, "pod", true)?,
        container: string_field(&map, "container", true)?,
        issued_at,
        pod_uid,
        groups_truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn signer() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn mint(key: &SigningKey, payload: &str) -> String {
        let kid = key_id(&key.verifying_key());
        let signed = format!("v1.{kid}.{}", URL_SAFE_NO_PAD.encode(payload));
        let sig = key.sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }

    const ALICE: &str = r#"{"sid":"s-1","user":"alice","uid":"u-1","groups":["devs"],"ns":"shop","pod":"web","container":"app","iat":1000}"#;

    #[test]
    fn a_token_minted_by_a_trusted_key_verifies_to_its_identity() {
        let key = signer();
        let ring = KeyRing::new([key.verifying_key()]);
        let identity = verify_token(&mint(&key, ALICE), &ring, 1000, 300).unwrap();
        assert_eq!(identity.user, "alice");
        assert_eq!(identity.groups, vec!["devs".to_string()]);
        assert_eq!(identity.pod_uid, None);
    }

    #[test]
    fn a_payload_with_a_duplicate_key_keeps_the_last_value_as_python_does() {
        let key = signer();
        let ring = KeyRing::new([key.verifying_key()]);
        let payload = ALICE.replace(r#""user":"alice""#, r#""user":"mallory","user":"alice""#);
        let identity = verify_signed(&mint(&key, &payload), &ring).unwrap();
        assert_eq!(identity.user, "alice");
    }

    #[test]
    fn a_hostile_kid_is_shown_cut_and_escaped() {
        let ring = KeyRing::default();
        let err = verify_signed("v1.\u{1b}[31mBAD\u{1b}[0m.e30.e30", &ring).unwrap_err();
        assert_eq!(err.kind(), "malformed");
        assert!(!err.to_string().contains('\u{1b}'), "{err}");
    }

    #[test]
    fn a_public_key_reads_from_pem_or_raw_base64_and_anything_else_is_refused() {
        let key = signer().verifying_key();
        let raw = base64::engine::general_purpose::STANDARD.encode(key.as_bytes());
        assert_eq!(parse_public_key(&raw).unwrap(), key);
        assert!(parse_public_key("not a key").is_err());
        assert!(parse_public_key("AAAA").is_err());
    }

    #[test]
    fn iat_far_beyond_i64_is_malformed_not_a_panic() {
        let key = signer();
        let ring = KeyRing::new([key.verifying_key()]);
        let payload = ALICE.replace("1000", "99999999999999999999999");
        let err = verify_signed(&mint(&key, &payload), &ring).unwrap_err();
        assert_eq!(err.kind(), "malformed");
    }
}
