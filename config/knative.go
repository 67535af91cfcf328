package config

import (
	"regexp"
	"strconv"
	"time"
)

// KnativeConfig holds the settings of the Knative backend (knative/).
type KnativeConfig struct {
	// Kubeconfig is the kubeconfig file lapd uses; "" = in-cluster config.
	Kubeconfig string // KNATIVE_KUBECONFIG
	// IngressURL, when set, is where a lapd outside the cluster reaches
	// Knative's ingress; sandboxes are then addressed by their tag host or
	// by the Knative-Serving-Tag header. "" = the URLs in status.traffic.
	IngressURL string // KNATIVE_INGRESS_URL
	// TagHeader routes through the ingress by the Knative-Serving-Tag
	// header on the route's host instead of by the tag's own host.
	TagHeader bool // KNATIVE_INGRESS_TAG_HEADER
	// ClusterLocal keeps agents' Services off the public ingress.
	ClusterLocal bool // KNATIVE_CLUSTER_LOCAL
	// MaxSandboxesPerAgent caps the live (tagged) sandboxes of one agent.
	MaxSandboxesPerAgent int // KNATIVE_MAX_SANDBOXES_PER_AGENT
	// Sandbox container resources as Kubernetes quantities; "" = unset.
	CPURequest    string // KNATIVE_SANDBOX_CPU_REQUEST
	CPULimit      string // KNATIVE_SANDBOX_CPU_LIMIT
	MemoryRequest string // KNATIVE_SANDBOX_MEMORY_REQUEST
	MemoryLimit   string // KNATIVE_SANDBOX_MEMORY_LIMIT
	WorkspaceSize string // KNATIVE_SANDBOX_WORKSPACE_SIZE
	// RevisionTimeout is each revision's timeoutSeconds: the longest one
	// request to a harness (a whole turn) may take.
	RevisionTimeout time.Duration // KNATIVE_REVISION_TIMEOUT
	// ReadyTimeout bounds how long provision and resume wait for a
	// sandbox to answer.
	ReadyTimeout time.Duration // KNATIVE_READY_TIMEOUT
	// HarnessImages maps a harness's image setting (HARNESS_IMAGE_<ID>)
	// to its image; absent = the harness registry's default image.
	HarnessImages map[string]string
}

// HarnessImageSettings are the HARNESS_IMAGE_<ID> settings, one per harness
// in the registry (sandboxes/harnesses.go; a test in knative/ keeps both
// lists in step). config imports the standard library only, so the
// registry's names are repeated here.
var HarnessImageSettings = []string{"HARNESS_IMAGE_LAP", "HARNESS_IMAGE_CLAUDE_AGENT_SDK", "HARNESS_IMAGE_OPENCODE", "HARNESS_IMAGE_CLAUDE_CODE", "HARNESS_IMAGE_CODEX"}

var knativeSettings = append([]Setting{
	{"KNATIVE_KUBECONFIG", "", "kubeconfig file for LAP_BACKEND=knative; unset = in-cluster service account", func(c *Config, v string) error {
		c.Knative.Kubeconfig = v
		return nil
	}},
	{"KNATIVE_INGRESS_URL", "", "Knative ingress URL for a lapd outside the cluster (e.g. a port-forward to kourier); unset = cluster URLs from the route", func(c *Config, v string) error {
		return parseURL(&c.Knative.IngressURL, v, "http", "https")
	}},
	{"KNATIVE_INGRESS_TAG_HEADER", "false", "through KNATIVE_INGRESS_URL, pick the sandbox by the Knative-Serving-Tag header instead of the tag host (needs tag-header-based-routing)", func(c *Config, v string) error {
		return parseBool(&c.Knative.TagHeader, v)
	}},
	{"KNATIVE_CLUSTER_LOCAL", "true", "keep agents' Knative Services cluster-local (off the public ingress)", func(c *Config, v string) error {
		return parseBool(&c.Knative.ClusterLocal, v)
	}},
	{"KNATIVE_MAX_SANDBOXES_PER_AGENT", "20", "live (tagged) sandboxes one agent may have; more are refused with 429", func(c *Config, v string) error {
		return parseInt(&c.Knative.MaxSandboxesPerAgent, v, 1, 500)
	}},
	{"KNATIVE_SANDBOX_CPU_REQUEST", "250m", "CPU request of a sandbox container; empty = none", func(c *Config, v string) error {
		return parseQuantity(&c.Knative.CPURequest, v)
	}},
	{"KNATIVE_SANDBOX_CPU_LIMIT", "2", "CPU limit of a sandbox container; empty = none", func(c *Config, v string) error {
		return parseQuantity(&c.Knative.CPULimit, v)
	}},
	{"KNATIVE_SANDBOX_MEMORY_REQUEST", "512Mi", "memory request of a sandbox container; empty = none", func(c *Config, v string) error {
		return parseQuantity(&c.Knative.MemoryRequest, v)
	}},
	{"KNATIVE_SANDBOX_MEMORY_LIMIT", "2Gi", "memory limit of a sandbox container; empty = none", func(c *Config, v string) error {
		return parseQuantity(&c.Knative.MemoryLimit, v)
	}},
	{"KNATIVE_SANDBOX_WORKSPACE_SIZE", "10Gi", "size limit of a sandbox's emptyDir workspace; empty = none", func(c *Config, v string) error {
		return parseQuantity(&c.Knative.WorkspaceSize, v)
	}},
	{"KNATIVE_REVISION_TIMEOUT", "1h", "longest request (turn) a sandbox revision serves; at most Knative's max-revision-timeout-seconds", func(c *Config, v string) error {
		if err := parseDuration(&c.Knative.RevisionTimeout, v); err != nil {
			return err
		}
		if c.Knative.RevisionTimeout < time.Second || c.Knative.RevisionTimeout%time.Second != 0 {
			return want("a whole number of seconds, at least 1s")
		}
		return nil
	}},
	{"KNATIVE_READY_TIMEOUT", "5m", "how long provision and resume wait for a sandbox revision to answer", func(c *Config, v string) error {
		return parseDuration(&c.Knative.ReadyTimeout, v)
	}},
}, harnessImageSettings()...)

func harnessImageSettings() []Setting {
	rows := make([]Setting, len(HarnessImageSettings))
	for i, name := range HarnessImageSettings {
		rows[i] = Setting{name, "", "container image of that harness on Knative; unset = the registry's default (`lap harnesses`)", func(c *Config, v string) error {
			if c.Knative.HarnessImages == nil {
				c.Knative.HarnessImages = map[string]string{}
			}
			if v != "" {
				c.Knative.HarnessImages[name] = v
			}
			return nil
		}}
	}
	return rows
}

// quantity is the form of a Kubernetes resource quantity lap accepts:
// a decimal number with an optional SI or binary suffix.
var quantity = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)(?:m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$`)

func parseQuantity(dst *string, v string) error {
	if v == "" {
		*dst = ""
		return nil
	}
	m := quantity.FindStringSubmatch(v)
	if m == nil {
		return want("a Kubernetes quantity such as 500m, 2, 512Mi or 4Gi, or empty")
	}
	if n, err := strconv.ParseFloat(m[1], 64); err != nil || n == 0 {
		return want("a positive Kubernetes quantity, or empty")
	}
	*dst = v
	return nil
}
