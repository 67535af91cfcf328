package config

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/joho/godotenv"
)

// want is returned by parsers; Load turns it into a *SettingError.
type want string

func (w want) Error() string { return string(w) }

func nonEmpty(dst *string, v string) error {
	if v == "" {
		return want("a non-empty value")
	}
	*dst = v
	return nil
}

func oneOf(dst *string, v string, allowed ...string) error {
	for _, a := range allowed {
		if v == a {
			*dst = v
			return nil
		}
	}
	return want("one of " + strings.Join(allowed, ", "))
}

func parseInt(dst *int, v string, lo, hi int) error {
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return want(fmt.Sprintf("an integer from %d to %d", lo, hi))
	}
	*dst = n
	return nil
}

func parseBool(dst *bool, v string) error {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return want("true or false")
	}
	*dst = b
	return nil
}

func parseDuration(dst *time.Duration, v string) error {
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return want("a positive duration such as 90s, 15m or 1h")
	}
	*dst = d
	return nil
}

func parseAddr(dst *string, v string) error {
	_, port, err := net.SplitHostPort(v)
	if err != nil {
		return want("host:port, e.g. :3000 or 127.0.0.1:3000")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return want("host:port with a port from 0 to 65535")
	}
	*dst = v
	return nil
}

// parseURL accepts "" (unset) or an absolute URL with one of the schemes.
func parseURL(dst *string, v string, schemes ...string) error {
	if v == "" {
		*dst = ""
		return nil
	}
	u, err := url.Parse(v)
	if err != nil || u.Host == "" || !contains(schemes, u.Scheme) {
		return want("an absolute " + strings.Join(schemes, " or ") + " URL")
	}
	*dst = strings.TrimRight(v, "/")
	return nil
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

func parseDNSLabel(dst *string, v string) error {
	if !dnsLabel.MatchString(v) {
		return want("a DNS-1123 label (lower-case letters, digits and '-', ≤ 63 characters)")
	}
	*dst = v
	return nil
}

func contains(list []string, v string) bool {
	for _, s := range list {
		if s == v {
			return true
		}
	}
	return false
}

// DecodeKey parses an AES-256 key given as 64 hex characters or as the
// standard base64 encoding of 32 bytes.
func DecodeKey(s string) ([]byte, error) {
	if b, err := hex.DecodeString(s); err == nil && len(b) == 32 {
		return b, nil
	}
	if b, err := base64.StdEncoding.DecodeString(s); err == nil && len(b) == 32 {
		return b, nil
	}
	return nil, want("64 hex characters or base64 of 32 bytes")
}

// readDotenv reads the .env file at path with godotenv (KEY=VALUE lines,
// comments, `export `, quoted values). A missing file is no error.
func readDotenv(path string) (map[string]string, error) {
	if path == "" {
		return map[string]string{}, nil
	}
	vars, err := godotenv.Read(path)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return vars, nil
}
