// Package tokenverifier verifies whoexec v1 identity tokens, as specified in
// docs/token.md, and makes the consumer's root decisions (freshness, single use).
//
// It is small on purpose: the tools of this field (Falco plugins, admission
// controllers) are written in Go, and this is what they need to believe a token.
// It passes the same vectors as the Python verifier (tests/data/token-vectors.json).
package tokenverifier

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"
)

// MaxTokenBytes: every token is strictly shorter than this.
const MaxTokenBytes = 1024

// The kinds of refusal, in the order a verifier checks them.
var (
	ErrMalformed    = errors.New("malformed token")
	ErrUnknownKeyID = errors.New("unknown key id")
	ErrBadSignature = errors.New("bad signature")
	ErrFromFuture   = errors.New("token issued in the future")
)

// Identity is the token payload.
type Identity struct {
	SessionID       string   `json:"sid"`
	User            string   `json:"user"`
	UID             string   `json:"uid"`
	Groups          []string `json:"groups"`
	Namespace       string   `json:"ns"`
	Pod             string   `json:"pod"`
	Container       string   `json:"container"`
	IssuedAt        int64    `json:"iat"`
	PodUID          string   `json:"pod_uid,omitempty"`
	GroupsTruncated bool     `json:"trunc,omitempty"`
}

var kidPattern = regexp.MustCompile(`^[0-9a-f]{16}$`)

// decode is strict unpadded base64url: no padding, no stray characters, canonical bits.
func decode(text, what string) ([]byte, error) {
	data, err := base64.RawURLEncoding.Strict().DecodeString(text)
	if err != nil || strings.ContainsAny(text, "=\r\n") {
		return nil, fmt.Errorf("%w: %s is not canonical unpadded base64url", ErrMalformed, what)
	}
	return data, nil
}

// Verify checks a token's format and signature against the trusted keys (by kid) and
// returns the identity it asserts. now and skew are unix seconds.
func Verify(token string, keys map[string]ed25519.PublicKey, now, skew int64) (*Identity, error) {
	if len(token) >= MaxTokenBytes {
		return nil, fmt.Errorf("%w: %d bytes", ErrMalformed, len(token))
	}
	parts := strings.Split(token, ".")
	if len(parts) != 4 {
		return nil, fmt.Errorf("%w: %d parts", ErrMalformed, len(parts))
	}
	if parts[0] != "v1" || !kidPattern.MatchString(parts[1]) {
		return nil, fmt.Errorf("%w: version or kid", ErrMalformed)
	}
	payload, err := decode(parts[2], "payload")
	if err != nil {
		return nil, err
	}
	signature, err := decode(parts[3], "signature")
	if err != nil {
		return nil, err
	}
	if len(signature) != ed25519.SignatureSize {
		return nil, fmt.Errorf("%w: signature is %d bytes", ErrMalformed, len(signature))
	}
	key, ok := keys[parts[1]]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownKeyID, parts[1])
	}
	signed := parts[0] + "." + parts[1] + "." + parts[2]
	if !ed25519.Verify(key, []byte(signed), signature) {
		return nil, ErrBadSignature
	}
	identity, err := parsePayload(payload)
	if err != nil {
		return nil, err
	}
	if identity.IssuedAt > now+skew {
		return nil, fmt.Errorf("%w: iat %d", ErrFromFuture, identity.IssuedAt)
	}
	return identity, nil
}

var required = []string{"sid", "user", "uid", "groups", "ns", "pod", "container", "iat"}

func parsePayload(payload []byte) (*Identity, error) {
	// Go's decoder would replace invalid UTF-8 silently; the spec refuses it
	if !utf8.Valid(payload) {
		return nil, fmt.Errorf("%w: payload is not UTF-8", ErrMalformed)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(payload, &fields); err != nil {
		return nil, fmt.Errorf("%w: payload is not a JSON object", ErrMalformed)
	}
	for _, key := range required {
		if _, ok := fields[key]; !ok {
			return nil, fmt.Errorf("%w: payload lacks %q", ErrMalformed, key)
		}
	}
	for key := range fields {
		switch key {
		case "sid", "user", "uid", "groups", "ns", "pod", "container", "iat", "pod_uid", "trunc":
		default:
			return nil, fmt.Errorf("%w: unknown key %q", ErrMalformed, key)
		}
	}
	var id Identity
	strs := map[string]*string{
		"sid": &id.SessionID, "user": &id.User, "uid": &id.UID, "ns": &id.Namespace,
		"pod": &id.Pod, "container": &id.Container, "pod_uid": &id.PodUID,
	}
	for key, target := range strs {
		raw, ok := fields[key]
		if !ok {
			continue
		}
		if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, target) != nil {
			return nil, fmt.Errorf("%w: %q must be a string", ErrMalformed, key)
		}
	}
	if id.SessionID == "" || id.User == "" {
		return nil, fmt.Errorf("%w: sid and user must not be empty", ErrMalformed)
	}
	if _, ok := fields["pod_uid"]; ok && id.PodUID == "" {
		return nil, fmt.Errorf("%w: pod_uid must not be empty", ErrMalformed)
	}
	groups := fields["groups"]
	if len(groups) == 0 || groups[0] != '[' || json.Unmarshal(groups, &id.Groups) != nil {
		return nil, fmt.Errorf("%w: groups must be a list of strings", ErrMalformed)
	}
	// an integer: no fraction, no exponent, not a boolean or a string
	iat := bytes.TrimSpace(fields["iat"])
	if !regexp.MustCompile(`^-?[0-9]+$`).Match(iat) || json.Unmarshal(iat, &id.IssuedAt) != nil {
		return nil, fmt.Errorf("%w: iat must be an integer", ErrMalformed)
	}
	if raw, ok := fields["trunc"]; ok {
		if string(bytes.TrimSpace(raw)) != "true" {
			return nil, fmt.Errorf("%w: trunc must be true when present", ErrMalformed)
		}
		id.GroupsTruncated = true
	}
	if id.Groups == nil {
		id.Groups = []string{}
	}
	return &id, nil
}

// Fresh reports whether a session root that started at rootStartNs can be the exec the
// token was minted for: its start lies in [iat - skew, iat + fresh] (whole seconds).
func Fresh(iat, rootStartNs, freshSeconds, skewSeconds int64) bool {
	start := rootStartNs / 1_000_000_000
	return start >= iat-skewSeconds && start <= iat+freshSeconds
}

// Root is a process: host, pid and start time.
type Root struct {
	Host    string
	PID     int64
	StartNs int64
}

// Claims enforces single use within one process: one root per (session id, container).
// A deployment with several consumers needs a shared store with a unique key instead.
type Claims struct{ roots map[[2]string]Root }

// Claim records root for (sid, container) unless another root holds it; it reports
// whether root is that session's first (and so only believable) root.
func (c *Claims) Claim(sid, container string, root Root) bool {
	if c.roots == nil {
		c.roots = map[[2]string]Root{}
	}
	key := [2]string{sid, container}
	holder, ok := c.roots[key]
	if !ok {
		c.roots[key] = root
		return true
	}
	return holder == root
}
