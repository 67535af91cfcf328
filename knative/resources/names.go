package resources

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	"lap.dev/lap/sandboxes"
)

// Labels and annotations lap puts on its objects. Revisions inherit the
// template's labels, and their pods inherit the revision's, so every pod
// of a sandbox carries its sandbox id.
const (
	LabelManagedBy  = "app.kubernetes.io/managed-by"
	ManagedBy       = "lap"
	LabelAgentID    = "lap.dev/agent-id"
	LabelSandboxID  = "lap.dev/sandbox-id"
	LabelRole       = "lap.dev/role"
	LabelGeneration = "lap.dev/generation"
	// AnnotationHarness names the agent's harness_id on its Service.
	AnnotationHarness = "lap.dev/harness"
	// RoleBase marks an agent's base revision, which serves the default
	// route and no session.
	RoleBase = "base"
)

// ServiceName is the Knative Service of an agent: its name.
func ServiceName(agent sandboxes.AgentSpec) string { return agent.Name }

// SecretName is the per-agent Secret holding the agent's env_vars.
func SecretName(agentName string) string { return agentName + "-secrets" }

// BaseRevisionName is the agent's base revision at a generation.
func BaseRevisionName(agentName string, generation int64) string {
	return agentName + "-g" + strconv.FormatInt(generation, 10)
}

// ShortID is the 8 hex characters that name a sandbox's revision and tag.
// For a UUID they are its last 8 hex digits: random in both v4 and v7,
// whereas a v7's first 8 are a timestamp shared by every id of the same
// minute. Other ids are hashed.
func ShortID(sandboxID string) string {
	hexOnly := strings.ReplaceAll(strings.ToLower(sandboxID), "-", "")
	if _, err := hex.DecodeString(hexOnly); err == nil && len(hexOnly) >= 16 {
		return hexOnly[len(hexOnly)-8:]
	}
	sum := sha256.Sum256([]byte(sandboxID))
	return hex.EncodeToString(sum[:4])
}

// SandboxTag is the traffic tag of a sandbox: "s-<8hex>".
func SandboxTag(sandboxID string) string { return "s-" + ShortID(sandboxID) }

// SandboxRevisionName is a sandbox's revision: "<agent>-s-<8hex>".
func SandboxRevisionName(agentName, sandboxID string) string {
	return agentName + "-" + SandboxTag(sandboxID)
}

// SandboxSecretName is the Secret of a sandbox's own environment: named
// as its revision, so a sandbox's record (or its revision) is enough to
// find it, and never like an agent's "<agent>-secrets".
func SandboxSecretName(agentName, sandboxID string) string {
	return SandboxRevisionName(agentName, sandboxID)
}

// isSandboxTag tells lap's sandbox tags from any other tag on a route.
func isSandboxTag(tag string) bool { return strings.HasPrefix(tag, "s-") }

// ValidateAgentName reports whether name can name a Knative Service and
// every object derived from it. Agent names are DNS-1123 labels of at most
// 40 characters; a Knative Service also needs a leading letter, because
// Kubernetes Services are DNS-1035 labels.
func ValidateAgentName(name string) error {
	if errs := validation.IsDNS1035Label(name); len(errs) > 0 {
		return fmt.Errorf("agent name %q cannot name a Knative Service: %s", name, strings.Join(errs, "; "))
	}
	// The longest derived name, a sandbox tag host label, must fit 63.
	if n := len(SandboxTag("x") + "-" + name); n > validation.DNS1123LabelMaxLength {
		return fmt.Errorf("agent name %q is too long for Knative: tag hosts would be %d characters", name, n)
	}
	return nil
}

// HarnessID is the agent's harness, the default one when it names none.
func HarnessID(agent sandboxes.AgentSpec) string {
	if agent.HarnessID == "" {
		return sandboxes.DefaultHarness
	}
	return agent.HarnessID
}

func agentLabels(agent sandboxes.AgentSpec) map[string]string {
	return map[string]string{LabelManagedBy: ManagedBy, LabelAgentID: agent.ID}
}

func ptr[T any](v T) *T { return &v }
