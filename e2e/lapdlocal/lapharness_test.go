package lapdlocal

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/api"
	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/e2e/platform"
	"lap.dev/lap/internal/waitfor"
)

// asLAPHarness fronts a harness with the readiness answers of the
// LiteLLM Agent Platform's claude-agent-sdk harness: its identity on
// GET / and 404 on GET /session (it has no list route); every other
// route goes through.
func asLAPHarness(t *testing.T, harnessURL string) string {
	t.Helper()
	u, err := url.Parse(harnessURL)
	require.NoError(t, err)
	proxy := httputil.NewSingleHostReverseProxy(u)
	proxy.FlushInterval = -1
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/":
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"harness":"claude-agent-sdk","version":"0.0.4","port":4096}`))
		case r.Method == http.MethodGet && r.URL.Path == "/session":
			http.NotFound(w, r)
		default:
			proxy.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// The seed's local-development flow with a harness that answers 404 on
// GET /session, as LAP's does: lapd takes it as ready, as LAP's platform
// does, and turns go through it (before, the session sat in creating
// until SESSION_CREATING_TIMEOUT and failed).
func TestLocalSandboxURLWithLAPsHarness(t *testing.T) {
	t.Parallel()
	p := platform.New(t, nil)
	port := platform.FreePort(t)
	harness := exec.Command(filepath.Join(platform.Bin, "lap-harness"))
	harness.Env = []string{"PORT=" + port, "WORKSPACE=" + t.TempDir(), "LITELLM_API_BASE=" + p.LLM.URL(), "LAP_MODEL=test/model", "PATH=" + os.Getenv("PATH")}
	require.NoError(t, harness.Start())
	t.Cleanup(func() {
		_ = harness.Process.Kill()
		_ = harness.Wait()
	})

	p.Env["LOCAL_SANDBOX_URL"] = asLAPHarness(t, "http://localhost:"+port)
	p.Env["WARM_POOL_SIZE"] = "0"
	l := p.Start()
	l.CreateAgentWith(api.CreateAgentRequest{Name: "my-sdk-agent", HarnessID: "claude-agent-sdk", Model: "anthropic/claude-sonnet-4-5"})
	sess := l.ReadySession("my-sdk-agent")
	p.LLM.Enqueue(fakellm.Text("answered by LAP's kind of harness"))
	assert.Equal(t, "answered by LAP's kind of harness", l.Send(sess.ID, "hello").Text())
}

// A LOCAL_SANDBOX_URL where nothing listens fails the session within
// seconds, saying so, not after the whole SESSION_CREATING_TIMEOUT.
func TestLocalSandboxURLNothingListeningFailsFast(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := "http://" + ln.Addr().String()
	require.NoError(t, ln.Close())

	p := platform.New(t, map[string]string{"LOCAL_SANDBOX_URL": dead, "WARM_POOL_SIZE": "0", "SESSION_CREATING_TIMEOUT": "5m"})
	l := p.Start()
	l.CreateAgentWith(api.CreateAgentRequest{Name: "my-sdk-agent", HarnessID: "claude-agent-sdk", Model: "anthropic/claude-sonnet-4-5"})
	start := time.Now()
	sess := l.CreateSession("my-sdk-agent")
	waitfor.Within(t, time.Minute, "the session to fail", func() bool {
		sess = l.Session(sess.ID, "")
		return sess.Status == api.SessionFailed
	})
	t.Logf("failed after %s: %s", time.Since(start).Round(time.Millisecond), sess.FailureReason)
	assert.Contains(t, sess.FailureReason, "LOCAL_SANDBOX_URL")
	assert.True(t, strings.Contains(sess.FailureReason, "connection refused"), "%q", sess.FailureReason)
}
