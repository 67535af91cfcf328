package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Sandbox states (ARCHITECTURE §3): provisioning → warm → claimed →
// suspended → claimed … → destroyed, or failed.
const (
	SandboxProvisioning = "provisioning"
	SandboxWarm         = "warm"
	SandboxClaimed      = "claimed"
	SandboxSuspended    = "suspended"
	SandboxDestroyed    = "destroyed"
	SandboxFailed       = "failed"
)

// Sandbox is the control plane's record of one sandbox.
type Sandbox struct {
	ID         string `json:"id"`
	AgentID    string `json:"agent_id"`
	Generation int64  `json:"generation"`
	// Role is why it was provisioned: "warm" or "session".
	Role  string `json:"role"`
	State string `json:"state"`
	// SessionID is the session it serves; "" while warm.
	SessionID string `json:"session_id,omitempty"`
	// HarnessToken is the sandbox's HARNESS_AUTH_TOKEN, kept so lapd can
	// reach the harness again after a restart.
	HarnessToken string `json:"harness_token,omitempty"`
	// HarnessSessionID is the harness session opened ahead on a warm
	// sandbox, handed to the session that claims it so that a warm claim
	// needs no harness round trip that writes.
	HarnessSessionID string `json:"harness_session_id,omitempty"`
	// Backend is the backend's own record (a sandboxes.Sandbox as JSON),
	// stored as returned and handed back on every backend call.
	Backend   json.RawMessage `json:"backend,omitempty"`
	Error     string          `json:"error,omitempty"`
	CreatedAt time.Time       `json:"created_at"`
	UpdatedAt time.Time       `json:"updated_at"`
}

// Live reports whether the sandbox may still run a harness: its LLM
// gateway token is honoured only while this is true.
func (sb Sandbox) Live() bool {
	switch sb.State {
	case SandboxProvisioning, SandboxWarm, SandboxClaimed, SandboxSuspended:
		return true
	}
	return false
}

// PutSandbox creates or replaces the sandbox record sb.ID (an empty ID is
// filled with NewID), keeping CreatedAt of an existing record and setting
// UpdatedAt to now. It keeps the warm index in step with State.
func (s *Store) PutSandbox(ctx context.Context, sb Sandbox) (Sandbox, error) {
	if sb.ID == "" {
		sb.ID = NewID()
	}
	var out Sandbox
	err := s.update(ctx, func(tx *bolt.Tx) error {
		var err error
		out, err = putSandbox(tx, sb, s.now().UTC())
		return err
	})
	if err != nil {
		return Sandbox{}, fmt.Errorf("put sandbox %s: %w", sb.ID, err)
	}
	return out, nil
}

func putSandbox(tx *bolt.Tx, sb Sandbox, now time.Time) (Sandbox, error) {
	b := tx.Bucket(bucketSandboxes)
	var old Sandbox
	switch err := getJSON(b, []byte(sb.ID), &old); {
	case err == nil:
		sb.CreatedAt = old.CreatedAt
	case err == ErrNotFound:
		sb.CreatedAt = now
	default:
		return Sandbox{}, err
	}
	sb.UpdatedAt = now
	warm := tx.Bucket(bucketWarm)
	if old.State == SandboxWarm && (sb.State != SandboxWarm || old.AgentID != sb.AgentID) {
		if err := warm.Delete(scopedKey(old.AgentID, old.CreatedAt, sb.ID)); err != nil {
			return Sandbox{}, err
		}
	}
	if sb.State == SandboxWarm {
		if err := warm.Put(scopedKey(sb.AgentID, sb.CreatedAt, sb.ID), []byte(sb.ID)); err != nil {
			return Sandbox{}, err
		}
	}
	return sb, putJSON(b, []byte(sb.ID), sb)
}

// GetSandbox returns the sandbox record with id, or an error wrapping
// ErrNotFound. The LLM gateway calls it for every request: Live says
// whether the token's sandbox may still call, SessionID and AgentID whom
// to charge.
func (s *Store) GetSandbox(ctx context.Context, id string) (Sandbox, error) {
	var sb Sandbox
	err := s.view(ctx, func(tx *bolt.Tx) error {
		return getJSON(tx.Bucket(bucketSandboxes), []byte(id), &sb)
	})
	if err != nil {
		return Sandbox{}, fmt.Errorf("sandbox %s: %w", id, err)
	}
	return sb, nil
}

// UpdateSandbox applies fn to the sandbox record with id and stores it (as
// PutSandbox does). An error from fn aborts the update. fn may run more
// than once.
func (s *Store) UpdateSandbox(ctx context.Context, id string, fn func(*Sandbox) error) (Sandbox, error) {
	var out Sandbox
	err := s.update(ctx, func(tx *bolt.Tx) error {
		var sb Sandbox
		if err := getJSON(tx.Bucket(bucketSandboxes), []byte(id), &sb); err != nil {
			return err
		}
		if err := fn(&sb); err != nil {
			return err
		}
		sb.ID = id
		var err error
		out, err = putSandbox(tx, sb, s.now().UTC())
		return err
	})
	if err != nil {
		return Sandbox{}, fmt.Errorf("update sandbox %s: %w", id, err)
	}
	return out, nil
}

// ClaimWarmSandbox takes one warm sandbox of the agent at the given
// generation for sessionID, in one transaction: it becomes claimed and
// leaves the warm pool, so two sessions can never claim the same one.
// The oldest warm sandbox goes first. With none available it returns an
// error wrapping ErrNotFound.
func (s *Store) ClaimWarmSandbox(ctx context.Context, agentID string, generation int64, sessionID string) (Sandbox, error) {
	var out Sandbox
	err := s.update(ctx, func(tx *bolt.Tx) error {
		prefix := []byte(agentID + "/")
		sandboxes := tx.Bucket(bucketSandboxes)
		c := tx.Bucket(bucketWarm).Cursor()
		for k, id := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, id = c.Next() {
			var sb Sandbox
			if err := getIndexed(sandboxes.Cursor(), "sandbox", id, &sb); err != nil {
				return err
			}
			if sb.AgentID != agentID || sb.State != SandboxWarm || sb.Generation != generation {
				continue
			}
			sb.State, sb.SessionID = SandboxClaimed, sessionID
			var err error
			out, err = putSandbox(tx, sb, s.now().UTC())
			return err
		}
		return ErrNotFound
	})
	if err != nil {
		return Sandbox{}, fmt.Errorf("claim warm sandbox of agent %s: %w", agentID, err)
	}
	return out, nil
}

// SandboxFilter selects sandboxes for ListSandboxes.
type SandboxFilter struct {
	AgentID string   // "" for every agent
	States  []string // empty for every state
}

// ListSandboxes returns the sandbox records matching f, oldest first (by
// CreatedAt, then id, as the listings order). It reads every record: the
// control plane calls it at start-up and when an agent is deleted, not
// per request.
func (s *Store) ListSandboxes(ctx context.Context, f SandboxFilter) ([]Sandbox, error) {
	var out []Sandbox
	err := s.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSandboxes).ForEach(func(k, v []byte) error {
			var sb Sandbox
			if err := json.Unmarshal(v, &sb); err != nil {
				return fmt.Errorf("decode sandbox %s: %w", k, err)
			}
			if (f.AgentID == "" || sb.AgentID == f.AgentID) && (len(f.States) == 0 || slices.Contains(f.States, sb.State)) {
				out = append(out, sb)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	slices.SortFunc(out, func(a, b Sandbox) int { return comparePos(a.CreatedAt, a.ID, b.CreatedAt, b.ID) })
	return out, nil
}
