package knative

import (
	"log/slog"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/client-go/rest"

	"lap.dev/lap/config"
	"lap.dev/lap/knative/resources"
	"lap.dev/lap/sandboxes"
)

func loadConfig(t *testing.T, env map[string]string) config.Config {
	t.Helper()
	env["MASTER_KEY"] = "0123456789abcdef0123"
	cfg, err := config.Load(func(k string) (string, bool) { v, ok := env[k]; return v, ok }, "")
	require.NoError(t, err)
	return cfg
}

// TestImageSettings keeps config's HARNESS_IMAGE_* rows in step with the
// harness registry, in both directions.
func TestImageSettings(t *testing.T) {
	t.Parallel()
	var want []string
	for _, h := range sandboxes.Harnesses() {
		want = append(want, h.ImageSetting())
	}
	assert.ElementsMatch(t, want, config.HarnessImageSettings)
	var documented []string
	for _, s := range config.Settings() {
		documented = append(documented, s.Name)
	}
	for _, name := range want {
		assert.True(t, slices.Contains(documented, name), "%s is not a setting", name)
	}
}

func TestParamsFromConfig(t *testing.T) {
	t.Parallel()
	ws := resource.MustParse("10Gi")
	tests := []struct {
		name    string
		env     map[string]string
		want    resources.Params
		wantErr string
	}{{
		name: "defaults",
		env:  map[string]string{},
		want: resources.Params{
			Namespace: "lap-agents",
			Images: map[string]string{
				"lap":              "ko://lap.dev/lap/cmd/lap-harness",
				"claude-agent-sdk": "lap.dev/harness-claude-agent-sdk:latest",
				"opencode":         "lap.dev/harness-opencode:latest",
				"claude-code":      "lap.dev/harness-claude-code:latest",
				"codex":            "lap.dev/harness-codex:latest",
			},
			Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("512Mi")},
				Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2"), corev1.ResourceMemory: resource.MustParse("2Gi")},
			},
			WorkspaceSize:  &ws,
			TimeoutSeconds: 3600,
			ClusterLocal:   true,
		},
	}, {
		name: "overrides, no limits",
		env: map[string]string{
			"KNATIVE_NAMESPACE":              "agents",
			"HARNESS_IMAGE_LAP":              "registry.example/lap-harness@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
			"KNATIVE_SANDBOX_CPU_LIMIT":      "",
			"KNATIVE_SANDBOX_MEMORY_LIMIT":   "",
			"KNATIVE_SANDBOX_WORKSPACE_SIZE": "",
			"KNATIVE_REVISION_TIMEOUT":       "45m",
			"KNATIVE_CLUSTER_LOCAL":          "false",
		},
		want: resources.Params{
			Namespace: "agents",
			Images: map[string]string{
				"lap":              "registry.example/lap-harness@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
				"claude-agent-sdk": "lap.dev/harness-claude-agent-sdk:latest",
				"opencode":         "lap.dev/harness-opencode:latest",
				"claude-code":      "lap.dev/harness-claude-code:latest",
				"codex":            "lap.dev/harness-codex:latest",
			},
			Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("512Mi")},
			},
			TimeoutSeconds: 2700,
		},
	}, {
		name:    "request above limit",
		env:     map[string]string{"KNATIVE_SANDBOX_MEMORY_REQUEST": "4Gi"},
		wantErr: "memory request 4Gi exceeds its limit 2Gi",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParamsFromConfig(loadConfig(t, tt.env))
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParamsFromConfig (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNewFailsClearly(t *testing.T) {
	t.Parallel()
	cfg := loadConfig(t, map[string]string{})
	// A port nothing listens on: connection refused at once.
	_, err := NewForConfig(t.Context(), cfg, slog.New(slog.DiscardHandler), &rest.Config{Host: "http://127.0.0.1:1"})
	require.ErrorContains(t, err, "reach the Kubernetes API")

	cfg.Knative.Kubeconfig = filepath.Join(t.TempDir(), "missing")
	_, err = New(t.Context(), cfg, slog.New(slog.DiscardHandler))
	require.ErrorContains(t, err, "KNATIVE_KUBECONFIG")
}
