package sandboxtoken

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMintVerify(t *testing.T) {
	t.Parallel()
	s := NewSigner([]byte("0123456789abcdef0123456789abcdef"))
	claims := Claims{SandboxID: "0193a1b2-sandbox", AgentID: "0193a1b2-agent"}
	tok := s.Mint(claims)
	assert.True(t, strings.HasPrefix(tok, Prefix))

	got, err := s.Verify(tok)
	require.NoError(t, err)
	assert.Equal(t, claims, got)
}

func TestVerifyRejects(t *testing.T) {
	t.Parallel()
	s := NewSigner([]byte("key-one-key-one-key-one-key-one-"))
	other := NewSigner([]byte("key-two-key-two-key-two-key-two-"))
	good := s.Mint(Claims{SandboxID: "sb", AgentID: "ag"})
	payload, sig, _ := strings.Cut(strings.TrimPrefix(good, Prefix), ".")
	tests := map[string]string{
		"empty":          "",
		"master key":     "sk-lap-0123456789abcdef",
		"no signature":   Prefix + payload,
		"other signer":   other.Mint(Claims{SandboxID: "sb", AgentID: "ag"}),
		"tampered claim": Prefix + "c2IyL2Fn" + "." + sig,
		"bad base64":     Prefix + "!!!." + sig,
	}
	for name, tok := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := s.Verify(tok)
			assert.ErrorIs(t, err, ErrInvalid, "Verify(%q)", tok)
		})
	}
}
