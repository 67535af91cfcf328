package store

import (
	"context"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// AddUsage adds u to the agent's usage and, when sessionID is not empty,
// to the session's, in one transaction. The LLM gateway calls it once per
// answered request with the tokens, cost and request count it measured.
// A missing agent or session returns an error wrapping ErrNotFound and
// changes nothing.
func (s *Store) AddUsage(ctx context.Context, agentID, sessionID string, u Usage) error {
	err := s.update(ctx, func(tx *bolt.Tx) error {
		agents := tx.Bucket(bucketAgents)
		var a Agent
		if err := getJSON(agents, []byte(agentID), &a); err != nil {
			return fmt.Errorf("agent %s: %w", agentID, err)
		}
		a.Usage = a.Usage.Add(u)
		if err := putJSON(agents, []byte(agentID), a); err != nil {
			return err
		}
		if sessionID == "" {
			return nil
		}
		sessions := tx.Bucket(bucketSessions)
		var sess Session
		if err := getJSON(sessions, []byte(sessionID), &sess); err != nil {
			return fmt.Errorf("session %s: %w", sessionID, err)
		}
		sess.Usage = sess.Usage.Add(u)
		return putJSON(sessions, []byte(sessionID), sess)
	})
	if err != nil {
		return fmt.Errorf("add usage: %w", err)
	}
	return nil
}

// Budget is what an agent and one of its sessions may still spend.
type Budget struct {
	AgentSpentUSD float64
	// AgentMaxUSD is the agent's max_budget_usd; nil means no limit.
	AgentMaxUSD     *float64
	SessionSpentUSD float64
	// SessionMaxUSD is the session's max_budget_usd; nil means no limit.
	SessionMaxUSD *float64
}

// Exceeded reports whether a limit is spent, and which one, as a sentence
// the user can read in the turn's error.
func (b Budget) Exceeded() (bool, string) {
	if b.SessionMaxUSD != nil && b.SessionSpentUSD >= *b.SessionMaxUSD {
		return true, fmt.Sprintf("session budget of $%.2f is spent ($%.4f used)", *b.SessionMaxUSD, b.SessionSpentUSD)
	}
	if b.AgentMaxUSD != nil && b.AgentSpentUSD >= *b.AgentMaxUSD {
		return true, fmt.Sprintf("agent budget of $%.2f is spent ($%.4f used)", *b.AgentMaxUSD, b.AgentSpentUSD)
	}
	return false, ""
}

// Budget returns the budgets and amounts spent of the agent and (when
// sessionID is not empty) the session, read in one transaction.
func (s *Store) Budget(ctx context.Context, agentID, sessionID string) (Budget, error) {
	var b Budget
	err := s.view(ctx, func(tx *bolt.Tx) error {
		var a Agent
		if err := getJSON(tx.Bucket(bucketAgents), []byte(agentID), &a); err != nil {
			return fmt.Errorf("agent %s: %w", agentID, err)
		}
		b = Budget{AgentSpentUSD: a.Usage.CostUSD, AgentMaxUSD: a.MaxBudgetUSD}
		if sessionID == "" {
			return nil
		}
		var sess Session
		if err := getJSON(tx.Bucket(bucketSessions), []byte(sessionID), &sess); err != nil {
			return fmt.Errorf("session %s: %w", sessionID, err)
		}
		b.SessionSpentUSD, b.SessionMaxUSD = sess.Usage.CostUSD, sess.MaxBudgetUSD
		return nil
	})
	if err != nil {
		return Budget{}, fmt.Errorf("budget: %w", err)
	}
	return b, nil
}
