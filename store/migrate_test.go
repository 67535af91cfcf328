package store

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

// schema1 is what a schema-1 store held, written the way schema-1 code
// wrote it: UUIDv7 ids, record buckets keyed by id, and index keys
// "scope/id" with empty values. The bucket names are spelled out so that
// this stays the old layout whatever the code's names become.
type schema1 struct {
	agents    []Agent
	sessions  []Session
	sandboxes []Sandbox
	messages  []Message // all pending: they are in the open_messages index
}

// newSchema1 makes 4 agents, 14 sessions (over 2 agents and 3 statuses)
// and 4 sandboxes, one millisecond apart, in creation order.
func newSchema1(t *testing.T, base time.Time) schema1 {
	t.Helper()
	var old schema1
	tick := 0
	next := func() (string, time.Time) {
		tick++
		return uuid.Must(uuid.NewV7()).String(), base.Add(time.Duration(tick) * time.Millisecond)
	}
	for i := range 4 {
		id, at := next()
		old.agents = append(old.agents, Agent{ID: id, Name: fmt.Sprintf("old-%d", i), HarnessID: "lap", Model: "mock/echo",
			Generation: 1, CreatedAt: at, UpdatedAt: at})
	}
	statuses := []string{"ready", "idle", "dead"}
	for i := range 14 {
		id, at := next()
		old.sessions = append(old.sessions, Session{ID: id, AgentID: old.agents[i%2].ID, Status: statuses[i%3],
			Generation: 1, CreatedAt: at, UpdatedAt: at, LastActiveAt: at})
	}
	for i, state := range []string{SandboxWarm, SandboxClaimed, SandboxWarm, SandboxWarm} {
		id, at := next()
		sb := Sandbox{ID: id, AgentID: old.agents[0].ID, Generation: 1, Role: "warm", State: state, CreatedAt: at, UpdatedAt: at}
		if state == SandboxClaimed {
			sb.SessionID = old.sessions[i].ID
		}
		old.sandboxes = append(old.sandboxes, sb)
	}
	at := base.Add(time.Hour)
	old.messages = []Message{{SessionID: old.sessions[0].ID, Seq: 1, ID: uuid.Must(uuid.NewV7()).String(), Role: "user",
		Status: MessagePending, Data: json.RawMessage(`{"info":{}}`), CreatedAt: at, UpdatedAt: at}}
	return old
}

// write puts old into a new file at path as schema-1 code would have.
func (old schema1) write(t *testing.T, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	require.NoError(t, err)
	defer db.Close()
	require.NoError(t, db.Update(func(tx *bolt.Tx) error {
		b := map[string]*bolt.Bucket{}
		for _, name := range []string{"meta", "agents", "agent_names", "sessions", "sessions_by_agent",
			"sessions_by_status", "sandboxes", "warm", "messages", "open_messages", "timeline"} {
			var err error
			if b[name], err = tx.CreateBucket([]byte(name)); err != nil {
				return err
			}
		}
		put := func(bucket, key string, v any) error {
			raw, err := json.Marshal(v)
			if err != nil {
				return err
			}
			return b[bucket].Put([]byte(key), raw)
		}
		if err := b["meta"].Put([]byte("schema_version"), []byte("1")); err != nil {
			return err
		}
		for _, a := range old.agents {
			if err := put("agents", a.ID, a); err != nil {
				return err
			}
			if err := b["agent_names"].Put([]byte(a.Name), []byte(a.ID)); err != nil {
				return err
			}
		}
		for _, sess := range old.sessions {
			if err := put("sessions", sess.ID, sess); err != nil {
				return err
			}
			if err := b["sessions_by_agent"].Put([]byte(sess.AgentID+"/"+sess.ID), nil); err != nil {
				return err
			}
			if err := b["sessions_by_status"].Put([]byte(sess.Status+"/"+sess.ID), nil); err != nil {
				return err
			}
		}
		for _, sb := range old.sandboxes {
			if err := put("sandboxes", sb.ID, sb); err != nil {
				return err
			}
			if sb.State == SandboxWarm {
				if err := b["warm"].Put([]byte(sb.AgentID+"/"+sb.ID), nil); err != nil {
					return err
				}
			}
		}
		for _, m := range old.messages {
			log, err := b["messages"].CreateBucketIfNotExists([]byte(m.SessionID))
			if err != nil {
				return err
			}
			if err := log.SetSequence(uint64(m.Seq)); err != nil {
				return err
			}
			raw, err := json.Marshal(m)
			if err != nil {
				return err
			}
			if err := log.Put(seqKey(m.Seq), raw); err != nil {
				return err
			}
			if err := b["open_messages"].Put([]byte(fmt.Sprintf("%s/%d", m.SessionID, m.Seq)), nil); err != nil {
				return err
			}
		}
		return nil
	}))
}

func schemaVersion(t *testing.T, db *bolt.DB) string {
	t.Helper()
	var v string
	require.NoError(t, db.View(func(tx *bolt.Tx) error {
		v = string(tx.Bucket([]byte("meta")).Get([]byte("schema_version")))
		return nil
	}))
	return v
}

