// Package config owns lap's settings: one typed Config, its defaults, its
// loading from the environment and an optional .env file, and its
// validation. Every setting is declared once, in the settings table below,
// which drives loading, defaults, validation and `lapd --help` alike.
package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Config is lapd's whole configuration, validated.
type Config struct {
	Listen    string // LAP_LISTEN
	DataDir   string // LAP_DATA_DIR
	MasterKey string // MASTER_KEY, or <DataDir>/master.key
	LogLevel  string // LAP_LOG_LEVEL

	Backend         string // LAP_BACKEND: local | knative
	WarmPoolSize    int    // WARM_POOL_SIZE; 0 disables warm pools
	LocalSandboxURL string // LOCAL_SANDBOX_URL: one external harness for every session

	SessionIdleTimeout     time.Duration // SESSION_IDLE_TIMEOUT
	SessionCreatingTimeout time.Duration // SESSION_CREATING_TIMEOUT
	TurnTimeout            time.Duration // LAP_TURN_TIMEOUT
	ShutdownTimeout        time.Duration // LAP_SHUTDOWN_TIMEOUT

	LiteLLMAPIBase string // LITELLM_API_BASE: the upstream LLM API
	LiteLLMAPIKey  string // LITELLM_API_KEY: the real key, only ever in lapd
	DefaultModel   string // LAP_DEFAULT_MODEL
	// SandboxGatewayURL is the /llm gateway URL as sandboxes reach it.
	SandboxGatewayURL string // LAP_SANDBOX_GATEWAY_URL

	KnativeNamespace string // KNATIVE_NAMESPACE
	EncryptionKey    string // ENCRYPTION_KEY (else a key file in DataDir)

	// Settings of one part each, declared in their own files.
	Local   LocalConfig   // local.go
	Knative KnativeConfig // knative.go
	Gateway GatewayConfig // gateway.go
}

// MasterKeyFile is the file in the data dir that holds a generated master
// key when MASTER_KEY is not set.
const MasterKeyFile = "master.key"

// Setting documents one environment variable.
type Setting struct {
	Name    string
	Default string
	Help    string
	set     func(c *Config, v string) error
}

// settings is the table of every setting lapd reads, in --help order.
var settings = slices.Concat(coreSettings, localSettings, gatewaySettings, knativeSettings)

var coreSettings = []Setting{
	{"LAP_LISTEN", ":3000", "address the API listens on (host:port)", func(c *Config, v string) error {
		return parseAddr(&c.Listen, v)
	}},
	{"LAP_DATA_DIR", "./.lap-data", "directory for the bbolt file, keys and local sandboxes", func(c *Config, v string) error {
		return nonEmpty(&c.DataDir, v)
	}},
	{"MASTER_KEY", "", "bearer token for the API; if unset, read from <LAP_DATA_DIR>/master.key (`lapd init` creates it)", func(c *Config, v string) error {
		c.MasterKey = v
		return nil
	}},
	{"LAP_LOG_LEVEL", "info", "debug, info, warn or error", func(c *Config, v string) error {
		return oneOf(&c.LogLevel, v, "debug", "info", "warn", "error")
	}},
	{"LAP_BACKEND", "local", "where sandboxes run: local (processes on this machine) or knative", func(c *Config, v string) error {
		return oneOf(&c.Backend, v, "local", "knative")
	}},
	{"WARM_POOL_SIZE", "1", "ready sandboxes kept per recently used agent; 0 disables warm pools", func(c *Config, v string) error {
		return parseInt(&c.WarmPoolSize, v, 0, 100)
	}},
	{"LOCAL_SANDBOX_URL", "", "URL of one external harness that serves every session (local development)", func(c *Config, v string) error {
		return parseURL(&c.LocalSandboxURL, v, "http", "https")
	}},
	{"SESSION_IDLE_TIMEOUT", "15m", "idle time after which a session's sandbox is scaled to zero", func(c *Config, v string) error {
		return parseDuration(&c.SessionIdleTimeout, v)
	}},
	{"SESSION_CREATING_TIMEOUT", "10m", "how long a session may take to become ready before it fails", func(c *Config, v string) error {
		return parseDuration(&c.SessionCreatingTimeout, v)
	}},
	{"LAP_TURN_TIMEOUT", "30m", "longest a single agent turn may run before it ends with 504", func(c *Config, v string) error {
		return parseDuration(&c.TurnTimeout, v)
	}},
	{"LAP_SHUTDOWN_TIMEOUT", "30s", "on SIGTERM, how long running turns may finish", func(c *Config, v string) error {
		return parseDuration(&c.ShutdownTimeout, v)
	}},
	{"LITELLM_API_BASE", "", "upstream LLM API (a LiteLLM proxy or any OpenAI/Anthropic-compatible API); unset = mock models only", func(c *Config, v string) error {
		return parseURL(&c.LiteLLMAPIBase, v, "http", "https")
	}},
	{"LITELLM_API_KEY", "", "key for LITELLM_API_BASE; stays in lapd, sandboxes get stub tokens", func(c *Config, v string) error {
		c.LiteLLMAPIKey = v
		return nil
	}},
	{"LAP_DEFAULT_MODEL", "", "model for agents created without one (default: mock/tools when LITELLM_API_BASE is unset)", func(c *Config, v string) error {
		c.DefaultModel = v
		return nil
	}},
	{"LAP_SANDBOX_GATEWAY_URL", "", "the /llm gateway URL as sandboxes reach it (default: http://127.0.0.1:<port>/llm)", func(c *Config, v string) error {
		return parseURL(&c.SandboxGatewayURL, v, "http", "https")
	}},
	{"KNATIVE_NAMESPACE", "lap-agents", "namespace of agents' Knative Services (LAP_BACKEND=knative)", func(c *Config, v string) error {
		return parseDNSLabel(&c.KnativeNamespace, v)
	}},
	{"ENCRYPTION_KEY", "", "AES-256 key for secrets at rest, 64 hex chars or base64 of 32 bytes; unset = generated key file in LAP_DATA_DIR", func(c *Config, v string) error {
		if v != "" {
			if _, err := DecodeKey(v); err != nil {
				return err
			}
		}
		c.EncryptionKey = v
		return nil
	}},
}

