package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := vars[k]
		return v, ok
	}
}

func TestLoadDefaults(t *testing.T) {
	t.Parallel()
	c, err := Load(env(map[string]string{"MASTER_KEY": "0123456789abcdef"}), "")
	require.NoError(t, err)
	assert.Equal(t, ":3000", c.Listen)
	assert.Equal(t, "./.lap-data", c.DataDir)
	assert.Equal(t, "local", c.Backend)
	assert.Equal(t, 1, c.WarmPoolSize)
	assert.Equal(t, 15*time.Minute, c.SessionIdleTimeout)
	assert.Equal(t, 10*time.Minute, c.SessionCreatingTimeout)
	assert.Equal(t, "lap-agents", c.KnativeNamespace)
	assert.Equal(t, "http://127.0.0.1:3000/llm", c.SandboxGatewayURL)
	assert.Equal(t, MockDefaultModel, c.DefaultModel, "no upstream: mock model by default")
}

func TestLoadDotenvAndEnvironmentWins(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dotenv := filepath.Join(dir, ".env")
	require.NoError(t, os.WriteFile(dotenv, []byte(`
# local dev against one harness
export MASTER_KEY="from-dotenv-0123456789"
LOCAL_SANDBOX_URL=http://localhost:4096
WARM_POOL_SIZE=3 # ignored: LOCAL_SANDBOX_URL turns pools off
LAP_LISTEN='127.0.0.1:4000'
`), 0o600))
	c, err := Load(env(map[string]string{"LAP_LISTEN": ":5000"}), dotenv)
	require.NoError(t, err)
	assert.Equal(t, "from-dotenv-0123456789", c.MasterKey)
	assert.Equal(t, "http://localhost:4096", c.LocalSandboxURL)
	assert.Equal(t, 0, c.WarmPoolSize)
	assert.Equal(t, ":5000", c.Listen, "environment wins over .env")
}

func TestLoadRejectsMalformedDotenv(t *testing.T) {
	t.Parallel()
	dotenv := filepath.Join(t.TempDir(), ".env")
	require.NoError(t, os.WriteFile(dotenv, []byte("MASTER_KEY=0123456789abcdef\nnot a setting\n"), 0o600))
	_, err := Load(env(nil), dotenv)
	require.Error(t, err)
	assert.Contains(t, err.Error(), dotenv, "the error names the file")
}

func TestLoadRejectsBadValues(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, value, want string
	}{
		{"LAP_BACKEND", "docker", "one of local, knative"},
		{"WARM_POOL_SIZE", "-1", "an integer from 0 to 100"},
		{"SESSION_IDLE_TIMEOUT", "15", "a positive duration"},
		{"LAP_LISTEN", "3000", "host:port"},
		{"LITELLM_API_BASE", "localhost:4000", "an absolute http or https URL"},
		{"KNATIVE_NAMESPACE", "Lap_Agents", "a DNS-1123 label"},
		{"ENCRYPTION_KEY", "short", "64 hex characters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Load(env(map[string]string{"MASTER_KEY": "0123456789abcdef", tt.name: tt.value}), "")
			var se *SettingError
			require.True(t, errors.As(err, &se), "Load(%s=%q) = %v, want a *SettingError", tt.name, tt.value, err)
			assert.Equal(t, tt.name, se.Name)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestMasterKeyFromDataDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	vars := map[string]string{"LAP_DATA_DIR": dir}

	_, err := Load(env(vars), "")
	require.ErrorContains(t, err, "MASTER_KEY")
	require.ErrorContains(t, err, "lapd init")

	key, created, err := InitMasterKey(dir)
	require.NoError(t, err)
	assert.True(t, created)
	assert.True(t, strings.HasPrefix(key, "sk-lap-"))
	info, err := os.Stat(filepath.Join(dir, MasterKeyFile))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), info.Mode().Perm())

	again, created, err := InitMasterKey(dir)
	require.NoError(t, err)
	assert.False(t, created, "an existing key is kept")
	assert.Equal(t, key, again)

	c, err := Load(env(vars), "")
	require.NoError(t, err)
	assert.Equal(t, key, c.MasterKey)
}

func TestHelpListsEverySetting(t *testing.T) {
	t.Parallel()
	help := Help()
	for _, s := range Settings() {
		assert.Contains(t, help, s.Name)
	}
}
