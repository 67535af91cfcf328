package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Usage counts LLM use. Sessions and agents each carry one; the LLM
// gateway adds to both with AddUsage.
type Usage struct {
	InputTokens  int64   `json:"input_tokens"`
	OutputTokens int64   `json:"output_tokens"`
	CostUSD      float64 `json:"cost_usd"`
	Requests     int64   `json:"requests"`
}

// Add returns u plus v.
func (u Usage) Add(v Usage) Usage {
	return Usage{
		InputTokens:  u.InputTokens + v.InputTokens,
		OutputTokens: u.OutputTokens + v.OutputTokens,
		CostUSD:      u.CostUSD + v.CostUSD,
		Requests:     u.Requests + v.Requests,
	}
}

// Agent is a stored agent.
type Agent struct {
	ID        string `json:"id"`
	Name      string `json:"name"` // unique
	HarnessID string `json:"harness_id"`
	Model     string `json:"model"`
	Prompt    string `json:"prompt"`
	RepoURL   string `json:"repo_url"`
	Branch    string `json:"branch"`
	// EnvNames are the names of the agent's env_vars, sorted; the API shows
	// these and never the values.
	EnvNames []string `json:"env_names,omitempty"`
	// SealedEnv holds the env_vars values encrypted by the control plane;
	// the store never sees them in the clear.
	SealedEnv    []byte    `json:"sealed_env,omitempty"`
	WarmPoolSize *int      `json:"warm_pool_size,omitempty"`
	MaxBudgetUSD *float64  `json:"max_budget_usd,omitempty"`
	Generation   int64     `json:"generation"`
	Usage        Usage     `json:"usage"`
	CreatedAt    time.Time `json:"created_at"`
	UpdatedAt    time.Time `json:"updated_at"`
}

// CreateAgent stores a new agent. An empty ID is filled with NewID; a
// Generation below 1 becomes 1; CreatedAt and UpdatedAt are set to now.
// A taken name returns an error wrapping ErrConflict, a taken id too.
func (s *Store) CreateAgent(ctx context.Context, a Agent) (Agent, error) {
	if a.ID == "" {
		a.ID = NewID()
	}
	if a.Generation < 1 {
		a.Generation = 1
	}
	now := s.now().UTC()
	a.CreatedAt, a.UpdatedAt = now, now
	err := s.update(ctx, func(tx *bolt.Tx) error {
		names := tx.Bucket(bucketAgentNames)
		if names.Get([]byte(a.Name)) != nil {
			return fmt.Errorf("agent name %q is taken: %w", a.Name, ErrConflict)
		}
		agents := tx.Bucket(bucketAgents)
		if agents.Get([]byte(a.ID)) != nil {
			return fmt.Errorf("agent id %s exists: %w", a.ID, ErrConflict)
		}
		if err := names.Put([]byte(a.Name), []byte(a.ID)); err != nil {
			return err
		}
		if err := putAgentIndexes(tx, a); err != nil {
			return err
		}
		return putJSON(agents, []byte(a.ID), a)
	})
	if err != nil {
		return Agent{}, fmt.Errorf("create agent %s: %w", a.Name, err)
	}
	return a, nil
}

// putAgentIndexes adds a to the creation-order index.
func putAgentIndexes(tx *bolt.Tx, a Agent) error {
	return tx.Bucket(bucketAgentOrder).Put(posKey(a.CreatedAt, a.ID), []byte(a.ID))
}

// GetAgent returns the agent with id, or an error wrapping ErrNotFound.
func (s *Store) GetAgent(ctx context.Context, id string) (Agent, error) {
	var a Agent
	err := s.view(ctx, func(tx *bolt.Tx) error {
		return getJSON(tx.Bucket(bucketAgents), []byte(id), &a)
	})
	if err != nil {
		return Agent{}, fmt.Errorf("get agent %s: %w", id, err)
	}
	return a, nil
}

// ResolveAgent finds an agent by id, by name, or by a unique id prefix of
// at least 8 characters, in that order. It returns an error wrapping
// ErrNotFound, or an *AmbiguousError (which wraps ErrConflict) when a
// prefix matches several agents. A prefix may leave out the dashes.
func (s *Store) ResolveAgent(ctx context.Context, ref string) (Agent, error) {
	var a Agent
	err := s.view(ctx, func(tx *bolt.Tx) error {
		agents := tx.Bucket(bucketAgents)
		if err := getJSON(agents, []byte(ref), &a); !errors.Is(err, ErrNotFound) {
			return err
		}
		if id := tx.Bucket(bucketAgentNames).Get([]byte(ref)); id != nil {
			return getJSON(agents, id, &a)
		}
		prefix, ok := idPrefix(ref)
		if !ok {
			return ErrNotFound
		}
		id, err := resolvePrefix(agents, ref, prefix)
		if err != nil {
			return err
		}
		return getJSON(agents, id, &a)
	})
	if err != nil {
		return Agent{}, fmt.Errorf("agent %s: %w", ref, err)
	}
	return a, nil
}

