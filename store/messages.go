package store

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Message statuses in the log. A message is open while pending or running;
// FailOpenMessages closes what a crash left open.
const (
	MessagePending   = "pending"
	MessageRunning   = "running"
	MessageCompleted = "completed"
	MessageFailed    = "failed"
)

// Message is one entry of a session's durable log.
type Message struct {
	SessionID string `json:"session_id"`
	// Seq is the position in the session's log: 1, 2, 3, … assigned by
	// AppendMessage and never reused.
	Seq    int64         `json:"seq"`
	ID     string        `json:"id"`
	Role   string        `json:"role"`
	Status string        `json:"status"`
	Error  *MessageError `json:"error,omitempty"`
	// Data is the message document ({info, parts} of the harness
	// protocol) as the control plane stored it; the store does not read it.
	Data      json.RawMessage `json:"data"`
	CreatedAt time.Time       `json:"created_at"`
	UpdatedAt time.Time       `json:"updated_at"`
}

// MessageError says why a message failed.
type MessageError struct {
	Name    string `json:"name"`
	Message string `json:"message"`
}

func isOpen(status string) bool { return status == MessagePending || status == MessageRunning }

func openKey(sessionID string, seq int64) []byte {
	return []byte(sessionID + "/" + strconv.FormatInt(seq, 10))
}

// AppendMessage adds m to the end of its session's log and returns it with
// Seq (and, if empty, ID) assigned and CreatedAt/UpdatedAt set to now. The
// session must exist (ErrNotFound otherwise).
func (s *Store) AppendMessage(ctx context.Context, m Message) (Message, error) {
	if m.ID == "" {
		m.ID = NewID()
	}
	var out Message
	err := s.update(ctx, func(tx *bolt.Tx) error {
		if tx.Bucket(bucketSessions).Get([]byte(m.SessionID)) == nil {
			return ErrNotFound
		}
		var err error
		out, err = appendMessage(tx, m, s.now().UTC())
		return err
	})
	if err != nil {
		return Message{}, fmt.Errorf("append message to session %s: %w", m.SessionID, err)
	}
	return out, nil
}

func appendMessage(tx *bolt.Tx, m Message, now time.Time) (Message, error) {
	b, err := tx.Bucket(bucketMessages).CreateBucketIfNotExists([]byte(m.SessionID))
	if err != nil {
		return Message{}, err
	}
	n, err := b.NextSequence()
	if err != nil {
		return Message{}, err
	}
	m.Seq = int64(n)
	m.CreatedAt, m.UpdatedAt = now, now
	if isOpen(m.Status) {
		if err := tx.Bucket(bucketOpenTurns).Put(openKey(m.SessionID, m.Seq), nil); err != nil {
			return Message{}, err
		}
	}
	return m, putJSON(b, seqKey(m.Seq), m)
}

// UpdateMessage applies fn to message seq of the session and stores the
// result with UpdatedAt set to now. fn must not change SessionID or Seq;
// an error from fn aborts the update. fn may run more than once.
func (s *Store) UpdateMessage(ctx context.Context, sessionID string, seq int64, fn func(*Message) error) (Message, error) {
	var out Message
	err := s.update(ctx, func(tx *bolt.Tx) error {
		var err error
		out, err = updateMessage(tx, sessionID, seq, s.now().UTC(), fn)
		return err
	})
	if err != nil {
		return Message{}, fmt.Errorf("update message %d of session %s: %w", seq, sessionID, err)
	}
	return out, nil
}

func updateMessage(tx *bolt.Tx, sessionID string, seq int64, now time.Time, fn func(*Message) error) (Message, error) {
	b := tx.Bucket(bucketMessages).Bucket([]byte(sessionID))
	if b == nil {
		return Message{}, ErrNotFound
	}
	var m Message
	if err := getJSON(b, seqKey(seq), &m); err != nil {
		return Message{}, err
	}
	wasOpen := isOpen(m.Status)
	if err := fn(&m); err != nil {
		return Message{}, err
	}
	m.SessionID, m.Seq, m.UpdatedAt = sessionID, seq, now
	if open := isOpen(m.Status); open != wasOpen {
		idx := tx.Bucket(bucketOpenTurns)
		var err error
		if open {
			err = idx.Put(openKey(sessionID, seq), nil)
		} else {
			err = idx.Delete(openKey(sessionID, seq))
		}
		if err != nil {
			return Message{}, err
		}
	}
	return m, putJSON(b, seqKey(seq), m)
}

