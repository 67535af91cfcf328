package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Session is a stored chat session. Status takes the values of
// control/api (creating, ready, idle, failed, dead); the store indexes it
// but gives it no meaning.
type Session struct {
	ID               string `json:"id"`
	AgentID          string `json:"agent_id"`
	Title            string `json:"title,omitempty"`
	Status           string `json:"status"`
	Phase            string `json:"phase,omitempty"`
	FailureReason    string `json:"failure_reason,omitempty"`
	SandboxID        string `json:"sandbox_id,omitempty"`
	HarnessSessionID string `json:"harness_session_id,omitempty"`
	// PriorHarnessSessionIDs are the harness sessions HarnessSessionID
	// replaced (a new sandbox, a reopened session), oldest first, so the
	// pass-through can route a client that cached one to the current one.
	PriorHarnessSessionIDs []string `json:"prior_harness_session_ids,omitempty"`
	// Generation is the agent generation of the session's sandbox.
	Generation    int64     `json:"generation"`
	InitialPrompt string    `json:"initial_prompt,omitempty"`
	IdleTimeoutMS int64     `json:"idle_timeout_ms"`
	MaxBudgetUSD  *float64  `json:"max_budget_usd,omitempty"`
	Usage         Usage     `json:"usage"`
	CreatedAt     time.Time `json:"created_at"`
	UpdatedAt     time.Time `json:"updated_at"`
	LastActiveAt  time.Time `json:"last_active_at"`
	// TTYToken is a terminal session's own token for GET …/tty, sealed
	// (control/secrets, owned by the session id); nil for chat sessions.
	TTYToken []byte `json:"tty_token,omitempty"`
}

// LogEntry is one line of a session's timeline.
type LogEntry struct {
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"` // status, phase, message, sandbox, error
	Message string    `json:"message"`
}

// Timeline kinds the store writes itself.
const (
	LogStatus = "status"
	LogPhase  = "phase"
)

// CreateSession stores a new session. An empty ID is filled with NewID;
// CreatedAt, UpdatedAt and LastActiveAt are set to now. The agent must
// exist (ErrNotFound otherwise). The first status and phase go into the
// session's timeline.
func (s *Store) CreateSession(ctx context.Context, sess Session) (Session, error) {
	if sess.ID == "" {
		sess.ID = NewID()
	}
	now := s.now().UTC()
	sess.CreatedAt, sess.UpdatedAt, sess.LastActiveAt = now, now, now
	err := s.update(ctx, func(tx *bolt.Tx) error {
		if tx.Bucket(bucketAgents).Get([]byte(sess.AgentID)) == nil {
			return fmt.Errorf("agent %s: %w", sess.AgentID, ErrNotFound)
		}
		sessions := tx.Bucket(bucketSessions)
		if sessions.Get([]byte(sess.ID)) != nil {
			return fmt.Errorf("session id %s exists: %w", sess.ID, ErrConflict)
		}
		if err := putSessionIndexes(tx, sess); err != nil {
			return err
		}
		if err := logChanges(tx, Session{}, sess, now); err != nil {
			return err
		}
		return putJSON(sessions, []byte(sess.ID), sess)
	})
	if err != nil {
		return Session{}, fmt.Errorf("create session: %w", err)
	}
	return sess, nil
}

// putSessionIndexes adds sess to the creation-order indexes: all
// sessions, its agent's, its status's.
func putSessionIndexes(tx *bolt.Tx, sess Session) error {
	id := []byte(sess.ID)
	if err := tx.Bucket(bucketSessOrder).Put(posKey(sess.CreatedAt, sess.ID), id); err != nil {
		return err
	}
	if err := tx.Bucket(bucketSessAgent).Put(scopedKey(sess.AgentID, sess.CreatedAt, sess.ID), id); err != nil {
		return err
	}
	return tx.Bucket(bucketSessStatus).Put(scopedKey(sess.Status, sess.CreatedAt, sess.ID), id)
}

// GetSession returns the session with id, or an error wrapping ErrNotFound.
func (s *Store) GetSession(ctx context.Context, id string) (Session, error) {
	var sess Session
	err := s.view(ctx, func(tx *bolt.Tx) error {
		return getJSON(tx.Bucket(bucketSessions), []byte(id), &sess)
	})
	if err != nil {
		return Session{}, fmt.Errorf("session %s: %w", id, err)
	}
	return sess, nil
}

