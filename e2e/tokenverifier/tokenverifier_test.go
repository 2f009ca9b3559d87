package tokenverifier

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"testing"
)

type vectors struct {
	Keys            map[string]string `json:"keys"`
	Now             int64             `json:"now"`
	SkewSeconds     int64             `json:"skew_seconds"`
	FreshSeconds    int64             `json:"fresh_seconds"`
	RootSkewSeconds int64             `json:"root_skew_seconds"`
	Valid           []struct {
		Name    string         `json:"name"`
		Token   string         `json:"token"`
		Payload map[string]any `json:"payload"`
	} `json:"valid"`
	Invalid []struct {
		Name  string `json:"name"`
		Token string `json:"token"`
		Error string `json:"error"`
	} `json:"invalid"`
	Roots []struct {
		Name        string `json:"name"`
		IAT         int64  `json:"iat"`
		RootStartNs int64  `json:"root_start_ns"`
		Decision    string `json:"decision"`
	} `json:"roots"`
	SingleUse struct {
		Claims []struct {
			SID       string `json:"sid"`
			Container string `json:"container"`
			Host      string `json:"host"`
			PID       int64  `json:"pid"`
			StartNs   int64  `json:"start_ns"`
			First     bool   `json:"first"`
		} `json:"claims"`
	} `json:"single_use"`
}

func load(t *testing.T) (vectors, map[string]ed25519.PublicKey) {
	t.Helper()
	data, err := os.ReadFile("../../tests/data/token-vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v vectors
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	keys := map[string]ed25519.PublicKey{}
	for kid, raw := range v.Keys {
		key, err := base64.StdEncoding.DecodeString(raw)
		if err != nil {
			t.Fatal(err)
		}
		keys[kid] = ed25519.PublicKey(key)
	}
	return v, keys
}

func TestValidTokensVerifyToTheirPayload(t *testing.T) {
	v, keys := load(t)
	for _, c := range v.Valid {
		identity, err := Verify(c.Token, keys, v.Now, v.SkewSeconds)
		if err != nil {
			t.Errorf("%s: %v", c.Name, err)
			continue
		}
		// compare through JSON, as the vectors state the payload
		encoded, _ := json.Marshal(identity)
		var got map[string]any
		_ = json.Unmarshal(encoded, &got)
		if _, ok := c.Payload["groups"]; ok && got["groups"] == nil {
			got["groups"] = []any{}
		}
		if !reflect.DeepEqual(got, c.Payload) {
			t.Errorf("%s: got %v, want %v", c.Name, got, c.Payload)
		}
	}
}

func TestInvalidTokensAreRefusedWithTheirError(t *testing.T) {
	v, keys := load(t)
	kinds := map[string]error{
		"malformed": ErrMalformed, "unknown_kid": ErrUnknownKeyID,
		"bad_signature": ErrBadSignature, "from_future": ErrFromFuture,
	}
	for _, c := range v.Invalid {
		_, err := Verify(c.Token, keys, v.Now, v.SkewSeconds)
		if !errors.Is(err, kinds[c.Error]) {
			t.Errorf("%s: got %v, want %s", c.Name, err, c.Error)
		}
	}
}

func TestRootFreshness(t *testing.T) {
	v, _ := load(t)
	for _, c := range v.Roots {
		fresh := Fresh(c.IAT, c.RootStartNs, v.FreshSeconds, v.RootSkewSeconds)
		if (c.Decision == "fresh") != fresh {
			t.Errorf("%s: fresh=%v, want %s", c.Name, fresh, c.Decision)
		}
	}
}

func TestSingleUse(t *testing.T) {
	v, _ := load(t)
	var claims Claims
	for _, c := range v.SingleUse.Claims {
		first := claims.Claim(c.SID, c.Container, Root{c.Host, c.PID, c.StartNs})
		if first != c.First {
			t.Errorf("%+v: first=%v", c, first)
		}
	}
}
