// Package api holds the JSON shapes of lap's REST API
// (/api/v1/managed_agents, ARCHITECTURE §4). The server in control and the
// client in cli both use it; it depends only on the harness wire types.
package api

import (
	"encoding/json"
	"time"

	"lap.dev/lap/sandboxes/protocol"
)

// BasePath is the prefix of every management route.
const BasePath = "/api/v1/managed_agents"

// Message is one turn of the conversation log, {info, parts}, in the
// opencode-compatible shape the harnesses speak.
type Message = protocol.Message

// Agent is an agent as the API returns it. Secret values never leave the
// server: EnvVars lists names only.
type Agent struct {
	ID           string    `json:"id"`
	Name         string    `json:"name"`
	HarnessID    string    `json:"harness_id"`
	Model        string    `json:"model"`
	Prompt       string    `json:"prompt"`
	RepoURL      string    `json:"repo_url"`
	Branch       string    `json:"branch"`
	EnvVars      []string  `json:"env_vars"`
	WarmPoolSize *int      `json:"warm_pool_size,omitempty"`
	MaxBudgetUSD *float64  `json:"max_budget_usd,omitempty"`
	Generation   int64     `json:"generation"`
	Usage        Usage     `json:"usage"`
	CreatedAt    time.Time `json:"created_at"`
	UpdatedAt    time.Time `json:"updated_at"`
	// SupportsTUI is the harness's TUI flag: clients attach to a terminal
	// (GET /sessions/:id/tty) instead of chatting. LAP's CLI reads it.
	SupportsTUI bool `json:"supports_tui"`
}

// CreateAgentRequest is the body of POST /agents. Name, HarnessID
// (default "lap") and Model (default LAP_DEFAULT_MODEL) as in the
// LiteLLM Agent Platform quickstart.
type CreateAgentRequest struct {
	Name         string            `json:"name"`
	HarnessID    string            `json:"harness_id,omitempty"`
	Model        string            `json:"model,omitempty"`
	Prompt       string            `json:"prompt,omitempty"`
	RepoURL      string            `json:"repo_url,omitempty"`
	Branch       string            `json:"branch,omitempty"`
	EnvVars      map[string]string `json:"env_vars,omitempty"`
	WarmPoolSize *int              `json:"warm_pool_size,omitempty"`
	MaxBudgetUSD *float64          `json:"max_budget_usd,omitempty"`
}

// UpdateAgentRequest is the body of PATCH /agents/:id; nil fields are kept.
// EnvVars replaces the whole set when present.
type UpdateAgentRequest struct {
	Name         *string            `json:"name,omitempty"`
	HarnessID    *string            `json:"harness_id,omitempty"`
	Model        *string            `json:"model,omitempty"`
	Prompt       *string            `json:"prompt,omitempty"`
	RepoURL      *string            `json:"repo_url,omitempty"`
	Branch       *string            `json:"branch,omitempty"`
	EnvVars      *map[string]string `json:"env_vars,omitempty"`
	WarmPoolSize *int               `json:"warm_pool_size,omitempty"`
	MaxBudgetUSD *float64           `json:"max_budget_usd,omitempty"`
}

// Session statuses.
const (
	SessionCreating = "creating" // waiting for a sandbox
	SessionReady    = "ready"    // a running sandbox serves it
	SessionIdle     = "idle"     // its sandbox is scaled to zero; the next message resumes it
	SessionFailed   = "failed"   // it cannot go on; see failure_reason, POST restart
	SessionDead     = "dead"     // deleted by the user
)

// Sandbox states of a session (Session.SandboxState).
const (
	SandboxRunning      = "running"        // a ready session's sandbox runs
	SandboxScaledToZero = "scaled_to_zero" // an idle session's; the next message resumes it
)

// LAPPrefix is the path prefix of LAP's view of the API: the LiteLLM
// Agent Platform's CLI and clients use lapd with their base URL set to
// lapd's address plus this prefix. The routes are lap's own; only how a
// session's status reads differs: a session scaled to zero is "ready"
// there (it accepts messages, and LAP's clients resume only a ready
// session), with sandbox_state "scaled_to_zero".
const LAPPrefix = "/lap"

// Session is a chat session as the API returns it.
type Session struct {
	ID               string    `json:"id"`
	AgentID          string    `json:"agent_id"`
	AgentName        string    `json:"agent_name,omitempty"`
	Title            string    `json:"title,omitempty"`
	Status           string    `json:"status"`
	Phase            string    `json:"phase,omitempty"`
	FailureReason    string    `json:"failure_reason,omitempty"`
	SandboxID        string    `json:"sandbox_id,omitempty"`
	HarnessSessionID string    `json:"harness_session_id,omitempty"`
	CreatedAt        time.Time `json:"created_at"`
	LastActiveAt     time.Time `json:"last_active_at"`
	IdleTimeoutMS    int64     `json:"idle_timeout_ms"`
	MaxBudgetUSD     *float64  `json:"max_budget_usd,omitempty"`
	Usage            Usage     `json:"usage"`

	// SupportsTUI is the agent's harness's TUI flag, as on Agent.
	SupportsTUI bool `json:"supports_tui"`
	// SandboxState is lap's view of the sandbox of a ready or idle
	// session: SandboxRunning or SandboxScaledToZero. It is the only
	// place that tells them apart in LAP's view (LAPPrefix), where an idle
	// session reads "ready".
	SandboxState string `json:"sandbox_state,omitempty"`
	// TTYURL and TTYToken are set for sessions of terminal agents: the
	// lapd path of the session's terminal WebSocket (relative to the
	// server) and the token, good for that session only, that opens it.
	TTYURL   string `json:"tty_url,omitempty"`
	TTYToken string `json:"tty_token,omitempty"`
}

