package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

// openTest opens a store in a fresh temporary directory and checks its
// consistency when the test ends.
func openTest(t testing.TB) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), FileName), Options{})
	require.NoError(t, err)
	t.Cleanup(func() {
		assert.NoError(t, s.Check())
		assert.NoError(t, s.Close())
	})
	return s
}

func mustAgent(t testing.TB, s *Store, name string) Agent {
	t.Helper()
	a, err := s.CreateAgent(context.Background(), Agent{Name: name, HarnessID: "lap", Model: "mock/echo", Branch: "main"})
	require.NoError(t, err)
	return a
}

func mustSession(t testing.TB, s *Store, agentID, status string) Session {
	t.Helper()
	sess, err := s.CreateSession(context.Background(), Session{AgentID: agentID, Status: status, Phase: "queued"})
	require.NoError(t, err)
	return sess
}

func TestOpenSecondProcessFailsWithErrLocked(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), FileName)
	s, err := Open(path, Options{})
	require.NoError(t, err)
	defer s.Close()

	// bbolt takes an flock on the file, which a second open in the same
	// process contends for just as a second lapd would.
	_, err = Open(path, Options{})
	require.ErrorIs(t, err, ErrLocked)
	assert.Contains(t, err.Error(), "another lapd")
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), FileName)
	s, err := Open(path, Options{})
	require.NoError(t, err)
	mustAgent(t, s, "kept")
	require.NoError(t, s.Close())

	db, err := bolt.Open(path, 0o600, nil)
	require.NoError(t, err)
	require.NoError(t, db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchemaVersion, []byte(fmt.Sprint(SchemaVersion+1)))
	}))
	require.NoError(t, db.Close())

	_, err = Open(path, Options{})
	require.ErrorContains(t, err, "newer than this lapd")
}

func TestReopenKeepsEverything(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), FileName)
	ctx := context.Background()
	s, err := Open(path, Options{})
	require.NoError(t, err)
	a := mustAgent(t, s, "durable")
	sess := mustSession(t, s, a.ID, "ready")
	m, err := s.AppendMessage(ctx, Message{SessionID: sess.ID, Role: "user", Status: MessageCompleted, Data: json.RawMessage(`{"x":1}`)})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	require.ErrorIs(t, s.Close(), nil, "Close is idempotent")

	s, err = Open(path, Options{})
	require.NoError(t, err)
	defer s.Close()
	got, err := s.GetAgent(ctx, a.ID)
	require.NoError(t, err)
	assert.Equal(t, a.Name, got.Name)
	msgs, err := s.ListMessages(ctx, sess.ID, 0, 0)
	require.NoError(t, err)
	require.Len(t, msgs, 1)
	assert.Equal(t, m.ID, msgs[0].ID)
	assert.JSONEq(t, `{"x":1}`, string(msgs[0].Data))
}

func TestWritesAfterCloseFail(t *testing.T) {
	t.Parallel()
	s, err := Open(filepath.Join(t.TempDir(), FileName), Options{})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	_, err = s.CreateAgent(context.Background(), Agent{Name: "late"})
	require.ErrorIs(t, err, ErrClosed)
	_, err = s.GetAgent(context.Background(), "x")
	require.ErrorIs(t, err, ErrClosed)
}

