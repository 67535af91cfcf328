package config

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLocalDefaults(t *testing.T) {
	t.Parallel()
	c, err := Load(env(map[string]string{"MASTER_KEY": "0123456789abcdef"}), "")
	require.NoError(t, err)
	assert.Equal(t, LocalConfig{
		ReadyTimeout: 5 * time.Minute,
		StopGrace:    10 * time.Second,
		SandboxUser:  "auto",
		UIDFirst:     1000000,
		UIDLast:      1099999,
		UIDRegistry:  "/var/lib/lap/sandbox-uids",
		MaxOpenFiles: 4096,
		MaxProcesses: 1024,
		LogMaxBytes:  8 << 20,
		Path:         "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	}, c.Local)
}

func TestLocalSettings(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, value string
		check       func(t *testing.T, c LocalConfig)
		wantErr     string // "" when the value is valid
	}{
		{"LOCAL_SANDBOX_USER", "nobody", func(t *testing.T, c LocalConfig) { assert.Equal(t, "nobody", c.SandboxUser) }, ""},
		{"LOCAL_SANDBOX_USER", "65534:65534", func(t *testing.T, c LocalConfig) { assert.Equal(t, "65534:65534", c.SandboxUser) }, ""},
		{"LOCAL_SANDBOX_USER", "65534:x", nil, "uid:gid as two numbers"},
		{"LOCAL_SANDBOX_USER", "", nil, "auto, isolated, root"},
		{"LOCAL_SANDBOX_UIDS", "200000-200009", func(t *testing.T, c LocalConfig) {
			assert.Equal(t, [2]int{200000, 200009}, [2]int{c.UIDFirst, c.UIDLast})
		}, ""},
		{"LOCAL_SANDBOX_UIDS", "10-20", nil, "a range of user ids"},
		{"LOCAL_SANDBOX_UIDS", "300000-200000", nil, "a range of user ids"},
		{"LOCAL_SANDBOX_UIDS", "2000-4294967295", nil, "a range of user ids"},
		{"LOCAL_SANDBOX_UID_REGISTRY", "relative/dir", nil, "an absolute path"},
		{"LOCAL_LOG_MAX_BYTES", "512KiB", func(t *testing.T, c LocalConfig) { assert.EqualValues(t, 512<<10, c.LogMaxBytes) }, ""},
		{"LOCAL_LOG_MAX_BYTES", "2M", func(t *testing.T, c LocalConfig) { assert.EqualValues(t, 2<<20, c.LogMaxBytes) }, ""},
		{"LOCAL_LOG_MAX_BYTES", "65536", func(t *testing.T, c LocalConfig) { assert.EqualValues(t, 65536, c.LogMaxBytes) }, ""},
		{"LOCAL_LOG_MAX_BYTES", "10", nil, "a size of at least 4096 bytes"},
		{"LOCAL_LOG_MAX_BYTES", "lots", nil, "a size of at least"},
		{"LOCAL_STOP_ON_EXIT", "true", func(t *testing.T, c LocalConfig) { assert.True(t, c.StopOnExit) }, ""},
		{"LOCAL_STOP_ON_EXIT", "sometimes", nil, "true or false"},
		{"LOCAL_MAX_OPEN_FILES", "8", nil, "an integer from 64"},
		{"LOCAL_READY_TIMEOUT", "0s", nil, "a positive duration"},
	}
	for _, tt := range tests {
		t.Run(tt.name+"="+tt.value, func(t *testing.T) {
			t.Parallel()
			c, err := Load(env(map[string]string{"MASTER_KEY": "0123456789abcdef", tt.name: tt.value}), "")
			if tt.wantErr != "" {
				var se *SettingError
				require.True(t, errors.As(err, &se), "Load(%s=%q) = %v, want a *SettingError", tt.name, tt.value, err)
				assert.Equal(t, tt.name, se.Name)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			tt.check(t, c.Local)
		})
	}
}
