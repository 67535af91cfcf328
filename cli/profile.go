package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// DefaultURL is where `lap login` points by default: `make run`'s lapd.
const DefaultURL = "http://localhost:3000"

// Profile is what `lap login` saves in ~/.lap/config.json.
type Profile struct {
	URL       string `json:"url"`
	MasterKey string `json:"master_key"`
}

// Environment variables that override the saved profile.
const (
	EnvURL = "LAP_URL"
	EnvKey = "LAP_MASTER_KEY"
)

// target is the server the CLI talks to and where each half came from, so
// `lap config` and error messages can say why a URL is used.
type target struct {
	URL, Key         string
	URLFrom, KeyFrom string // "LAP_URL", "~/.lap/config.json", "default", ""
}

// lapDir is ~/.lap, found through $HOME so tests can use a temporary home.
func lapDir(getenv func(string) string) (string, error) {
	home := getenv("HOME")
	if home == "" {
		return "", errors.New("HOME is not set; lap keeps its login in $HOME/.lap")
	}
	return filepath.Join(home, ".lap"), nil
}

func profilePath(dir string) string { return filepath.Join(dir, "config.json") }

// loadProfile reads the saved profile; a missing file is an empty profile.
func loadProfile(dir string) (Profile, error) {
	b, err := os.ReadFile(profilePath(dir))
	if errors.Is(err, os.ErrNotExist) {
		return Profile{}, nil
	}
	if err != nil {
		return Profile{}, fmt.Errorf("read lap login: %w", err)
	}
	var p Profile
	if err := json.Unmarshal(b, &p); err != nil {
		return Profile{}, fmt.Errorf("read lap login %s: %w (run `lap login` again)", profilePath(dir), err)
	}
	return p, nil
}

// saveProfile writes the profile with mode 0600 (it holds the master key),
// through a temporary file so a crash never leaves half a file.
func saveProfile(dir string, p Profile) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return fmt.Errorf("encode lap login: %w", err)
	}
	f, err := os.CreateTemp(dir, ".config-*.json")
	if err != nil {
		return fmt.Errorf("save lap login: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op after the rename
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("save lap login: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("save lap login: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("save lap login: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save lap login: %w", err)
	}
	if err := os.Rename(tmp, profilePath(dir)); err != nil {
		return fmt.Errorf("save lap login: %w", err)
	}
	return nil
}

// resolveTarget combines the environment, the saved profile and defaults.
func resolveTarget(getenv func(string) string) (target, error) {
	var t target
	var p Profile
	if dir, err := lapDir(getenv); err == nil {
		if p, err = loadProfile(dir); err != nil {
			return target{}, err
		}
	}
	switch {
	case getenv(EnvURL) != "":
		t.URL, t.URLFrom = getenv(EnvURL), EnvURL
	case p.URL != "":
		t.URL, t.URLFrom = p.URL, "~/.lap/config.json"
	default:
		t.URL, t.URLFrom = DefaultURL, "default"
	}
	switch {
	case getenv(EnvKey) != "":
		t.Key, t.KeyFrom = getenv(EnvKey), EnvKey
	case p.MasterKey != "":
		t.Key, t.KeyFrom = p.MasterKey, "~/.lap/config.json"
	}
	u, err := normalizeURL(t.URL)
	if err != nil {
		return target{}, fmt.Errorf("%s: %w", t.URLFrom, err)
	}
	t.URL = u
	return t, nil
}

// normalizeURL accepts "host:port" and full URLs and drops a trailing slash.
func normalizeURL(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", errors.New("empty URL")
	}
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("bad URL %q: %w", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("bad URL %q: want http or https", s)
	}
	if u.Host == "" {
		return "", fmt.Errorf("bad URL %q: no host", s)
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// maskKey shows enough of a key to recognise it, never enough to use it.
func maskKey(k string) string {
	switch {
	case k == "":
		return "(none)"
	case len(k) <= 8:
		return strings.Repeat("*", len(k))
	default:
		return k[:4] + strings.Repeat("*", 8) + k[len(k)-4:]
	}
}
