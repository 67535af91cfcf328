package store

import (
	"cmp"
	"context"
	"encoding/base64"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestNewIDShortIDsDifferInABurst checks the property the CLI and the
// Knative names rely on: ids made at the same moment differ in their first
// 8 hex digits. A UUIDv7 burst shares them almost entirely; 1,000 random
// ids have a pair in common with probability ~1e-4 and two pairs ~1e-8, so
// "at most one shared pair" holds for random ids and fails for any scheme
// that puts the time first.
func TestNewIDShortIDsDifferInABurst(t *testing.T) {
	t.Parallel()
	const n = 1000
	seen := map[string]int{}
	start := time.Now()
	for range n {
		id := NewID()
		u, err := uuid.Parse(id)
		require.NoError(t, err)
		require.Equal(t, uuid.Version(4), u.Version(), "id %s", id)
		require.Equal(t, id, u.String(), "ids are the canonical lower-case form")
		seen[id[:8]]++
	}
	t.Logf("%d ids in %v", n, time.Since(start))
	shared := 0
	for _, k := range seen {
		shared += k * (k - 1) / 2
	}
	assert.LessOrEqual(t, shared, 1, "pairs of ids sharing their first 8 hex digits")
}

// TestAgentAndItsSessionShowDifferentShortIDs is the case that made ids
// random: an agent and the session opened right after it were both shown
// as the same 8 hex digits.
func TestAgentAndItsSessionShowDifferentShortIDs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t)
	a := mustAgent(t, s, "my-sdk-agent")
	sess := mustSession(t, s, a.ID, "creating")
	other := mustSession(t, s, a.ID, "creating")
	assert.NotEqual(t, a.ID[:8], sess.ID[:8])
	for _, want := range []Session{sess, other} {
		got, err := s.ResolveSession(ctx, want.ID[:8])
		require.NoError(t, err, "the short id names one session")
		assert.Equal(t, want.ID, got.ID)
	}
	// Ids that do share a prefix (given by a caller) are still told apart
	// by refusing the ambiguous prefix.
	for _, id := range []string{"abcdef01-0000-4000-8000-000000000001", "abcdef01-0000-4000-8000-000000000002"} {
		_, err := s.CreateSession(ctx, Session{ID: id, AgentID: a.ID, Status: "creating"})
		require.NoError(t, err)
	}
	_, err := s.ResolveSession(ctx, "abcdef01")
	require.ErrorIs(t, err, ErrConflict)
	var amb *AmbiguousError
	require.ErrorAs(t, err, &amb, "the error names the candidates")
	assert.Equal(t, &AmbiguousError{Prefix: "abcdef01", Matches: []string{
		"abcdef01-0000-4000-8000-000000000001", "abcdef01-0000-4000-8000-000000000002"}}, amb)
	got, err := s.ResolveSession(ctx, "abcdef01-0000-4000-8000-000000000002")
	require.NoError(t, err)
	assert.Equal(t, "abcdef01-0000-4000-8000-000000000002", got.ID)
	// Prefixes as users type them: without dashes, in upper case.
	for _, ref := range []string{"ABCDEF01-0000-4000-8000-000000000002", "abcdef01000040008000000000000002"} {
		got, err := s.ResolveSession(ctx, ref)
		require.NoError(t, err, ref)
		assert.Equal(t, "abcdef01-0000-4000-8000-000000000002", got.ID, ref)
	}
}

func TestAmbiguousPrefixListsABoundedNumberOfCandidates(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t)
	a := mustAgent(t, s, "crowd")
	for i := range MaxAmbiguousMatches + 2 {
		_, err := s.CreateSession(ctx, Session{ID: fmt.Sprintf("0badcafe-0000-4000-8000-%012d", i), AgentID: a.ID, Status: "ready"})
		require.NoError(t, err)
	}
	_, err := s.ResolveSession(ctx, "0badcafe")
	var amb *AmbiguousError
	require.ErrorAs(t, err, &amb)
	assert.Len(t, amb.Matches, MaxAmbiguousMatches)
	assert.True(t, amb.More)
	assert.Contains(t, err.Error(), "0badcafe is the start of more than 10 ids: 0badcafe-0000-4000-8000-000000000000, ")
}

