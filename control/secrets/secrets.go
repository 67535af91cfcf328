// Package secrets keeps agent secrets (env_vars) encrypted at rest and
// derives lapd's other keys from the same key material. The key comes from
// ENCRYPTION_KEY or, when that is unset, from a key file lapd generates
// once in its data dir (mode 0600), so secrets and sandbox tokens stay
// valid across restarts.
package secrets

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"lap.dev/lap/config"
)

// KeyFile is the file in the data dir holding a generated key.
const KeyFile = "encryption.key"

// version prefixes every sealed value so the format can change later.
const version byte = 1

// ErrDecrypt is returned for a value that was not sealed by this key (or
// for another record: sealed values are bound to their owner's id).
var ErrDecrypt = errors.New("cannot decrypt secret: wrong key or tampered value")

// LoadKey returns the 32-byte key: configured (ENCRYPTION_KEY, 64 hex
// characters or base64 of 32 bytes) if not empty, else the key in
// <dataDir>/encryption.key, generated now if the file does not exist.
func LoadKey(configured, dataDir string) ([]byte, error) {
	if configured != "" {
		key, err := config.DecodeKey(configured)
		if err != nil {
			return nil, fmt.Errorf("ENCRYPTION_KEY: %w", err)
		}
		return key, nil
	}
	path := filepath.Join(dataDir, KeyFile)
	b, err := os.ReadFile(path)
	if err == nil {
		key, err := config.DecodeKey(strings.TrimSpace(string(b)))
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		return key, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read encryption key: %w", err)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generate encryption key: %w", err)
	}
	// O_EXCL: if another process made the file meanwhile, use theirs.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return LoadKey("", dataDir)
	}
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	if _, err := f.WriteString(hex.EncodeToString(key) + "\n"); err != nil {
		f.Close()
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	return key, nil
}

// Box seals and opens secrets with AES-256-GCM.
type Box struct {
	key  []byte
	aead cipher.AEAD
}

// New returns a Box for a 32-byte key.
func New(key []byte) (*Box, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("encryption key: want 32 bytes, have %d", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("encryption key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("encryption key: %w", err)
	}
	return &Box{key: key, aead: aead}, nil
}

// Seal encrypts plaintext bound to owner (e.g. the agent id): the result
// opens only with the same owner, so a sealed value copied onto another
// record is useless.
func (b *Box) Seal(plaintext []byte, owner string) []byte {
	nonce := make([]byte, b.aead.NonceSize())
	rand.Read(nonce)
	out := append([]byte{version}, nonce...)
	return b.aead.Seal(out, nonce, plaintext, []byte(owner))
}

// Open decrypts a value made by Seal for owner, or returns ErrDecrypt.
func (b *Box) Open(sealed []byte, owner string) ([]byte, error) {
	n := b.aead.NonceSize()
	if len(sealed) < 1+n || sealed[0] != version {
		return nil, ErrDecrypt
	}
	out, err := b.aead.Open(nil, sealed[1:1+n], sealed[1+n:], []byte(owner))
	if err != nil {
		return nil, ErrDecrypt
	}
	return out, nil
}

// DeriveKey returns a 32-byte key for another purpose, named by label
// (HMAC-SHA256 of the label under the master secret): stable across
// restarts, independent of the encryption key's use.
func (b *Box) DeriveKey(label string) []byte {
	m := hmac.New(sha256.New, b.key)
	m.Write([]byte(label))
	return m.Sum(nil)
}

// SandboxTokenLabel derives the key that signs sandbox tokens.
const SandboxTokenLabel = "lap sandbox token key v1"