// ResolveSession finds a session by id or by a unique id prefix of at least
// 8 characters (the short id the CLI prints). It returns an error wrapping
// ErrNotFound, or an *AmbiguousError (which wraps ErrConflict) when a
// prefix matches several sessions. A prefix may leave out the dashes.
func (s *Store) ResolveSession(ctx context.Context, ref string) (Session, error) {
	var sess Session
	err := s.view(ctx, func(tx *bolt.Tx) error {
		sessions := tx.Bucket(bucketSessions)
		if err := getJSON(sessions, []byte(ref), &sess); !errors.Is(err, ErrNotFound) {
			return err
		}
		prefix, ok := idPrefix(ref)
		if !ok {
			return ErrNotFound
		}
		id, err := resolvePrefix(sessions, ref, prefix)
		if err != nil {
			return err
		}
		return getJSON(sessions, id, &sess)
	})
	if err != nil {
		return Session{}, fmt.Errorf("session %s: %w", ref, err)
	}
	return sess, nil
}

// UpdateSession applies fn to the session with id and stores the result
// with UpdatedAt set to now, keeping the status index current. A change of
// Status or Phase is added to the session's timeline in the same
// transaction. fn must not change ID, AgentID or CreatedAt (they are
// kept: the session's place in the listings is made of them); an error
// from fn aborts the update and is returned as is. fn may run more than
// once.
func (s *Store) UpdateSession(ctx context.Context, id string, fn func(*Session) error) (Session, error) {
	var out Session
	err := s.update(ctx, func(tx *bolt.Tx) error {
		var err error
		out, err = updateSession(tx, id, s.now().UTC(), fn)
		return err
	})
	if err != nil {
		return Session{}, fmt.Errorf("update session %s: %w", id, err)
	}
	return out, nil
}

func updateSession(tx *bolt.Tx, id string, now time.Time, fn func(*Session) error) (Session, error) {
	sessions := tx.Bucket(bucketSessions)
	var old Session
	if err := getJSON(sessions, []byte(id), &old); err != nil {
		return Session{}, err
	}
	sess := old
	if err := fn(&sess); err != nil {
		return Session{}, err
	}
	sess.ID, sess.AgentID, sess.CreatedAt = old.ID, old.AgentID, old.CreatedAt
	sess.UpdatedAt = now
	if sess.Status != old.Status {
		status := tx.Bucket(bucketSessStatus)
		if err := status.Delete(scopedKey(old.Status, old.CreatedAt, old.ID)); err != nil {
			return Session{}, err
		}
		if err := status.Put(scopedKey(sess.Status, sess.CreatedAt, sess.ID), []byte(sess.ID)); err != nil {
			return Session{}, err
		}
	}
	if err := logChanges(tx, old, sess, now); err != nil {
		return Session{}, err
	}
	return sess, putJSON(sessions, []byte(id), sess)
}

// logChanges appends timeline entries for the status and phase changes
// from old to sess.
func logChanges(tx *bolt.Tx, old, sess Session, now time.Time) error {
	if sess.Status != old.Status {
		msg := sess.Status
		if sess.FailureReason != "" && sess.FailureReason != old.FailureReason {
			msg += ": " + sess.FailureReason
		}
		if err := appendLog(tx, sess.ID, LogEntry{Time: now, Kind: LogStatus, Message: msg}); err != nil {
			return err
		}
	}
	if sess.Phase != old.Phase && sess.Phase != "" {
		return appendLog(tx, sess.ID, LogEntry{Time: now, Kind: LogPhase, Message: sess.Phase})
	}
	return nil
}

// SessionFilter selects sessions for ListSessions.
type SessionFilter struct {
	Page
	AgentID string // "" for every agent
	Status  string // "" for every status
}