func TestIDPrefix(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		ref, want string
		ok        bool
	}{
		{"0f21c021", "0f21c021", true},
		{"0F21C021A", "0f21c021-a", true},
		{"0f21c021a3b4c5d6", "0f21c021-a3b4-c5d6", true},
		{"0f21c021-a3b4-c5d6-e7f8-0123456789ab", "0f21c021-a3b4-c5d6-e7f8-0123456789ab", true},
		{"0f21c021a3b4c5d6e7f80123456789ab", "0f21c021-a3b4-c5d6-e7f8-0123456789ab", true},
		{"0f21c02", "", false},
		{"my-sdk-agent", "", false},
		{"0f21c021a3b4c5d6e7f80123456789abc", "", false},
	} {
		got, ok := idPrefix(c.ref)
		assert.Equal(t, c.ok, ok, c.ref)
		assert.Equal(t, c.want, got, c.ref)
	}
}

// stepClock returns a clock (for Options.Now) that starts at base and
// advances by step on every call; step 0 pins it.
func stepClock(base time.Time, step time.Duration) func() time.Time {
	var mu sync.Mutex
	next := base
	return func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		now := next
		next = next.Add(step)
		return now
	}
}

// newestFirst is the listing order: CreatedAt descending, then id
// descending for records made in the same nanosecond.
func newestFirst[T any](items []T, created func(T) time.Time, id func(T) string) []string {
	sorted := slices.Clone(items)
	slices.SortFunc(sorted, func(a, b T) int {
		if c := created(b).Compare(created(a)); c != 0 {
			return c
		}
		return strings.Compare(id(b), id(a))
	})
	ids := make([]string, len(sorted))
	for i, x := range sorted {
		ids[i] = id(x)
	}
	return ids
}

// walk pages through a listing with the given page size and returns the
// ids in the order listed.
func walk(t *testing.T, limit int, list func(Page) ([]string, string, error)) []string {
	t.Helper()
	var all []string
	cursor := ""
	for pages := 0; ; pages++ {
		require.Less(t, pages, 1000, "paging must end")
		ids, next, err := list(Page{Limit: limit, Cursor: cursor})
		require.NoError(t, err)
		require.LessOrEqual(t, len(ids), limit)
		all = append(all, ids...)
		if next == "" {
			return all
		}
		require.Len(t, ids, limit, "only the last page is short")
		cursor = next
	}
}

func agentIDs(list []Agent) []string {
	ids := make([]string, len(list))
	for i, a := range list {
		ids[i] = a.ID
	}
	return ids
}

func sessionIDs(list []Session) []string {
	ids := make([]string, len(list))
	for i, s := range list {
		ids[i] = s.ID
	}
	return ids
}

