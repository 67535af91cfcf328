// Package sandboxes owns the contract between the control plane and the
// places where harnesses run: the Backend interface, the types it speaks, the
// registry of known harnesses, and (in sandboxes/conformance) the behaviour
// suite every backend must pass.
//
// A backend knows nothing of sessions, messages or the store. The control
// plane decides when a sandbox is provisioned, claimed, suspended, resumed or
// destroyed, persists the Sandbox values a backend returns, and hands them
// back on later calls, also after a restart.
package sandboxes

import (
	"context"
	"errors"
	"net/http"
)

// Errors a Backend returns. Wrap them with context; callers use errors.Is.
var (
	// ErrNotFound: the backend has no trace of the sandbox or agent.
	ErrNotFound = errors.New("sandbox not found")
	// ErrGone: the sandbox existed but cannot be resumed (its workspace or
	// revision was removed). The caller provisions a new sandbox and
	// replays the conversation history into it.
	ErrGone = errors.New("sandbox gone")
	// ErrCapacity: the backend refuses more live sandboxes for this agent
	// (e.g. the per-agent tag cap on Knative). Maps to HTTP 429.
	ErrCapacity = errors.New("sandbox capacity reached")
	// ErrNotReady: the harness did not become ready before the deadline.
	ErrNotReady = errors.New("sandbox not ready")
)

// Roles of a sandbox, recorded by backends that label their objects.
const (
	RoleWarm    = "warm"    // provisioned ahead of demand for the warm pool
	RoleSession = "session" // provisioned for one waiting session
)

// AgentSpec is what a backend needs to know about an agent.
type AgentSpec struct {
	ID         string
	Name       string // DNS-1123 label, ≤ 40 chars; the Knative Service name
	HarnessID  string
	Generation int64
	// Env is the agent-wide part of the sandbox environment (ARCHITECTURE
	// §5): REPO_URL, BRANCH, AGENT_PROMPT, LAP_MODEL, LITELLM_API_BASE.
	Env map[string]string
	// Secrets are the agent's env_vars, decrypted. Backends put them in the
	// sandbox environment and nowhere else (Knative: a per-agent Secret).
	Secrets map[string]string
}

// Spec describes one sandbox to provision.
type Spec struct {
	// ID is chosen by the control plane (a UUID) and names the sandbox in
	// every later call and in the backend's own objects.
	ID    string
	Role  string
	Agent AgentSpec
	// Env is the per-sandbox part of the environment: HARNESS_AUTH_TOKEN
	// and LITELLM_API_KEY (the sandbox's gateway token).
	Env map[string]string
}

// Endpoint says how to reach a sandbox's harness over HTTP.
type Endpoint struct {
	// URL is the harness's base URL, e.g. http://127.0.0.1:41234.
	URL string `json:"url"`
	// Host, when set, overrides the Host header (ingress routing by host).
	Host string `json:"host,omitempty"`
	// Header holds extra headers to send, e.g. Knative-Serving-Tag.
	Header map[string]string `json:"header,omitempty"`
	// Proxied says requests reach the harness through proxies (Knative's
	// ingress, activator and queue-proxy). Turns sent there carry no
	// "Expect: 100-continue": the proxies answer it themselves, and
	// Knative v0.42's response writers, having passed a harness's
	// "100 Continue" on, report its final status as 200.
	Proxied bool `json:"proxied,omitempty"`
}

// Apply sets the endpoint's Host and extra headers on req.
func (e Endpoint) Apply(req *http.Request) {
	if e.Host != "" {
		req.Host = e.Host
	}
	for k, v := range e.Header {
		req.Header.Set(k, v)
	}
}

// Sandbox is a backend's record of one sandbox. The control plane persists
// it as returned and passes it back unchanged.
type Sandbox struct {
	ID         string `json:"id"`
	AgentID    string `json:"agent_id"`
	Generation int64  `json:"generation"`
	// Running is false once the sandbox is suspended or found dead.
	Running  bool     `json:"running"`
	Endpoint Endpoint `json:"endpoint"`
	// Data is backend-private state (pid, port, workspace, revision name).
	Data map[string]string `json:"data,omitempty"`
}

// Backend runs harnesses. Every method takes the caller's context and stops
// waiting when it ends; implementations are safe for concurrent use.
type Backend interface {
	// Name is "local" or "knative".
	Name() string

	// EnsureAgent creates or updates the per-agent resources (Knative: the
	// Service with its base revision and the Secret). Idempotent; called
	// on agent create and update and at control-plane start.
	EnsureAgent(ctx context.Context, agent AgentSpec) error

	// DeleteAgent removes the agent's resources and every sandbox of it.
	// Idempotent: deleting what is not there returns nil.
	DeleteAgent(ctx context.Context, agent AgentSpec) error

	// Provision starts a sandbox and returns once its harness answers
	// GET /session with 2xx, or with an error (ErrNotReady wrapped with the
	// harness's log tail, ErrCapacity, ctx's error). A failed provision
	// leaves nothing behind.
	Provision(ctx context.Context, spec Spec) (Sandbox, error)

	// Suspend scales the sandbox to zero, keeping what Resume needs (local:
	// the workspace; Knative: the revision). Idempotent.
	Suspend(ctx context.Context, sb Sandbox) (Sandbox, error)

	// Resume brings a suspended or crashed sandbox back and returns once
	// it is ready. If it is already running and healthy it returns at
	// once. ErrGone means it cannot come back; provision a new one.
	Resume(ctx context.Context, sb Sandbox) (Sandbox, error)

	// Destroy stops the sandbox and deletes everything of it. Idempotent.
	Destroy(ctx context.Context, sb Sandbox) error

	// List returns the sandboxes this backend finds running or suspended,
	// so a restarted control plane can adopt them. Running reports what
	// the backend observes now.
	List(ctx context.Context) ([]Sandbox, error)

	// Logs returns up to the last n bytes of the sandbox's output.
	Logs(ctx context.Context, sb Sandbox, n int) (string, error)
}