// Settings returns the documentation of every setting, in a stable order.
func Settings() []Setting { return settings }

// SettingError reports one setting whose value is not of the expected form.
type SettingError struct {
	Name, Value, Want string
}

func (e *SettingError) Error() string {
	return fmt.Sprintf("%s=%q: want %s", e.Name, e.Value, e.Want)
}

// Load reads every setting from lookup (os.LookupEnv in lapd), falling back
// to the .env file at dotenvPath (ignored if it does not exist, "" to skip)
// and then to the default, and validates the result. The environment wins
// over .env. The error joins one *SettingError per bad setting.
func Load(lookup func(string) (string, bool), dotenvPath string) (Config, error) {
	dotenv, err := readDotenv(dotenvPath)
	if err != nil {
		return Config{}, err
	}
	var c Config
	var errs []error
	for _, s := range settings {
		v, ok := lookup(s.Name)
		if !ok {
			v, ok = dotenv[s.Name]
		}
		if !ok {
			v = s.Default
		}
		if err := s.set(&c, v); err != nil {
			errs = append(errs, settingError(s.Name, v, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return Config{}, err
	}
	if err := c.finish(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// finish fills derived values and checks settings against each other.
func (c *Config) finish() error {
	if c.MasterKey == "" {
		b, err := os.ReadFile(filepath.Join(c.DataDir, MasterKeyFile))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("read master key: %w", err)
		}
		c.MasterKey = strings.TrimSpace(string(b))
	}
	if c.MasterKey == "" {
		return &SettingError{Name: "MASTER_KEY", Want: fmt.Sprintf(
			"a secret token; set it, or run `lapd init` (make run does) to generate %s",
			filepath.Join(c.DataDir, MasterKeyFile))}
	}
	if len(c.MasterKey) < 16 {
		return &SettingError{Name: "MASTER_KEY", Value: "(hidden)", Want: "at least 16 characters"}
	}
	if c.SandboxGatewayURL == "" {
		c.SandboxGatewayURL = "http://" + loopbackAddr(c.Listen) + "/llm"
	}
	if c.DefaultModel == "" && c.LiteLLMAPIBase == "" {
		c.DefaultModel = MockDefaultModel
	}
	if c.LocalSandboxURL != "" {
		// One shared external harness has no pool to keep warm.
		c.WarmPoolSize = 0
	}
	return nil
}

// MockDefaultModel is the model of new agents when no upstream LLM is
// configured: lapd answers it itself (the offline demo model).
const MockDefaultModel = "mock/tools"

// UsesMockOnly reports whether lapd has no upstream LLM configured.
func (c Config) UsesMockOnly() bool { return c.LiteLLMAPIBase == "" }

// loopbackAddr turns a listen address into one a local client can dial.
func loopbackAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

func settingError(name, value string, err error) error {
	var se *SettingError
	if errors.As(err, &se) {
		se.Name, se.Value = name, value
		return se
	}
	return &SettingError{Name: name, Value: value, Want: err.Error()}
}

// Help renders the settings table for `lapd --help`.
func Help() string {
	var b strings.Builder
	b.WriteString("Settings (environment, or .env in the working directory; the environment wins):\n\n")
	width := 0
	for _, s := range settings {
		width = max(width, len(s.Name))
	}
	for _, s := range settings {
		def := ""
		if s.Default != "" {
			def = " (default " + s.Default + ")"
		}
		fmt.Fprintf(&b, "  %-*s  %s%s\n", width, s.Name, s.Help, def)
	}
	return b.String()
}
