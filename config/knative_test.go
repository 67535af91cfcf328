package config

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestKnativeDefaults(t *testing.T) {
	t.Parallel()
	c, err := Load(env(map[string]string{"MASTER_KEY": "0123456789abcdef"}), "")
	require.NoError(t, err)
	assert.Equal(t, KnativeConfig{
		ClusterLocal:         true,
		MaxSandboxesPerAgent: 20,
		CPURequest:           "250m",
		CPULimit:             "2",
		MemoryRequest:        "512Mi",
		MemoryLimit:          "2Gi",
		WorkspaceSize:        "10Gi",
		RevisionTimeout:      time.Hour,
		ReadyTimeout:         5 * time.Minute,
		HarnessImages:        map[string]string{},
	}, c.Knative)
}

func TestKnativeSettings(t *testing.T) {
	t.Parallel()
	c, err := Load(env(map[string]string{
		"MASTER_KEY":                      "0123456789abcdef",
		"KNATIVE_INGRESS_URL":             "http://127.0.0.1:8081/",
		"KNATIVE_INGRESS_TAG_HEADER":      "true",
		"KNATIVE_SANDBOX_CPU_LIMIT":       "",
		"KNATIVE_SANDBOX_MEMORY_REQUEST":  "1.5Gi",
		"KNATIVE_MAX_SANDBOXES_PER_AGENT": "3",
		"HARNESS_IMAGE_OPENCODE":          "registry.example/opencode:1",
	}), "")
	require.NoError(t, err)
	assert.Equal(t, "http://127.0.0.1:8081", c.Knative.IngressURL)
	assert.True(t, c.Knative.TagHeader)
	assert.Equal(t, "", c.Knative.CPULimit)
	assert.Equal(t, "1.5Gi", c.Knative.MemoryRequest)
	assert.Equal(t, 3, c.Knative.MaxSandboxesPerAgent)
	assert.Equal(t, map[string]string{"HARNESS_IMAGE_OPENCODE": "registry.example/opencode:1"}, c.Knative.HarnessImages)
}

func TestKnativeRejectsBadValues(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, value string }{
		{"KNATIVE_INGRESS_URL", "kourier:80"},
		{"KNATIVE_MAX_SANDBOXES_PER_AGENT", "0"},
		{"KNATIVE_SANDBOX_CPU_REQUEST", "lots"},
		{"KNATIVE_SANDBOX_MEMORY_LIMIT", "0Gi"},
		{"KNATIVE_SANDBOX_WORKSPACE_SIZE", "10GB"},
		{"KNATIVE_REVISION_TIMEOUT", "1500ms"},
		{"KNATIVE_READY_TIMEOUT", "-1m"},
		{"KNATIVE_CLUSTER_LOCAL", "maybe"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Load(env(map[string]string{"MASTER_KEY": "0123456789abcdef", tt.name: tt.value}), "")
			var se *SettingError
			require.ErrorAs(t, err, &se)
			assert.Equal(t, tt.name, se.Name)
		})
	}
}