func TestAgents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t)
	a := mustAgent(t, s, "my-sdk-agent")
	assert.Len(t, a.ID, 36)
	assert.EqualValues(t, 1, a.Generation)

	_, err := s.CreateAgent(ctx, Agent{Name: "my-sdk-agent"})
	require.ErrorIs(t, err, ErrConflict, "a name is unique")

	for _, ref := range []string{a.ID, "my-sdk-agent", a.ID[:8], a.ID[:13]} {
		got, err := s.ResolveAgent(ctx, ref)
		require.NoError(t, err, "ResolveAgent(%q)", ref)
		assert.Equal(t, a.ID, got.ID, "ResolveAgent(%q)", ref)
	}
	for _, ref := range []string{"nope", "0000000000", a.ID[:7]} {
		_, err := s.ResolveAgent(ctx, ref)
		require.ErrorIs(t, err, ErrNotFound, "ResolveAgent(%q)", ref)
	}

	b := mustAgent(t, s, "other")
	_, err = s.UpdateAgent(ctx, a.ID, func(x *Agent) error { x.Name = "other"; return nil })
	require.ErrorIs(t, err, ErrConflict, "rename onto a taken name")
	up, err := s.UpdateAgent(ctx, a.ID, func(x *Agent) error { x.Name = "renamed"; x.Generation++; return nil })
	require.NoError(t, err)
	assert.EqualValues(t, 2, up.Generation)
	_, err = s.ResolveAgent(ctx, "my-sdk-agent")
	require.ErrorIs(t, err, ErrNotFound, "the old name is freed")
	stop := errors.New("stop")
	_, err = s.UpdateAgent(ctx, a.ID, func(*Agent) error { return stop })
	require.ErrorIs(t, err, stop)

	require.NoError(t, s.DeleteAgent(ctx, b.ID))
	require.ErrorIs(t, s.DeleteAgent(ctx, b.ID), ErrNotFound)
	mustAgent(t, s, "other") // the name is free again
}

func TestListAgentsPagesNewestFirst(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t)
	var want []string
	for i := range 7 {
		a := mustAgent(t, s, fmt.Sprintf("agent-%d", i))
		want = append([]string{a.Name}, want...)
	}
	var got []string
	cursor := ""
	for pages := 0; ; pages++ {
		require.Less(t, pages, 10, "paging must end")
		page, next, err := s.ListAgents(ctx, AgentFilter{Page: Page{Limit: 3, Cursor: cursor}})
		require.NoError(t, err)
		for _, a := range page {
			got = append(got, a.Name)
		}
		if next == "" {
			break
		}
		cursor = next
	}
	assert.Equal(t, want, got)

	found, _, err := s.ListAgents(ctx, AgentFilter{Search: "AGENT-3"})
	require.NoError(t, err)
	require.Len(t, found, 1)
	assert.Equal(t, "agent-3", found[0].Name)

	for _, bad := range []string{"garbage!", "djE6bm90LWEtdXVpZA"} {
		_, _, err = s.ListAgents(ctx, AgentFilter{Page: Page{Cursor: bad}})
		require.ErrorIs(t, err, ErrInvalidCursor, "cursor %q", bad)
	}
}

func TestConcurrentCreatesKeepNamesUnique(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t)
	const names, tries = 50, 4
	var mu sync.Mutex
	created := map[string]int{}
	var wg sync.WaitGroup
	for i := range names * tries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("agent-%d", i%names)
			_, err := s.CreateAgent(ctx, Agent{Name: name})
			if err != nil {
				assert.ErrorIs(t, err, ErrConflict)
				return
			}
			mu.Lock()
			created[name]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	assert.Len(t, created, names)
	for name, n := range created {
		assert.Equal(t, 1, n, "agent %s created %d times", name, n)
	}
	all, err := s.AllAgents(ctx)
	require.NoError(t, err)
	assert.Len(t, all, names)
}

