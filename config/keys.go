package config

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// InitMasterKey makes sure dataDir holds a master key file. It returns the
// key and whether it was created now; an existing key is never replaced.
// The directory is created with mode 0700 and the file with 0600.
func InitMasterKey(dataDir string) (key string, created bool, err error) {
	path := filepath.Join(dataDir, MasterKeyFile)
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), false, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", false, fmt.Errorf("read master key: %w", err)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", false, fmt.Errorf("create data dir: %w", err)
	}
	key = "sk-lap-" + randomToken(32)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", false, fmt.Errorf("create master key: %w", err)
	}
	if _, err := f.WriteString(key + "\n"); err != nil {
		f.Close()
		return "", false, fmt.Errorf("write master key: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", false, fmt.Errorf("write master key: %w", err)
	}
	return key, true, nil
}

func randomToken(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