// CreateSessionRequest is the body of POST /agents/:id/session.
type CreateSessionRequest struct {
	Title         string   `json:"title,omitempty"`
	InitialPrompt string   `json:"initial_prompt,omitempty"`
	MaxBudgetUSD  *float64 `json:"max_budget_usd,omitempty"`
}

// Usage counts LLM use, per session and per agent.
type Usage struct {
	InputTokens  int64   `json:"input_tokens"`
	OutputTokens int64   `json:"output_tokens"`
	CostUSD      float64 `json:"cost_usd"`
	Requests     int64   `json:"requests"`
}

// SendMessageRequest is the body of POST /sessions/:id/message and
// /message_stream: either Text or Parts.
type SendMessageRequest struct {
	Text  string               `json:"text,omitempty"`
	Parts []protocol.InputPart `json:"parts,omitempty"`
	Model string               `json:"model,omitempty"`
}

// List is a page of a listing. NextCursor is empty on the last page.
type List[T any] struct {
	Data       []T    `json:"data"`
	NextCursor string `json:"next_cursor,omitempty"`
}

// Error codes, one per HTTP status family.
const (
	CodeBadRequest       = "bad_request"       // 400
	CodeUnauthorized     = "unauthorized"      // 401
	CodeNotFound         = "not_found"         // 404
	CodeConflict         = "conflict"          // 409
	CodeTooLarge         = "payload_too_large" // 413
	CodeUnsupportedMedia = "unsupported_media" // 415
	CodeUnprocessable    = "unprocessable"     // 422
	CodeTooManyRequests  = "too_many_requests" // 429
	CodeInternal         = "internal"          // 500
	CodeHarness          = "harness_error"     // 502
	CodeUnavailable      = "unavailable"       // 503
	CodeTimeout          = "timeout"           // 504
	CodeBudgetExceeded   = "budget_exceeded"   // 402 on the gateway, in info.error on turns
)

// ErrorBody is the body of every error response:
// {"error":{"code":"not_found","message":"session c3970704 not found"}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inside of ErrorBody.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Server-sent event names of /message_stream and /events.
const (
	EventReady   = "ready"         // the session's sandbox is ready; data: Session
	EventHarness = "harness_event" // data: protocol.Event from the harness (message_stream: HarnessFrame)
	EventDone    = "done"          // the turn ended; data: the assistant Message
	EventError   = "error"         // data: ErrorDetail
	EventSession = "session"       // status or phase changed; data: Session
	EventMessage = "message"       // a message was appended or updated; data: Message
)

// Harness is an entry of GET /harnesses.
type Harness struct {
	ID          string `json:"id"`
	Description string `json:"description"`
	Chat        bool   `json:"chat"`
	// SupportsTUI is true for terminal harnesses (Claude Code, Codex in
	// tmux), which LAP's clients attach to in TTY mode.
	SupportsTUI bool `json:"supports_tui"`
}

// LogEntry is one line of GET /sessions/:id/log, the session's timeline.
type LogEntry struct {
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"` // status, phase, message, sandbox, error
	Message string    `json:"message"`
}

// Diagnosis is GET /sessions/:id/diagnose: everything known about why a
// session is (not) working, in one document.
type Diagnosis struct {
	Session  Session         `json:"session"`
	Agent    Agent           `json:"agent"`
	Sandbox  map[string]any  `json:"sandbox,omitempty"`
	Harness  map[string]any  `json:"harness,omitempty"`
	LogTail  string          `json:"log_tail,omitempty"`
	Timeline []LogEntry      `json:"timeline"`
	Messages []MessageStatus `json:"messages"`
	Hints    []string        `json:"hints,omitempty"`
}

// MessageStatus summarises one logged message for Diagnosis.
type MessageStatus struct {
	Seq    int64  `json:"seq"`
	Role   string `json:"role"`
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
}

// Frames of POST /sessions/:id/message_stream carry their event's name as
// "type" in their data too, as the LiteLLM Agent Platform's do, so its
// clients (which read unnamed frames) and lap's (which read the event
// names) both understand them: ready's Session, done's Message and
// error's ErrorDetail gain a "type" field, and a harness event is wrapped
// as HarnessFrame.
type HarnessFrame struct {
	Type  string         `json:"type"` // EventHarness
	Event protocol.Event `json:"event"`
}

// DecodeHarnessEvent reads the data of a harness_event: a HarnessFrame
// (message_stream) or the bare harness event (GET /sessions/:id/events,
// and lapd before frames were typed).
func DecodeHarnessEvent(data []byte) (protocol.Event, error) {
	var f struct {
		Type  string          `json:"type"`
		Event *protocol.Event `json:"event"`
	}
	if err := json.Unmarshal(data, &f); err == nil && f.Type == EventHarness && f.Event != nil {
		return *f.Event, nil
	}
	var ev protocol.Event
	err := json.Unmarshal(data, &ev)
	return ev, err
}