func TestSessions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t)
	a := mustAgent(t, s, "a")
	b := mustAgent(t, s, "b")

	_, err := s.CreateSession(ctx, Session{AgentID: "missing", Status: "creating"})
	require.ErrorIs(t, err, ErrNotFound)

	s1 := mustSession(t, s, a.ID, "creating")
	s2 := mustSession(t, s, a.ID, "creating")
	s3 := mustSession(t, s, b.ID, "creating")

	up, err := s.UpdateSession(ctx, s1.ID, func(x *Session) error {
		x.Status, x.Phase, x.SandboxID = "ready", "ready", "sb-1"
		return nil
	})
	require.NoError(t, err)
	assert.Equal(t, "ready", up.Status)
	_, err = s.UpdateSession(ctx, s3.ID, func(x *Session) error { x.Status, x.FailureReason = "failed", "clone failed"; return nil })
	require.NoError(t, err)

	ids := func(list []Session) []string {
		var out []string
		for _, x := range list {
			out = append(out, x.ID)
		}
		return out
	}
	tests := []struct {
		name   string
		filter SessionFilter
		want   []string
	}{
		{"all", SessionFilter{}, []string{s3.ID, s2.ID, s1.ID}},
		{"by agent", SessionFilter{AgentID: a.ID}, []string{s2.ID, s1.ID}},
		{"by status", SessionFilter{Status: "creating"}, []string{s2.ID}},
		{"by agent and status", SessionFilter{AgentID: a.ID, Status: "ready"}, []string{s1.ID}},
		{"paged", SessionFilter{Page: Page{Limit: 1}}, []string{s3.ID}},
	}
	for _, tt := range tests {
		got, _, err := s.ListSessions(ctx, tt.filter)
		require.NoError(t, err, tt.name)
		assert.Equal(t, tt.want, ids(got), tt.name)
	}
	_, next, err := s.ListSessions(ctx, SessionFilter{AgentID: a.ID, Page: Page{Limit: 1}})
	require.NoError(t, err)
	rest, next, err := s.ListSessions(ctx, SessionFilter{AgentID: a.ID, Page: Page{Limit: 1, Cursor: next}})
	require.NoError(t, err)
	assert.Equal(t, []string{s1.ID}, ids(rest))
	assert.Empty(t, next)

	counts, err := s.CountSessionsByStatus(ctx)
	require.NoError(t, err)
	assert.Equal(t, map[string]int{"creating": 1, "ready": 1, "failed": 1}, counts)
	creating, err := s.SessionIDsByStatus(ctx, "creating")
	require.NoError(t, err)
	assert.Equal(t, []string{s2.ID}, creating)

	// Ids are random: the short id of sessions made together names one.
	got, err := s.ResolveSession(ctx, s1.ID[:8])
	require.NoError(t, err)
	assert.Equal(t, s1.ID, got.ID)
	got, err = s.ResolveSession(ctx, s1.ID)
	require.NoError(t, err)
	assert.Equal(t, "sb-1", got.SandboxID)

	require.NoError(t, s.AppendLog(ctx, s1.ID, LogEntry{Kind: "sandbox", Message: "claimed sb-1"}))
	log, err := s.ListLog(ctx, s1.ID, 0)
	require.NoError(t, err)
	var lines []string
	for _, e := range log {
		lines = append(lines, e.Kind+" "+e.Message)
	}
	assert.Equal(t, []string{"status creating", "phase queued", "status ready", "phase ready", "sandbox claimed sb-1"}, lines)
	last, err := s.ListLog(ctx, s1.ID, 2)
	require.NoError(t, err)
	assert.Equal(t, log[3:], last)
	_, err = s.ListLog(ctx, "missing", 0)
	require.ErrorIs(t, err, ErrNotFound)

	failedLog, err := s.ListLog(ctx, s3.ID, 0)
	require.NoError(t, err)
	assert.Equal(t, "failed: clone failed", failedLog[len(failedLog)-1].Message)
}

func TestMessageLog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t)
	a := mustAgent(t, s, "a")
	sess := mustSession(t, s, a.ID, "ready")

	_, err := s.AppendMessage(ctx, Message{SessionID: "missing", Role: "user"})
	require.ErrorIs(t, err, ErrNotFound)

	const writers, each = 20, 10
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				_, err := s.AppendMessage(ctx, Message{SessionID: sess.ID, Role: "user", Status: MessageCompleted})
				assert.NoError(t, err)
			}
		}()
	}
	wg.Wait()
	msgs, err := s.ListMessages(ctx, sess.ID, 0, 0)
	require.NoError(t, err)
	require.Len(t, msgs, writers*each)
	for i, m := range msgs {
		assert.EqualValues(t, i+1, m.Seq, "seqs are dense and ordered")
	}
	page, err := s.ListMessages(ctx, sess.ID, 195, 3)
	require.NoError(t, err)
	require.Len(t, page, 3)
	assert.EqualValues(t, 196, page[0].Seq)

	user, err := s.AppendMessage(ctx, Message{SessionID: sess.ID, Role: "user", Status: MessagePending})
	require.NoError(t, err)
	u, asst, err := s.FinishTurn(ctx, TurnResult{
		SessionID: sess.ID, UserSeq: user.Seq, UserStatus: MessageCompleted,
		Assistant: &Message{Role: "assistant", Status: MessageCompleted, Data: json.RawMessage(`{"info":{}}`)},
	})
	require.NoError(t, err)
	assert.Equal(t, MessageCompleted, u.Status)
	assert.Equal(t, user.Seq+1, asst.Seq)
	after, err := s.GetSession(ctx, sess.ID)
	require.NoError(t, err)
	assert.True(t, after.LastActiveAt.After(sess.LastActiveAt) || after.LastActiveAt.Equal(sess.LastActiveAt))

	_, _, err = s.FinishTurn(ctx, TurnResult{SessionID: sess.ID, UserSeq: 9999, UserStatus: MessageFailed,
		Assistant: &Message{Role: "assistant"}})
	require.ErrorIs(t, err, ErrNotFound)
	n, err := s.ListMessages(ctx, sess.ID, asst.Seq, 0)
	require.NoError(t, err)
	assert.Empty(t, n, "a failed FinishTurn appends nothing")
}