func TestListingsPageInCreationOrder(t *testing.T) {
	t.Parallel()
	base := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		clock func() time.Time
		// inOrder: the clock moves between creates, so the listing must
		// be exactly the reverse of creation order.
		inOrder bool
	}{
		{"all within one millisecond", stepClock(base, time.Microsecond), true},
		{"same nanosecond", stepClock(base, 0), false},
		{"real clock", time.Now, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			s, err := Open(filepath.Join(t.TempDir(), FileName), Options{Now: tt.clock})
			require.NoError(t, err)
			t.Cleanup(func() {
				assert.NoError(t, s.Check())
				assert.NoError(t, s.Close())
			})

			var agents []Agent
			for i := range 23 {
				agents = append(agents, mustAgent(t, s, fmt.Sprintf("agent-%02d", i)))
			}
			var sessions []Session
			statuses := []string{"ready", "idle"}
			for i := range 60 {
				sessions = append(sessions, mustSession(t, s, agents[i%3].ID, statuses[i%2]))
			}
			agentCreated := func(a Agent) time.Time { return a.CreatedAt }
			agentID := func(a Agent) string { return a.ID }
			sessCreated := func(x Session) time.Time { return x.CreatedAt }
			sessID := func(x Session) string { return x.ID }

			wantAgents := newestFirst(agents, agentCreated, agentID)
			if tt.inOrder {
				assert.Equal(t, reversed(agentIDs(agents)), wantAgents, "the clock moved, so creation order is CreatedAt order")
			}
			for _, limit := range []int{1, 7, 23, 50} {
				got := walk(t, limit, func(p Page) ([]string, string, error) {
					list, next, err := s.ListAgents(ctx, AgentFilter{Page: p})
					return agentIDs(list), next, err
				})
				assert.Equal(t, wantAgents, got, "agents, pages of %d", limit)
			}
			all, err := s.AllAgents(ctx)
			require.NoError(t, err)
			assert.Equal(t, reversed(wantAgents), agentIDs(all), "AllAgents is oldest first")

			filters := []struct {
				name string
				f    SessionFilter
				keep func(Session) bool
			}{
				{"all", SessionFilter{}, func(Session) bool { return true }},
				{"by agent", SessionFilter{AgentID: agents[1].ID}, func(x Session) bool { return x.AgentID == agents[1].ID }},
				{"by status", SessionFilter{Status: "idle"}, func(x Session) bool { return x.Status == "idle" }},
				{"by agent and status", SessionFilter{AgentID: agents[2].ID, Status: "ready"},
					func(x Session) bool { return x.AgentID == agents[2].ID && x.Status == "ready" }},
			}
			for _, fl := range filters {
				var kept []Session
				for _, x := range sessions {
					if fl.keep(x) {
						kept = append(kept, x)
					}
				}
				require.NotEmpty(t, kept, fl.name)
				want := newestFirst(kept, sessCreated, sessID)
				if tt.inOrder {
					assert.Equal(t, reversed(sessionIDs(kept)), want, fl.name)
				}
				for _, limit := range []int{1, 7, 100} {
					got := walk(t, limit, func(p Page) ([]string, string, error) {
						f := fl.f
						f.Page = p
						list, next, err := s.ListSessions(ctx, f)
						return sessionIDs(list), next, err
					})
					assert.Equal(t, want, got, "sessions %s, pages of %d", fl.name, limit)
				}
			}

			ready, err := s.SessionIDsByStatus(ctx, "ready")
			require.NoError(t, err)
			var wantReady []Session
			for _, x := range sessions {
				if x.Status == "ready" {
					wantReady = append(wantReady, x)
				}
			}
			assert.Equal(t, reversed(newestFirst(wantReady, sessCreated, sessID)), ready, "SessionIDsByStatus is oldest first")
		})
	}
}

// TestPagingSurvivesChangesBetweenPages ends an agent's sessions page by
// page, as deleting an agent does: each change moves the session to
// another status index, and the cursor, a position rather than an offset,
// still visits every session exactly once.
func TestPagingSurvivesChangesBetweenPages(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := Open(filepath.Join(t.TempDir(), FileName), Options{Now: stepClock(time.Now().UTC(), 0)})
	require.NoError(t, err)
	defer s.Close()
	a := mustAgent(t, s, "a")
	var made []Session
	for range 25 {
		made = append(made, mustSession(t, s, a.ID, "ready"))
	}
	var seen []string
	cursor := ""
	for pages := 0; ; pages++ {
		require.Less(t, pages, 100)
		page, next, err := s.ListSessions(ctx, SessionFilter{AgentID: a.ID, Page: Page{Limit: 4, Cursor: cursor}})
		require.NoError(t, err)
		for _, x := range page {
			seen = append(seen, x.ID)
			up, err := s.UpdateSession(ctx, x.ID, func(x *Session) error {
				x.Status = "dead"
				x.CreatedAt = time.Time{} // ignored: the place in listings is kept
				return nil
			})
			require.NoError(t, err)
			assert.Equal(t, x.CreatedAt, up.CreatedAt)
		}
		if next == "" {
			break
		}
		cursor = next
	}
	assert.Equal(t, newestFirst(made, func(x Session) time.Time { return x.CreatedAt }, func(x Session) string { return x.ID }), seen)
	dead, _, err := s.ListSessions(ctx, SessionFilter{Status: "dead", Page: Page{Limit: MaxLimit}})
	require.NoError(t, err)
	assert.Equal(t, seen, sessionIDs(dead))
	counts, err := s.CountSessionsByStatus(ctx)
	require.NoError(t, err)
	assert.Equal(t, map[string]int{"dead": 25}, counts)
}