func TestMigrateFromSchema1(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), FileName)
	base := time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)
	old := newSchema1(t, base)
	old.write(t, path)

	// The clock is pinned after the old records, so what is made after
	// the migration is newer than all of them.
	later := stepClock(base.Add(24*time.Hour), time.Millisecond)
	s, err := Open(path, Options{Now: later})
	require.NoError(t, err)
	defer func() {
		assert.NoError(t, s.Check())
		assert.NoError(t, s.Close())
	}()
	assert.Equal(t, fmt.Sprint(SchemaVersion), schemaVersion(t, s.db))

	// Agents: newest first over pages, oldest first from AllAgents, and
	// a new agent (random id) goes on top.
	wantAgents := reversed(agentIDs(old.agents))
	got := walk(t, 3, func(p Page) ([]string, string, error) {
		list, next, err := s.ListAgents(ctx, AgentFilter{Page: p})
		return agentIDs(list), next, err
	})
	assert.Equal(t, wantAgents, got)
	fresh := mustAgent(t, s, "new")
	first, _, err := s.ListAgents(ctx, AgentFilter{Page: Page{Limit: 1}})
	require.NoError(t, err)
	assert.Equal(t, []string{fresh.ID}, agentIDs(first))
	all, err := s.AllAgents(ctx)
	require.NoError(t, err)
	assert.Equal(t, append(agentIDs(old.agents), fresh.ID), agentIDs(all))
	byName, err := s.ResolveAgent(ctx, "old-2")
	require.NoError(t, err, "names still resolve")
	assert.Equal(t, old.agents[2].ID, byName.ID)

	// Sessions: every listing, over pages, in creation order.
	filters := []struct {
		name string
		f    SessionFilter
		keep func(Session) bool
	}{
		{"all", SessionFilter{}, func(Session) bool { return true }},
		{"by agent", SessionFilter{AgentID: old.agents[1].ID}, func(x Session) bool { return x.AgentID == old.agents[1].ID }},
		{"by status", SessionFilter{Status: "idle"}, func(x Session) bool { return x.Status == "idle" }},
		{"by agent and status", SessionFilter{AgentID: old.agents[0].ID, Status: "dead"},
			func(x Session) bool { return x.AgentID == old.agents[0].ID && x.Status == "dead" }},
	}
	for _, fl := range filters {
		var want []string
		for _, x := range old.sessions {
			if fl.keep(x) {
				want = append(want, x.ID)
			}
		}
		require.NotEmpty(t, want, fl.name)
		got := walk(t, 2, func(p Page) ([]string, string, error) {
			f := fl.f
			f.Page = p
			list, next, err := s.ListSessions(ctx, f)
			return sessionIDs(list), next, err
		})
		assert.Equal(t, reversed(want), got, fl.name)
	}
	counts, err := s.CountSessionsByStatus(ctx)
	require.NoError(t, err)
	assert.Equal(t, map[string]int{"ready": 5, "idle": 5, "dead": 4}, counts, "no schema-1 index key is left behind")
	idle, err := s.SessionIDsByStatus(ctx, "idle")
	require.NoError(t, err)
	assert.Equal(t, []string{old.sessions[1].ID, old.sessions[4].ID, old.sessions[7].ID, old.sessions[10].ID, old.sessions[13].ID}, idle)

	// A status change moves a migrated session between status indexes.
	_, err = s.UpdateSession(ctx, old.sessions[1].ID, func(x *Session) error { x.Status = "dead"; return nil })
	require.NoError(t, err)
	idle, err = s.SessionIDsByStatus(ctx, "idle")
	require.NoError(t, err)
	assert.NotContains(t, idle, old.sessions[1].ID)

	// The warm pool hands out the oldest warm sandbox first.
	for _, want := range []Sandbox{old.sandboxes[0], old.sandboxes[2], old.sandboxes[3]} {
		sb, err := s.ClaimWarmSandbox(ctx, old.agents[0].ID, 1, "s")
		require.NoError(t, err)
		assert.Equal(t, want.ID, sb.ID)
	}
	_, err = s.ClaimWarmSandbox(ctx, old.agents[0].ID, 1, "s")
	require.ErrorIs(t, err, ErrNotFound)
	sbs, err := s.ListSandboxes(ctx, SandboxFilter{})
	require.NoError(t, err)
	require.Len(t, sbs, len(old.sandboxes))
	for i, sb := range sbs {
		assert.Equal(t, old.sandboxes[i].ID, sb.ID, "sandboxes oldest first")
	}

	// The message log and its open-turn index are untouched.
	failed, err := s.FailOpenMessages(ctx, MessageError{Name: "Interrupted"})
	require.NoError(t, err)
	require.Len(t, failed, 1)
	assert.Equal(t, old.messages[0].ID, failed[0].ID)

	// Reopening does not migrate again and lists the same.
	require.NoError(t, s.Close())
	s, err = Open(path, Options{Now: later})
	require.NoError(t, err)
	again, _, err := s.ListAgents(ctx, AgentFilter{})
	require.NoError(t, err)
	assert.Equal(t, append([]string{fresh.ID}, wantAgents...), agentIDs(again))
}

// TestFailedMigrationLeavesTheOldFile: a record the migration cannot read
// stops Open with a clear error, and the file keeps its old version and
// indexes, so nothing is half-migrated.
func TestFailedMigrationLeavesTheOldFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), FileName)
	old := newSchema1(t, time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC))
	old.write(t, path)
	db, err := bolt.Open(path, 0o600, nil)
	require.NoError(t, err)
	require.NoError(t, db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("sessions")).Put([]byte(old.sessions[3].ID), []byte("{not json"))
	}))
	require.NoError(t, db.Close())

	_, err = Open(path, Options{})
	require.ErrorContains(t, err, "migrate to schema 2")
	require.ErrorContains(t, err, old.sessions[3].ID)

	db, err = bolt.Open(path, 0o600, nil)
	require.NoError(t, err)
	defer db.Close()
	assert.Equal(t, "1", schemaVersion(t, db))
	require.NoError(t, db.View(func(tx *bolt.Tx) error {
		assert.Nil(t, tx.Bucket([]byte("agents_by_created")), "no new index was kept")
		assert.NotNil(t, tx.Bucket([]byte("sessions_by_agent")).Get([]byte(old.sessions[0].AgentID+"/"+old.sessions[0].ID)),
			"the old index is intact")
		return nil
	}))
}