func TestFailOpenMessagesAfterCrash(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), FileName)
	s, err := Open(path, Options{})
	require.NoError(t, err)
	a := mustAgent(t, s, "a")
	sess := mustSession(t, s, a.ID, "ready")
	done, err := s.AppendMessage(ctx, Message{SessionID: sess.ID, Role: "user", Status: MessagePending})
	require.NoError(t, err)
	_, _, err = s.FinishTurn(ctx, TurnResult{SessionID: sess.ID, UserSeq: done.Seq, UserStatus: MessageCompleted})
	require.NoError(t, err)
	pending, err := s.AppendMessage(ctx, Message{SessionID: sess.ID, Role: "user", Status: MessagePending})
	require.NoError(t, err)
	running, err := s.AppendMessage(ctx, Message{SessionID: sess.ID, Role: "assistant", Status: MessageRunning})
	require.NoError(t, err)
	// No Close: the process "dies" holding the file; bbolt's lock goes
	// with the file descriptor, so release it the way the kernel would.
	require.NoError(t, s.db.Close())

	s, err = Open(path, Options{})
	require.NoError(t, err)
	defer s.Close()
	failed, err := s.FailOpenMessages(ctx, MessageError{Name: "Interrupted", Message: "lapd stopped"})
	require.NoError(t, err)
	require.Len(t, failed, 2)
	assert.Equal(t, []int64{pending.Seq, running.Seq}, []int64{failed[0].Seq, failed[1].Seq})
	msgs, err := s.ListMessages(ctx, sess.ID, 0, 0)
	require.NoError(t, err)
	require.Len(t, msgs, 3, "nothing lost, nothing duplicated")
	assert.Equal(t, MessageCompleted, msgs[0].Status)
	for _, m := range msgs[1:] {
		assert.Equal(t, MessageFailed, m.Status)
		assert.Equal(t, "Interrupted", m.Error.Name)
	}
	again, err := s.FailOpenMessages(ctx, MessageError{Name: "Interrupted"})
	require.NoError(t, err)
	assert.Empty(t, again)
}