func TestInvalidCursors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t)
	a := mustAgent(t, s, "a")
	mustSession(t, s, a.ID, "ready")
	b64 := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	tests := []struct {
		name   string
		cursor string
	}{
		{"not base64", "garbage!"},
		{"v1 cursor from before the upgrade", b64("v1:" + uuid.Must(uuid.NewV7()).String())},
		{"unknown version", b64("v3:12345678" + NewID())},
		{"no position", b64("v2:")},
		{"time without id", b64("v2:12345678")},
		{"padded base64", base64.StdEncoding.EncodeToString([]byte("v2:12345678xy"))},
	}
	for _, tt := range tests {
		_, _, err := s.ListAgents(ctx, AgentFilter{Page: Page{Cursor: tt.cursor}})
		require.ErrorIs(t, err, ErrInvalidCursor, "agents: %s", tt.name)
		_, _, err = s.ListSessions(ctx, SessionFilter{Page: Page{Cursor: tt.cursor}})
		require.ErrorIs(t, err, ErrInvalidCursor, "sessions: %s", tt.name)
		_, _, err = s.ListSessions(ctx, SessionFilter{AgentID: a.ID, Page: Page{Cursor: tt.cursor}})
		require.ErrorIs(t, err, ErrInvalidCursor, "sessions of an agent: %s", tt.name)
	}
}

func TestPositionsSortByTimeThenID(t *testing.T) {
	t.Parallel()
	at := func(s string) time.Time {
		tm, err := time.Parse(time.RFC3339Nano, s)
		require.NoError(t, err)
		return tm
	}
	// Ascending: before 1970, the zero time and far times must sort too.
	ordered := []struct {
		created time.Time
		id      string
	}{
		{time.Time{}, "a"},
		{at("1600-01-01T00:00:00Z"), "a"},
		{at("1969-12-31T23:59:59.999999999Z"), "a"},
		{at("1970-01-01T00:00:00Z"), "a"},
		{at("2026-11-28T12:00:00.000000001Z"), "0"},
		{at("2026-11-28T12:00:00.000000001Z"), "f"},
		{at("2026-11-28T12:00:00.000000002Z"), "0"},
		{at("3000-01-01T00:00:00Z"), "a"},
	}
	for i := 1; i < len(ordered); i++ {
		lo, hi := ordered[i-1], ordered[i]
		if createdNanos(lo.created) == createdNanos(hi.created) && lo.id == hi.id {
			continue // both clamped to the same end of the range
		}
		assert.Negative(t, cmp.Compare(string(posKey(lo.created, lo.id)), string(posKey(hi.created, hi.id))), "key %d < key %d", i-1, i)
		assert.Negative(t, comparePos(lo.created, lo.id, hi.created, hi.id), "comparePos %d < %d", i-1, i)
	}
	k := scopedKey("ready", ordered[4].created, "some-id")
	scope, ok := keyScope(k, []byte("some-id"))
	require.True(t, ok)
	assert.Equal(t, "ready", string(scope))
}

func reversed(ids []string) []string {
	out := slices.Clone(ids)
	slices.Reverse(out)
	return out
}