// TurnResult is the outcome of one agent turn, written by FinishTurn.
type TurnResult struct {
	SessionID string
	// UserSeq is the user message the turn answered; it gets UserStatus
	// and UserError.
	UserSeq    int64
	UserStatus string
	UserError  *MessageError
	// Assistant, when set, is appended after the user message.
	Assistant *Message
}

// FinishTurn records a turn's outcome in one transaction: the user
// message's final status, the assistant message (if any) and the session's
// LastActiveAt. It returns the updated user message and the appended
// assistant message (zero if none).
func (s *Store) FinishTurn(ctx context.Context, r TurnResult) (user, assistant Message, err error) {
	err = s.update(ctx, func(tx *bolt.Tx) error {
		now := s.now().UTC()
		var err error
		user, err = updateMessage(tx, r.SessionID, r.UserSeq, now, func(m *Message) error {
			m.Status, m.Error = r.UserStatus, r.UserError
			return nil
		})
		if err != nil {
			return err
		}
		assistant = Message{}
		if r.Assistant != nil {
			a := *r.Assistant
			a.SessionID = r.SessionID
			if a.ID == "" {
				a.ID = NewID()
			}
			if assistant, err = appendMessage(tx, a, now); err != nil {
				return err
			}
		}
		_, err = updateSession(tx, r.SessionID, now, func(sess *Session) error {
			sess.LastActiveAt = now
			return nil
		})
		return err
	})
	if err != nil {
		return Message{}, Message{}, fmt.Errorf("finish turn of session %s: %w", r.SessionID, err)
	}
	return user, assistant, nil
}

// GetMessage returns message seq of the session.
func (s *Store) GetMessage(ctx context.Context, sessionID string, seq int64) (Message, error) {
	var m Message
	err := s.view(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMessages).Bucket([]byte(sessionID))
		if b == nil {
			return ErrNotFound
		}
		return getJSON(b, seqKey(seq), &m)
	})
	if err != nil {
		return Message{}, fmt.Errorf("message %d of session %s: %w", seq, sessionID, err)
	}
	return m, nil
}

// ListMessages returns the session's messages with Seq > afterSeq, oldest
// first, at most limit (limit < 1: all). An unknown session returns an
// error wrapping ErrNotFound; a session with no messages an empty slice.
func (s *Store) ListMessages(ctx context.Context, sessionID string, afterSeq int64, limit int) ([]Message, error) {
	out := []Message{}
	err := s.view(ctx, func(tx *bolt.Tx) error {
		if tx.Bucket(bucketSessions).Get([]byte(sessionID)) == nil {
			return ErrNotFound
		}
		b := tx.Bucket(bucketMessages).Bucket([]byte(sessionID))
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, v := c.Seek(seqKey(afterSeq + 1)); k != nil && (limit < 1 || len(out) < limit); k, v = c.Next() {
			var m Message
			if err := json.Unmarshal(v, &m); err != nil {
				return fmt.Errorf("decode message: %w", err)
			}
			out = append(out, m)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("messages of session %s: %w", sessionID, err)
	}
	return out, nil
}

// FailOpenMessages marks every pending or running message failed with
// the given error, and returns them as updated, oldest first. lapd calls
// it once at start-up, before serving: a turn that was running when lapd
// stopped can never finish, and must read as failed rather than vanish or
// hang.
func (s *Store) FailOpenMessages(ctx context.Context, cause MessageError) ([]Message, error) {
	var out []Message
	err := s.update(ctx, func(tx *bolt.Tx) error {
		out = nil
		now := s.now().UTC()
		var keys []string
		if err := tx.Bucket(bucketOpenTurns).ForEach(func(k, _ []byte) error {
			keys = append(keys, string(k))
			return nil
		}); err != nil {
			return err
		}
		for _, k := range keys {
			sessionID, seqText, _ := strings.Cut(k, "/")
			seq, err := strconv.ParseInt(seqText, 10, 64)
			if err != nil {
				return fmt.Errorf("open message index key %q: %w", k, err)
			}
			m, err := updateMessage(tx, sessionID, seq, now, func(m *Message) error {
				m.Status = MessageFailed
				e := cause
				m.Error = &e
				return nil
			})
			if err != nil {
				return fmt.Errorf("fail message %s: %w", k, err)
			}
			out = append(out, m)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("fail open messages: %w", err)
	}
	// The index is ordered by session id (random) and seq as text ("10"
	// before "9"); callers get the order the messages were written in.
	slices.SortFunc(out, func(a, b Message) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		if c := strings.Compare(a.SessionID, b.SessionID); c != 0 {
			return c
		}
		return cmp.Compare(a.Seq, b.Seq)
	})
	return out, nil
}