func TestClaimWarmSandboxIsAtomic(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t)
	a := mustAgent(t, s, "a")
	const warm = 10
	for range warm {
		_, err := s.PutSandbox(ctx, Sandbox{AgentID: a.ID, Generation: 1, Role: "warm", State: SandboxWarm})
		require.NoError(t, err)
	}
	_, err := s.PutSandbox(ctx, Sandbox{AgentID: a.ID, Generation: 0, Role: "warm", State: SandboxWarm})
	require.NoError(t, err)

	var mu sync.Mutex
	claimed := map[string]string{}
	var wg sync.WaitGroup
	for i := range 3 * warm {
		wg.Add(1)
		go func() {
			defer wg.Done()
			session := fmt.Sprint("session-", i)
			sb, err := s.ClaimWarmSandbox(ctx, a.ID, 1, session)
			if err != nil {
				assert.ErrorIs(t, err, ErrNotFound)
				return
			}
			assert.Equal(t, SandboxClaimed, sb.State)
			assert.Equal(t, session, sb.SessionID)
			mu.Lock()
			defer mu.Unlock()
			_, dup := claimed[sb.ID]
			assert.False(t, dup, "sandbox %s claimed twice", sb.ID)
			claimed[sb.ID] = session
		}()
	}
	wg.Wait()
	assert.Len(t, claimed, warm, "every warm sandbox of generation 1 claimed exactly once")

	old, err := s.ListSandboxes(ctx, SandboxFilter{AgentID: a.ID, States: []string{SandboxWarm}})
	require.NoError(t, err)
	require.Len(t, old, 1, "the old generation is not handed out")
	assert.EqualValues(t, 0, old[0].Generation)

	sb, err := s.UpdateSandbox(ctx, old[0].ID, func(x *Sandbox) error { x.State = SandboxDestroyed; return nil })
	require.NoError(t, err)
	assert.False(t, sb.Live())
	_, err = s.ClaimWarmSandbox(ctx, a.ID, 0, "late")
	require.ErrorIs(t, err, ErrNotFound, "a destroyed sandbox leaves the pool")
}

func TestUsageAndBudget(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t)
	limit := 0.05
	a, err := s.CreateAgent(ctx, Agent{Name: "a", MaxBudgetUSD: &limit})
	require.NoError(t, err)
	sess := mustSession(t, s, a.ID, "ready")

	require.NoError(t, s.AddUsage(ctx, a.ID, sess.ID, Usage{InputTokens: 100, OutputTokens: 20, CostUSD: 0.03, Requests: 1}))
	require.NoError(t, s.AddUsage(ctx, a.ID, "", Usage{InputTokens: 1, CostUSD: 0.01, Requests: 1}))
	require.ErrorIs(t, s.AddUsage(ctx, a.ID, "missing", Usage{CostUSD: 1}), ErrNotFound)

	gotA, err := s.GetAgent(ctx, a.ID)
	require.NoError(t, err)
	assert.Equal(t, Usage{InputTokens: 101, OutputTokens: 20, CostUSD: 0.04, Requests: 2}, gotA.Usage)
	gotS, err := s.GetSession(ctx, sess.ID)
	require.NoError(t, err)
	assert.Equal(t, Usage{InputTokens: 100, OutputTokens: 20, CostUSD: 0.03, Requests: 1}, gotS.Usage)

	b, err := s.Budget(ctx, a.ID, sess.ID)
	require.NoError(t, err)
	over, _ := b.Exceeded()
	assert.False(t, over)

	require.NoError(t, s.AddUsage(ctx, a.ID, sess.ID, Usage{CostUSD: 0.02}))
	b, err = s.Budget(ctx, a.ID, sess.ID)
	require.NoError(t, err)
	over, why := b.Exceeded()
	assert.True(t, over)
	assert.Contains(t, why, "agent budget of $0.05 is spent")
}

func TestFailedBatchMemberDoesNotSinkOthers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t)
	boom := errors.New("boom")
	var wg sync.WaitGroup
	errs := make([]error, 64)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.update(ctx, func(tx *bolt.Tx) error {
				if i%8 == 0 {
					// Write first, then fail: the write must not survive.
					if err := tx.Bucket(bucketMeta).Put([]byte(fmt.Sprint("bad-", i)), []byte("x")); err != nil {
						return err
					}
					return boom
				}
				if i%8 == 1 {
					panic("write panicked")
				}
				return tx.Bucket(bucketMeta).Put([]byte(fmt.Sprint("good-", i)), []byte("x"))
			})
		}()
	}
	wg.Wait()
	require.NoError(t, s.db.View(func(tx *bolt.Tx) error {
		for i, err := range errs {
			switch i % 8 {
			case 0:
				assert.ErrorIs(t, err, boom)
				assert.Nil(t, tx.Bucket(bucketMeta).Get([]byte(fmt.Sprint("bad-", i))))
			case 1:
				assert.ErrorContains(t, err, "panicked")
			default:
				assert.NoError(t, err)
				assert.NotNil(t, tx.Bucket(bucketMeta).Get([]byte(fmt.Sprint("good-", i))))
			}
		}
		return nil
	}))
}