// UpdateAgent applies fn to the agent with id and stores the result, with
// UpdatedAt set to now. fn may rename the agent (a taken name returns
// ErrConflict) but not change its id or CreatedAt (both are kept: the
// agent's place in listings is made of them). An error from fn aborts the
// update and is returned as is. fn may run more than once.
func (s *Store) UpdateAgent(ctx context.Context, id string, fn func(*Agent) error) (Agent, error) {
	var out Agent
	err := s.update(ctx, func(tx *bolt.Tx) error {
		agents := tx.Bucket(bucketAgents)
		var old Agent
		if err := getJSON(agents, []byte(id), &old); err != nil {
			return err
		}
		a := old
		oldName := a.Name
		if err := fn(&a); err != nil {
			return err
		}
		a.ID, a.CreatedAt = id, old.CreatedAt
		a.UpdatedAt = s.now().UTC()
		if a.Name != oldName {
			names := tx.Bucket(bucketAgentNames)
			if names.Get([]byte(a.Name)) != nil {
				return fmt.Errorf("agent name %q is taken: %w", a.Name, ErrConflict)
			}
			if err := names.Delete([]byte(oldName)); err != nil {
				return err
			}
			if err := names.Put([]byte(a.Name), []byte(id)); err != nil {
				return err
			}
		}
		out = a
		return putJSON(agents, []byte(id), a)
	})
	if err != nil {
		return Agent{}, fmt.Errorf("update agent %s: %w", id, err)
	}
	return out, nil
}

// DeleteAgent removes the agent and frees its name. Its sessions, their
// logs and its sandbox records stay (the control plane ends them first).
// Deleting a missing agent returns an error wrapping ErrNotFound.
func (s *Store) DeleteAgent(ctx context.Context, id string) error {
	err := s.update(ctx, func(tx *bolt.Tx) error {
		agents := tx.Bucket(bucketAgents)
		var a Agent
		if err := getJSON(agents, []byte(id), &a); err != nil {
			return err
		}
		if err := tx.Bucket(bucketAgentNames).Delete([]byte(a.Name)); err != nil {
			return err
		}
		if err := tx.Bucket(bucketAgentOrder).Delete(posKey(a.CreatedAt, a.ID)); err != nil {
			return err
		}
		return agents.Delete([]byte(id))
	})
	if err != nil {
		return fmt.Errorf("delete agent %s: %w", id, err)
	}
	return nil
}

// AgentFilter selects agents for ListAgents.
type AgentFilter struct {
	Page
	// Search keeps agents whose name contains it (case-insensitive) or
	// whose id starts with it.
	Search string
}

// ListAgents returns one page of agents, newest first, and the cursor of
// the next page ("" on the last page). A cursor not issued by ListAgents
// returns an error wrapping ErrInvalidCursor.
func (s *Store) ListAgents(ctx context.Context, f AgentFilter) ([]Agent, string, error) {
	after, err := decodeCursor(f.Cursor)
	if err != nil {
		return nil, "", err
	}
	limit := f.limit()
	search := strings.ToLower(f.Search)
	var out []Agent
	next := ""
	err = s.view(ctx, func(tx *bolt.Tx) error {
		agents := tx.Bucket(bucketAgents).Cursor()
		var last []byte // position of the last agent in out
		return scanDesc(tx.Bucket(bucketAgentOrder).Cursor(), nil, after, func(pos, id []byte) (bool, error) {
			if len(out) == limit {
				next = encodeCursor(last)
				return false, nil
			}
			var a Agent
			if err := getIndexed(agents, "agent", id, &a); err != nil {
				return false, err
			}
			if search == "" || strings.Contains(strings.ToLower(a.Name), search) || strings.HasPrefix(a.ID, search) {
				out = append(out, a)
				last = pos
			}
			return true, nil
		})
	})
	if err != nil {
		return nil, "", fmt.Errorf("list agents: %w", err)
	}
	return out, next, nil
}

// AllAgents returns every agent, oldest first (for start-up work).
func (s *Store) AllAgents(ctx context.Context) ([]Agent, error) {
	var out []Agent
	err := s.view(ctx, func(tx *bolt.Tx) error {
		agents := tx.Bucket(bucketAgents).Cursor()
		return tx.Bucket(bucketAgentOrder).ForEach(func(_, id []byte) error {
			var a Agent
			if err := getIndexed(agents, "agent", id, &a); err != nil {
				return err
			}
			out = append(out, a)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	return out, nil
}
