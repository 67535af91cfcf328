package control

import (
	"context"

	"lap.dev/lap/store"
)

// What orchestration needs of the store, by the records it keeps. The
// store (bbolt) implements all of them; their errors are the store's
// sentinels (store.ErrNotFound, store.ErrConflict, …), which the API maps
// in classify. Tests and a future store need only these.

// agentRecords keeps agents.
type agentRecords interface {
	// CreateAgent stores a new agent; a taken name is store.ErrConflict.
	CreateAgent(ctx context.Context, a store.Agent) (store.Agent, error)
	// GetAgent returns the agent with id, or store.ErrNotFound.
	GetAgent(ctx context.Context, id string) (store.Agent, error)
	// ResolveAgent finds an agent by id, name or short id.
	ResolveAgent(ctx context.Context, ref string) (store.Agent, error)
	// UpdateAgent applies fn to the agent in one transaction.
	UpdateAgent(ctx context.Context, id string, fn func(*store.Agent) error) (store.Agent, error)
	// DeleteAgent removes the agent's record.
	DeleteAgent(ctx context.Context, id string) error
	// AllAgents returns every agent.
	AllAgents(ctx context.Context) ([]store.Agent, error)
}

// sessionRecords keeps sessions and their timelines. Only lifecycle.go
// calls UpdateSession.
type sessionRecords interface {
	// CreateSession stores a new session and logs its first state.
	CreateSession(ctx context.Context, sess store.Session) (store.Session, error)
	// GetSession returns the session with id, or store.ErrNotFound.
	GetSession(ctx context.Context, id string) (store.Session, error)
	// ResolveSession finds a session by id or short id.
	ResolveSession(ctx context.Context, ref string) (store.Session, error)
	// UpdateSession applies fn in one transaction that also adds status
	// and phase changes to the timeline; an error from fn aborts it.
	UpdateSession(ctx context.Context, id string, fn func(*store.Session) error) (store.Session, error)
	// ListSessions returns one page of sessions and the next cursor.
	ListSessions(ctx context.Context, f store.SessionFilter) ([]store.Session, string, error)
	// SessionIDsByStatus returns the ids of the sessions in status.
	SessionIDsByStatus(ctx context.Context, status string) ([]string, error)
	// ListLog returns the session's timeline, oldest first.
	ListLog(ctx context.Context, sessionID string, limit int) ([]store.LogEntry, error)
}

// sandboxRecords keeps sandboxes; a record exists before the backend
// starts anything, so a crash leaves a trace.
type sandboxRecords interface {
	// PutSandbox stores a new sandbox record.
	PutSandbox(ctx context.Context, sb store.Sandbox) (store.Sandbox, error)
	// GetSandbox returns the sandbox with id, or store.ErrNotFound.
	GetSandbox(ctx context.Context, id string) (store.Sandbox, error)
	// UpdateSandbox applies fn to the sandbox in one transaction.
	UpdateSandbox(ctx context.Context, id string, fn func(*store.Sandbox) error) (store.Sandbox, error)
	// ClaimWarmSandbox hands the oldest warm sandbox of the agent's
	// generation to sessionID, or returns store.ErrNotFound.
	ClaimWarmSandbox(ctx context.Context, agentID string, generation int64, sessionID string) (store.Sandbox, error)
	// ListSandboxes returns the sandboxes f selects, oldest first.
	ListSandboxes(ctx context.Context, f store.SandboxFilter) ([]store.Sandbox, error)
}

// messageLog is the durable conversation of every session.
type messageLog interface {
	// AppendMessage adds a message at the session's next seq.
	AppendMessage(ctx context.Context, m store.Message) (store.Message, error)
	// FinishTurn ends a turn: the user message's status and, if any, the
	// assistant message, in one transaction.
	FinishTurn(ctx context.Context, r store.TurnResult) (user, assistant store.Message, err error)
	// ListMessages returns the session's messages after afterSeq.
	ListMessages(ctx context.Context, sessionID string, afterSeq int64, limit int) ([]store.Message, error)
	// FailOpenMessages marks every pending message failed with cause
	// (at start-up: turns a stop interrupted).
	FailOpenMessages(ctx context.Context, cause store.MessageError) ([]store.Message, error)
}

// records is everything orchestration keeps in the store.
type records interface {
	agentRecords
	sessionRecords
	sandboxRecords
	messageLog
}

var _ records = (*store.Store)(nil)
