package config

import (
	"bufio"
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

// readDotenv reads KEY=VALUE lines from path. Blank lines and lines
// starting with # are skipped, an `export ` prefix is allowed, and values
// may be wrapped in single or double quotes. A missing file is no error.
func readDotenv(path string) (map[string]string, error) {
	vars := map[string]string{}
	if path == "" {
		return vars, nil
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return vars, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		k, v, ok := strings.Cut(line, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("%s:%d: want KEY=VALUE", path, n)
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		} else if i := strings.Index(v, " #"); i >= 0 {
			v = strings.TrimSpace(v[:i])
		}
		vars[k] = v
	}
	return vars, sc.Err()
}
