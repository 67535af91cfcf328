// Package sandboxtoken mints and verifies the stub credentials that
// sandboxes present to lapd's LLM gateway. A token names its sandbox and
// agent and carries an HMAC, so the gateway can tell a forged token at once
// and then ask the store whether the sandbox is still live: a token copied
// out of a destroyed sandbox is worthless.
package sandboxtoken

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
)

// Prefix makes sandbox tokens recognisable (in logs, in secret scanners).
const Prefix = "lapsb_"

// ErrInvalid is returned for a token that is malformed or not signed by us.
var ErrInvalid = errors.New("invalid sandbox token")

// Claims is what a valid token says about its holder.
type Claims struct {
	SandboxID string
	AgentID   string
}

// Signer mints and verifies tokens with one secret key.
type Signer struct {
	key []byte
}

// NewSigner returns a Signer that signs with key. The key must be stable
// across lapd restarts (sandboxes outlive lapd) and secret.
func NewSigner(key []byte) *Signer {
	return &Signer{key: key}
}

// Mint returns the token for a sandbox of an agent.
func (s *Signer) Mint(c Claims) string {
	payload := base64.RawURLEncoding.EncodeToString([]byte(c.SandboxID + "/" + c.AgentID))
	return Prefix + payload + "." + s.sign(payload)
}

// Verify checks token's signature and returns its claims, or ErrInvalid.
func (s *Signer) Verify(token string) (Claims, error) {
	rest, ok := strings.CutPrefix(token, Prefix)
	if !ok {
		return Claims{}, ErrInvalid
	}
	payload, sig, ok := strings.Cut(rest, ".")
	if !ok || !hmac.Equal([]byte(sig), []byte(s.sign(payload))) {
		return Claims{}, ErrInvalid
	}
	raw, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil {
		return Claims{}, ErrInvalid
	}
	sandboxID, agentID, ok := strings.Cut(string(raw), "/")
	if !ok || sandboxID == "" || agentID == "" {
		return Claims{}, ErrInvalid
	}
	return Claims{SandboxID: sandboxID, AgentID: agentID}, nil
}

func (s *Signer) sign(payload string) string {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte("lap sandbox token v1\x00" + payload))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}
