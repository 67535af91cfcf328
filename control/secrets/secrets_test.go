package secrets

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLoadKeyGeneratesOnceWithMode0600(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data")
	k1, err := LoadKey("", dir)
	require.NoError(t, err)
	require.Len(t, k1, 32)
	info, err := os.Stat(filepath.Join(dir, KeyFile))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), info.Mode().Perm())

	k2, err := LoadKey("", dir)
	require.NoError(t, err)
	assert.Equal(t, k1, k2, "the key file is kept across restarts")

	configured := strings.Repeat("ab", 32)
	k3, err := LoadKey(configured, dir)
	require.NoError(t, err)
	assert.NotEqual(t, k1, k3, "ENCRYPTION_KEY wins over the file")

	_, err = LoadKey("too-short", dir)
	require.ErrorContains(t, err, "ENCRYPTION_KEY")
}

func TestSealOpen(t *testing.T) {
	t.Parallel()
	key, err := LoadKey(strings.Repeat("01", 32), "")
	require.NoError(t, err)
	b, err := New(key)
	require.NoError(t, err)

	sealed := b.Seal([]byte(`{"GITHUB_TOKEN":"ghp_secret"}`), "agent-1")
	assert.NotContains(t, string(sealed), "ghp_secret")
	plain, err := b.Open(sealed, "agent-1")
	require.NoError(t, err)
	assert.Equal(t, `{"GITHUB_TOKEN":"ghp_secret"}`, string(plain))

	tests := []struct {
		name   string
		sealed []byte
		owner  string
	}{
		{"other owner", sealed, "agent-2"},
		{"tampered", append(append([]byte{}, sealed[:len(sealed)-1]...), sealed[len(sealed)-1]^1), "agent-1"},
		{"truncated", sealed[:5], "agent-1"},
		{"empty", nil, "agent-1"},
	}
	for _, tt := range tests {
		_, err := b.Open(tt.sealed, tt.owner)
		assert.ErrorIs(t, err, ErrDecrypt, tt.name)
	}

	other, err := New([]byte(strings.Repeat("k", 32)))
	require.NoError(t, err)
	_, err = other.Open(sealed, "agent-1")
	assert.ErrorIs(t, err, ErrDecrypt, "another key")
	assert.NotEqual(t, b.DeriveKey(SandboxTokenLabel), other.DeriveKey(SandboxTokenLabel))
	assert.Equal(t, b.DeriveKey(SandboxTokenLabel), b.DeriveKey(SandboxTokenLabel))
	assert.NotEqual(t, key, b.DeriveKey(SandboxTokenLabel), "a derived key is not the key")
}
