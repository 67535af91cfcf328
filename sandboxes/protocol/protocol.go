// Package protocol holds the wire types of the harness protocol
// (ARCHITECTURE §5), a subset of the opencode server API. The harness servers
// speak it, the control plane calls it, and the control plane's REST API
// reuses its message shape, so clients see one format end to end.
//
// The package has no dependencies beyond the standard library so that every
// part of lap, the CLI included, can import it.
package protocol

import "encoding/json"

// Identity is the body of GET / on a harness.
type Identity struct {
	Harness string `json:"harness"` // "lap", "claude-agent-sdk", "opencode"
	Version string `json:"version"`
	// Ready is true once the workspace is prepared (repo cloned).
	Ready bool `json:"ready"`
	// Workspace is the repository directory the agent works in.
	Workspace string `json:"workspace,omitempty"`
	// Error carries a failed preparation, e.g. the git clone error.
	Error string `json:"error,omitempty"`
}

// Roles of a message.
const (
	RoleUser      = "user"
	RoleAssistant = "assistant"
)

// Part types.
const (
	PartText = "text"
	PartTool = "tool"
)

// Tool states, in the order a tool call passes through them.
const (
	ToolPending   = "pending"
	ToolRunning   = "running"
	ToolCompleted = "completed"
	ToolError     = "error"
)

// Message is one turn of a conversation: {info, parts}.
type Message struct {
	Info  MessageInfo `json:"info"`
	Parts []Part      `json:"parts"`
}

// Text returns the concatenated text parts of m.
func (m Message) Text() string {
	var s string
	for _, p := range m.Parts {
		if p.Type == PartText {
			s += p.Text
		}
	}
	return s
}

// MessageInfo describes a message. Seq and Status are set by the control
// plane's durable log; harnesses leave them empty.
type MessageInfo struct {
	ID        string        `json:"id"`
	SessionID string        `json:"sessionID,omitempty"`
	Role      string        `json:"role"`
	Time      MessageTime   `json:"time"`
	ModelID   string        `json:"modelID,omitempty"`
	Tokens    Tokens        `json:"tokens"`
	Cost      float64       `json:"cost"`
	Error     *MessageError `json:"error,omitempty"`

	// Seq is the message's position in the session log: 1, 2, 3, …
	Seq int64 `json:"seq,omitempty"`
	// Status is the log status: pending, completed or failed.
	Status string `json:"status,omitempty"`
}

// Log statuses of a message in the control plane.
const (
	StatusPending   = "pending"
	StatusCompleted = "completed"
	StatusFailed    = "failed"
)

// MessageTime holds Unix milliseconds. Completed is zero while running.
type MessageTime struct {
	Created   int64 `json:"created"`
	Completed int64 `json:"completed,omitempty"`
}

// Tokens counts LLM tokens spent on a message.
type Tokens struct {
	Input  int64 `json:"input"`
	Output int64 `json:"output"`
}

// MessageError says why a turn ended badly.
type MessageError struct {
	// Name classifies the error: "APIError" (the LLM answered an error),
	// "Aborted", "HarnessError", "Timeout", "BudgetExceeded".
	Name    string `json:"name"`
	Message string `json:"message"`
	// Status is the upstream HTTP status for APIError, when known.
	Status int `json:"status,omitempty"`
}

// Part is one piece of a message: text or a tool call.
type Part struct {
	ID        string `json:"id,omitempty"`
	SessionID string `json:"sessionID,omitempty"`
	MessageID string `json:"messageID,omitempty"`
	Type      string `json:"type"`

	// Text is set for text parts.
	Text string `json:"text,omitempty"`

	// Tool, CallID and State are set for tool parts.
	Tool   string     `json:"tool,omitempty"`
	CallID string     `json:"callID,omitempty"`
	State  *ToolState `json:"state,omitempty"`
}

// ToolState is the progress of one tool call.
type ToolState struct {
	Status string          `json:"status"`
	Input  json.RawMessage `json:"input,omitempty"`
	Output string          `json:"output,omitempty"`
	Error  string          `json:"error,omitempty"`
	// Title is a one-line human summary, e.g. "bash: ls -la".
	Title string `json:"title,omitempty"`
}

// CreateSessionRequest is the body of POST /session.
type CreateSessionRequest struct {
	Title string `json:"title,omitempty"`
	// System is appended to the agent's prompt for this session.
	System string `json:"system,omitempty"`
	// History seeds a session on a fresh workspace (resume after the old
	// sandbox was lost). Only user and assistant text is replayed.
	History []Message `json:"history,omitempty"`
}

// SessionInfo is the answer of POST /session.
type SessionInfo struct {
	ID    string `json:"id"`
	Title string `json:"title,omitempty"`
}

// ModelRef names a model as opencode does.
type ModelRef struct {
	ProviderID string `json:"providerID"`
	ModelID    string `json:"modelID"`
}

// InputPart is a part of a user message sent to a harness.
type InputPart struct {
	Type string `json:"type"` // "text"
	Text string `json:"text"`
}

// SendMessageRequest is the body of POST /session/:id/message and
// POST /session/:id/prompt_async.
type SendMessageRequest struct {
	// MessageID, when set, is used as the id of the user message so the
	// control plane's log and the harness agree.
	MessageID string      `json:"messageID,omitempty"`
	Parts     []InputPart `json:"parts"`
	Model     *ModelRef   `json:"model,omitempty"`
	System    string      `json:"system,omitempty"`
}

// Text returns the concatenated text of the request's parts.
func (r SendMessageRequest) Text() string {
	var s string
	for _, p := range r.Parts {
		s += p.Text
	}
	return s
}

// Event types on GET /event.
const (
	EventServerConnected   = "server.connected"
	EventServerHeartbeat   = "server.heartbeat"
	EventMessageUpdated    = "message.updated"
	EventPartUpdated       = "message.part.updated"
	EventSessionIdle       = "session.idle"
	EventSessionError      = "session.error"
	EventWorkspaceProgress = "workspace.progress"
)

// Event is one server-sent event of GET /event, sent as `data: <json>`.
type Event struct {
	Type       string          `json:"type"`
	Properties EventProperties `json:"properties"`
}

// EventProperties is the union of the properties of every event type.
type EventProperties struct {
	SessionID string `json:"sessionID,omitempty"`
	// Part and Delta are set on message.part.updated. For text, Delta is
	// the text added since the last event and Part.Text the whole so far.
	Part  *Part  `json:"part,omitempty"`
	Delta string `json:"delta,omitempty"`
	// Info is set on message.updated.
	Info *MessageInfo `json:"info,omitempty"`
	// Error is set on session.error.
	Error *MessageError `json:"error,omitempty"`
	// Message is set on workspace.progress (e.g. git clone progress).
	Message string `json:"message,omitempty"`
}

// Bearer returns the Authorization header value for token.
func Bearer(token string) string { return "Bearer " + token }
