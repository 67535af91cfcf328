// Package scale measures the built lapd on a large store: 10,000 agents
// and 100,000 sessions, made by a generator that writes through the
// store's own API with many writers at once (so the group committer packs
// them into large transactions). The test checks that lapd starts on such
// a store and pages through it correctly; the benchmark reports listing
// times and lapd's resident memory.
package scale

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/api"
	"lap.dev/lap/e2e/platform"
	"lap.dev/lap/store"
)

func TestMain(m *testing.M) {
	os.Exit(platform.Main(m))
}

// statuses of generated sessions: sessions pile up idle, failed or
// ended; none is creating or ready (those would start sandboxes).
var statuses = []string{api.SessionIdle, api.SessionDead, api.SessionDead, api.SessionIdle, api.SessionFailed}

// fill writes agents agents and sessions sessions (spread over the
// agents, round robin) into the store file at path, through the store's
// API with 512 writers at once. It returns the agents' ids.
func fill(tb testing.TB, path string, agents, sessions int) []string {
	tb.Helper()
	st, err := store.Open(path, store.Options{})
	require.NoError(tb, err)
	defer st.Close()
	ctx := context.Background()
	ids := make([]string, agents)
	run := func(n int, fn func(i int) error) {
		var wg sync.WaitGroup
		errs := make(chan error, 1)
		sem := make(chan struct{}, 512)
		for i := range n {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if err := fn(i); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		require.NoError(tb, <-errs)
	}
	run(agents, func(i int) error {
		a, err := st.CreateAgent(ctx, store.Agent{Name: fmt.Sprintf("agent-%05d", i), HarnessID: "lap", Model: "mock/echo",
			Prompt: "You are agent " + fmt.Sprint(i) + ".", Branch: "main"})
		ids[i] = a.ID
		return err
	})
	run(sessions, func(i int) error {
		_, err := st.CreateSession(ctx, store.Session{AgentID: ids[i%agents], Status: statuses[i%len(statuses)],
			Title: fmt.Sprintf("session %d", i), IdleTimeoutMS: 15 * 60 * 1000})
		return err
	})
	return ids
}

// bigLapd fills a data dir and starts lapd on it.
func bigLapd(tb testing.TB, agents, sessions int) (*platform.Platform, *platform.Lapd, []string, time.Duration) {
	p := platform.New(tb, map[string]string{"WARM_POOL_SIZE": "0"})
	require.NoError(tb, os.MkdirAll(p.DataDir(), 0o711))
	ids := fill(tb, filepath.Join(p.DataDir(), store.FileName), agents, sessions)
	began := time.Now()
	l := p.Start()
	return p, l, ids, time.Since(began)
}

// TestLargeStorePagesCorrectly starts lapd on 1,000 agents and 10,000
// sessions and walks every listing to its end: each record once, newest
// first, the filters exact.
func TestLargeStorePagesCorrectly(t *testing.T) {
	t.Parallel()
	const agents, sessions = 1000, 10_000
	_, l, ids, _ := bigLapd(t, agents, sessions)
	defer l.Stop()

	walk := func(query string) []api.Session {
		var all []api.Session
		cursor := ""
		for page := 0; ; page++ {
			require.Less(t, page, sessions, "the listing does not end")
			var list api.List[api.Session]
			status, body := l.Do(http.MethodGet, api.BasePath+"/sessions?limit=1000"+query+"&cursor="+cursor, nil, &list)
			require.Equal(t, http.StatusOK, status, "%s", body)
			all = append(all, list.Data...)
			if list.NextCursor == "" {
				return all
			}
			cursor = list.NextCursor
		}
	}
	all := walk("")
	require.Len(t, all, sessions)
	seen := map[string]bool{}
	for i, s := range all {
		assert.False(t, seen[s.ID], "session %s listed twice", s.ID)
		seen[s.ID] = true
		if i > 0 {
			assert.False(t, s.CreatedAt.After(all[i-1].CreatedAt), "newest first")
		}
	}
	idle := walk("&status=idle")
	assert.Len(t, idle, sessions*2/len(statuses))
	for _, s := range idle {
		assert.Equal(t, api.SessionIdle, s.Status)
	}
	mine := walk("&agent_id=" + ids[7])
	assert.Len(t, mine, sessions/agents)
	for _, s := range mine {
		assert.Equal(t, ids[7], s.AgentID)
	}
	var agentsPage api.List[api.Agent]
	status, _ := l.Do(http.MethodGet, api.BasePath+"/agents?limit=1000", nil, &agentsPage)
	require.Equal(t, http.StatusOK, status)
	assert.Len(t, agentsPage.Data, agents)
	if agentsPage.NextCursor != "" {
		var rest api.List[api.Agent]
		status, _ := l.Do(http.MethodGet, api.BasePath+"/agents?limit=1000&cursor="+agentsPage.NextCursor, nil, &rest)
		require.Equal(t, http.StatusOK, status)
		assert.Empty(t, rest.Data, "every agent on the first page")
	}
}

// BenchmarkLargeStore starts lapd on 10,000 agents and 100,000 sessions
// and reports the time lapd takes to start on it; the median time of
// listing pages (50 items, the API's default) over loopback — the first
// page of all sessions, one agent's sessions, one status's, the agents,
// and a page 1,000 pages deep; and lapd's resident memory, in all and its
// anonymous part (heap, stacks; the rest is pages of the bbolt file mapped
// in): after those first pages, and again after the walk 1,000 pages deep
// (50,000 sessions read).
func BenchmarkLargeStore(b *testing.B) {
	const agents, sessions, samples = 10_000, 100_000, 200
	figures := map[string][]float64{}
	for range b.N {
		_, l, ids, startup := bigLapd(b, agents, sessions)
		figures["startup-ms"] = append(figures["startup-ms"], ms(startup))
		page := func(name, path string) {
			var took []float64
			for range samples {
				began := time.Now()
				status, body := l.Do(http.MethodGet, api.BasePath+path, nil, nil)
				took = append(took, ms(time.Since(began)))
				require.Equal(b, http.StatusOK, status, "%s", body)
			}
			figures[name+"-p50-ms"] = append(figures[name+"-p50-ms"], median(took))
		}
		page("sessions-first", "/sessions")
		page("sessions-agent", "/sessions?agent_id="+ids[4242])
		page("sessions-status", "/sessions?status=failed")
		page("agents-first", "/agents")
		rss, anon := memory(b, l.PID())
		figures["lapd-rss-MB"] = append(figures["lapd-rss-MB"], rss)
		figures["lapd-anon-MB"] = append(figures["lapd-anon-MB"], anon)

		deep := ""
		for range 1000 {
			var list api.List[api.Session]
			status, body := l.Do(http.MethodGet, api.BasePath+"/sessions?cursor="+deep, nil, &list)
			require.Equal(b, http.StatusOK, status, "%s", body)
			deep = list.NextCursor
		}
		page("sessions-deep", "/sessions?cursor="+deep)
		rss, anon = memory(b, l.PID())
		figures["walked-rss-MB"] = append(figures["walked-rss-MB"], rss)
		figures["walked-anon-MB"] = append(figures["walked-anon-MB"], anon)
		l.Stop()
	}
	for name, xs := range figures {
		b.ReportMetric(median(xs), name)
	}
	b.ReportMetric(0, "ns/op")
}

// memory returns the resident memory of pid in MB, in all and anonymous.
func memory(tb testing.TB, pid int) (rss, anon float64) {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(tb, err)
	for _, line := range strings.Split(string(b), "\n") {
		var kb float64
		switch {
		case strings.HasPrefix(line, "VmRSS:"):
			fmt.Sscanf(strings.TrimPrefix(line, "VmRSS:"), "%f", &kb)
			rss = kb / 1024
		case strings.HasPrefix(line, "RssAnon:"):
			fmt.Sscanf(strings.TrimPrefix(line, "RssAnon:"), "%f", &kb)
			anon = kb / 1024
		}
	}
	return rss, anon
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
