package local

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/sandboxes"
)

// lapHarness answers as the LiteLLM Agent Platform's claude-agent-sdk
// harness does: its identity on GET /, 404 on GET /session (it has no
// list route), and status for every other route.
func lapHarness(t *testing.T, status int) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/":
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"harness":"claude-agent-sdk","version":"0.0.4","port":4096}`))
		default:
			http.Error(w, "no route", status)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestExternalReadyAsLAPJudges(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	f := newFixture(t)
	// LAP's harness answers 404 on GET /session: ready, as LAP's platform
	// takes any answer below 500.
	ext := NewExternal(lapHarness(t, http.StatusNotFound).URL, time.Minute)
	sb, err := ext.Provision(ctx, f.spec())
	require.NoError(t, err)
	assert.True(t, sb.Running)
	_, err = ext.Resume(ctx, sb)
	require.NoError(t, err)
}

func TestExternalNeverReadyFailsFast(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	// Nothing listens: a port that was just free.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	refused := "http://" + l.Addr().String()
	require.NoError(t, l.Close())

	for _, tt := range []struct {
		name, url, want string
	}{
		{"refused", refused, "connection refused"},
		{"wants a token", lapHarness(t, http.StatusUnauthorized).URL, "without a token"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// The ready timeout is long; the wait must not use it up.
			ext := NewExternal(tt.url, 5*time.Minute)
			ext.refusedFor = 300 * time.Millisecond
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			start := time.Now()
			_, err := ext.Provision(ctx, f.spec())
			require.ErrorIs(t, err, sandboxes.ErrNotReady)
			assert.Contains(t, err.Error(), tt.want)
			assert.Contains(t, err.Error(), "LOCAL_SANDBOX_URL")
			assert.Less(t, time.Since(start), 20*time.Second, "gave up only at the context's end")
		})
	}
}