// ListSessions returns one page of sessions, newest first, and the cursor
// of the next page ("" on the last page). Filters use the agent and status
// indexes, so a page costs about Limit reads. A foreign cursor returns an
// error wrapping ErrInvalidCursor.
func (s *Store) ListSessions(ctx context.Context, f SessionFilter) ([]Session, string, error) {
	after, err := decodeCursor(f.Cursor)
	if err != nil {
		return nil, "", err
	}
	limit := f.limit()
	var out []Session
	next := ""
	err = s.view(ctx, func(tx *bolt.Tx) error {
		sessions := tx.Bucket(bucketSessions).Cursor()
		index, prefix := bucketSessOrder, []byte(nil)
		switch {
		case f.AgentID != "":
			index, prefix = bucketSessAgent, []byte(f.AgentID+"/")
		case f.Status != "":
			index, prefix = bucketSessStatus, []byte(f.Status+"/")
		}
		var last []byte // position of the last session in out
		return scanDesc(tx.Bucket(index).Cursor(), prefix, after, func(pos, id []byte) (bool, error) {
			if len(out) == limit {
				next = encodeCursor(last)
				return false, nil
			}
			var sess Session
			if err := getIndexed(sessions, "session", id, &sess); err != nil {
				return false, err
			}
			if (f.AgentID == "" || sess.AgentID == f.AgentID) && (f.Status == "" || sess.Status == f.Status) {
				out = append(out, sess)
				last = pos
			}
			return true, nil
		})
	})
	if err != nil {
		return nil, "", fmt.Errorf("list sessions: %w", err)
	}
	return out, next, nil
}

// SessionIDsByStatus returns the ids of every session with status, oldest
// first (for start-up recovery and reapers).
func (s *Store) SessionIDsByStatus(ctx context.Context, status string) ([]string, error) {
	var ids []string
	prefix := []byte(status + "/")
	err := s.view(ctx, func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketSessStatus).Cursor()
		for k, id := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, id = c.Next() {
			ids = append(ids, string(id))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s sessions: %w", status, err)
	}
	return ids, nil
}

// CountSessionsByStatus returns how many sessions have each status.
func (s *Store) CountSessionsByStatus(ctx context.Context) (map[string]int, error) {
	counts := map[string]int{}
	err := s.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSessStatus).ForEach(func(k, id []byte) error {
			status, ok := keyScope(k, id)
			if !ok {
				return fmt.Errorf("status index key %q for session %s is malformed", k, id)
			}
			counts[string(status)]++
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("count sessions: %w", err)
	}
	return counts, nil
}

// AppendLog adds an entry to the session's timeline. Time zero means now.
func (s *Store) AppendLog(ctx context.Context, sessionID string, e LogEntry) error {
	if e.Time.IsZero() {
		e.Time = s.now().UTC()
	}
	err := s.update(ctx, func(tx *bolt.Tx) error {
		if tx.Bucket(bucketSessions).Get([]byte(sessionID)) == nil {
			return ErrNotFound
		}
		return appendLog(tx, sessionID, e)
	})
	if err != nil {
		return fmt.Errorf("log session %s: %w", sessionID, err)
	}
	return nil
}

func appendLog(tx *bolt.Tx, sessionID string, e LogEntry) error {
	b, err := tx.Bucket(bucketTimeline).CreateBucketIfNotExists([]byte(sessionID))
	if err != nil {
		return err
	}
	n, err := b.NextSequence()
	if err != nil {
		return err
	}
	return putJSON(b, seqKey(int64(n)), e)
}

// ListLog returns the session's timeline, oldest first, at most the last
// limit entries (limit < 1: all).
func (s *Store) ListLog(ctx context.Context, sessionID string, limit int) ([]LogEntry, error) {
	var out []LogEntry
	err := s.view(ctx, func(tx *bolt.Tx) error {
		if tx.Bucket(bucketSessions).Get([]byte(sessionID)) == nil {
			return ErrNotFound
		}
		b := tx.Bucket(bucketTimeline).Bucket([]byte(sessionID))
		if b == nil {
			return nil
		}
		c := b.Cursor()
		k, v := c.Last()
		for ; k != nil && (limit < 1 || len(out) < limit); k, v = c.Prev() {
			var e LogEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("decode log entry: %w", err)
			}
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("log of session %s: %w", sessionID, err)
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}

func seqKey(n int64) []byte {
	k := make([]byte, 8)
	binary.BigEndian.PutUint64(k, uint64(n))
	return k
}
