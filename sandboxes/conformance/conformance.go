// Package conformance is the behaviour suite every sandboxes.Backend must
// pass (ARCHITECTURE §3/§6 lifecycle): provision to a ready, authenticated
// harness; suspend and resume; recovery from a crash; idempotent destroy
// and agent deletion; nothing left behind by a failed provision. A
// backend's own tests call Run with a way to reach and to kill its
// sandboxes.
package conformance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/harnessclient"
	"lap.dev/lap/sandboxes/protocol"
)

// Options say how to run the suite against one backend.
type Options struct {
	// Agent is the agent sandboxes are provisioned for (harness, env). Run
	// gives each test its own ID, Name and Generation.
	Agent sandboxes.AgentSpec
	// Kill makes a running sandbox's harness die the way a crash would
	// (local: SIGKILL the process; Knative: delete the pod), without
	// telling the backend.
	Kill func(ctx context.Context, sb sandboxes.Sandbox) error
	// KeepsSessions says harness sessions survive Suspend and Resume
	// (true when the workspace is kept, as on the local backend).
	KeepsSessions bool
	// ListSettles says List shows what Provision, Suspend, Destroy and
	// DeleteAgent did only some time after they return, at most this
	// long; the suite then polls List until it shows what it expects, or
	// this time is up, before asserting. 0: List shows it at once (local).
	// Knative's List reads informer caches, which see the backend's own
	// writes a moment later, and a deleted agent's revisions are removed
	// by Kubernetes' garbage collector after DeleteAgent returns.
	ListSettles time.Duration
	// Timeout bounds each test; 0 means two minutes.
	Timeout time.Duration
	// Client reaches the sandboxes' endpoints; nil means a plain client.
	Client *http.Client
}

type suite struct {
	b    sandboxes.Backend
	opts Options
}

// Run runs every conformance test against b as subtests of t.
func Run(t *testing.T, b sandboxes.Backend, opts Options) {
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Minute
	}
	if opts.Client == nil {
		opts.Client = &http.Client{Timeout: 30 * time.Second}
	}
	require.NotNil(t, opts.Kill, "conformance.Options.Kill is required")
	s := &suite{b: b, opts: opts}
	tests := []struct {
		name string
		fn   func(t *testing.T, ctx context.Context, agent sandboxes.AgentSpec)
	}{
		{"ProvisionIsReadyAndAuthenticated", s.provisionReady},
		{"EnsureAgentIsIdempotent", s.ensureAgentIdempotent},
		{"SuspendAndResume", s.suspendResume},
		{"ResumeRunningReturnsAtOnce", s.resumeRunning},
		{"ResumeAfterCrash", s.resumeAfterCrash},
		{"DestroyIsFinalAndIdempotent", s.destroy},
		{"CancelledProvisionLeavesNothing", s.cancelledProvision},
		{"ConcurrentProvisions", s.concurrentProvisions},
		{"DeleteAgentRemovesItsSandboxes", s.deleteAgent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), opts.Timeout)
			defer cancel()
			agent := opts.Agent
			agent.ID = uuid.New().String()
			agent.Name = "conf-" + strings.ToLower(tt.name)
			if len(agent.Name) > 40 {
				agent.Name = agent.Name[:40]
			}
			agent.Name = strings.TrimRight(agent.Name, "-")
			agent.Generation = 1
			if agent.HarnessID == "" {
				agent.HarnessID = sandboxes.DefaultHarness
			}
			require.NoError(t, b.EnsureAgent(ctx, agent), "EnsureAgent")
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), opts.Timeout)
				defer cancel()
				assert.NoError(t, b.DeleteAgent(ctx, agent), "DeleteAgent in cleanup")
			})
			tt.fn(t, ctx, agent)
		})
	}
}

// provision starts a sandbox of agent with a fresh harness token.
func (s *suite) provision(t *testing.T, ctx context.Context, agent sandboxes.AgentSpec) (sandboxes.Sandbox, string) {
	t.Helper()
	token := uuid.NewString()
	spec := sandboxes.Spec{
		ID:    uuid.New().String(),
		Role:  sandboxes.RoleSession,
		Agent: agent,
		Env:   map[string]string{"HARNESS_AUTH_TOKEN": token, "LITELLM_API_KEY": "lapsb_conformance"},
	}
	sb, err := s.b.Provision(ctx, spec)
	require.NoError(t, err, "Provision")
	assert.Equal(t, spec.ID, sb.ID)
	assert.Equal(t, agent.ID, sb.AgentID)
	assert.Equal(t, agent.Generation, sb.Generation)
	assert.True(t, sb.Running, "a provisioned sandbox is running")
	require.NotEmpty(t, sb.Endpoint.URL)
	return sb, token
}

// call makes one harness request and returns the status and body.
func (s *suite) call(ctx context.Context, sb sandboxes.Sandbox, token, method, path string, body any) (int, []byte, error) {
	rd := strings.NewReader("")
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequestWithContext(ctx, method, sb.Endpoint.URL+path, rd)
	if err != nil {
		return 0, nil, err
	}
	sb.Endpoint.Apply(req)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", protocol.Bearer(token))
	}
	resp, err := s.opts.Client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func (s *suite) requireReady(t *testing.T, ctx context.Context, sb sandboxes.Sandbox, token string) {
	t.Helper()
	err := harnessclient.NewWithClient(s.opts.Client).Ready(ctx, harnessclient.Target{Endpoint: sb.Endpoint, Token: token})
	require.NoError(t, err, "the harness is ready (GET /session answers 2xx)")
}

// listedWhen is List's view of sandbox id once want holds of it: at once,
// or, for a backend whose List settles (Options.ListSettles), polled until
// want holds or that time is up. The caller asserts on the view returned.
func (s *suite) listedWhen(t *testing.T, ctx context.Context, id string, want func(sb sandboxes.Sandbox, ok bool) bool) (sandboxes.Sandbox, bool) {
	t.Helper()
	deadline := time.Now().Add(s.opts.ListSettles)
	for {
		sb, ok := s.listed(t, ctx, id)
		if want(sb, ok) || !time.Now().Before(deadline) {
			return sb, ok
		}
		select {
		case <-ctx.Done():
			return sb, ok
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Views of a sandbox in List, for listedWhen.
func running(sb sandboxes.Sandbox, ok bool) bool   { return ok && sb.Running }
func suspended(sb sandboxes.Sandbox, ok bool) bool { return ok && !sb.Running }
func absent(_ sandboxes.Sandbox, ok bool) bool     { return !ok }

func (s *suite) listed(t *testing.T, ctx context.Context, id string) (sandboxes.Sandbox, bool) {
	t.Helper()
	all, err := s.b.List(ctx)
	require.NoError(t, err, "List")
	for _, sb := range all {
		if sb.ID == id {
			return sb, true
		}
	}
	return sandboxes.Sandbox{}, false
}

func (s *suite) provisionReady(t *testing.T, ctx context.Context, agent sandboxes.AgentSpec) {
	sb, token := s.provision(t, ctx, agent)
	s.requireReady(t, ctx, sb, token)

	status, _, err := s.call(ctx, sb, "", http.MethodGet, "/", nil)
	require.NoError(t, err)
	assert.Equal(t, 2, status/100, "GET / needs no token")
	status, _, err = s.call(ctx, sb, "wrong-"+token, http.MethodGet, "/session", nil)
	require.NoError(t, err)
	assert.Equal(t, http.StatusUnauthorized, status, "the harness was given HARNESS_AUTH_TOKEN and checks it")

	got, ok := s.listedWhen(t, ctx, sb.ID, running)
	require.True(t, ok, "List includes a provisioned sandbox")
	assert.True(t, got.Running)
	assert.Equal(t, agent.ID, got.AgentID)

	_, err = s.b.Logs(ctx, sb, 4096)
	assert.NoError(t, err, "Logs of a live sandbox")
	require.NoError(t, s.b.Destroy(ctx, sb))
}

func (s *suite) ensureAgentIdempotent(t *testing.T, ctx context.Context, agent sandboxes.AgentSpec) {
	require.NoError(t, s.b.EnsureAgent(ctx, agent), "EnsureAgent again")
	agent.Generation++
	require.NoError(t, s.b.EnsureAgent(ctx, agent), "EnsureAgent of the next generation")
	sb, token := s.provision(t, ctx, agent)
	s.requireReady(t, ctx, sb, token)
	require.NoError(t, s.b.Destroy(ctx, sb))
}

func (s *suite) suspendResume(t *testing.T, ctx context.Context, agent sandboxes.AgentSpec) {
	sb, token := s.provision(t, ctx, agent)
	status, body, err := s.call(ctx, sb, token, http.MethodPost, "/session", protocol.CreateSessionRequest{Title: "kept"})
	require.NoError(t, err)
	require.Equal(t, 2, status/100, "POST /session = %d %s", status, body)
	var hs protocol.SessionInfo
	require.NoError(t, json.Unmarshal(body, &hs))

	sb, err = s.b.Suspend(ctx, sb)
	require.NoError(t, err, "Suspend")
	assert.False(t, sb.Running, "a suspended sandbox is not running")
	sb, err = s.b.Suspend(ctx, sb)
	require.NoError(t, err, "Suspend is idempotent")
	got, ok := s.listedWhen(t, ctx, sb.ID, suspended)
	require.True(t, ok, "List includes a suspended sandbox")
	assert.False(t, got.Running)

	sb, err = s.b.Resume(ctx, sb)
	require.NoError(t, err, "Resume")
	assert.True(t, sb.Running)
	s.requireReady(t, ctx, sb, token)
	if s.opts.KeepsSessions {
		status, body, err := s.call(ctx, sb, token, http.MethodGet, "/session/"+hs.ID+"/message", nil)
		require.NoError(t, err)
		assert.Equal(t, http.StatusOK, status, "the harness session survives Suspend/Resume: %s", body)
	}
	require.NoError(t, s.b.Destroy(ctx, sb))
}

func (s *suite) resumeRunning(t *testing.T, ctx context.Context, agent sandboxes.AgentSpec) {
	sb, token := s.provision(t, ctx, agent)
	again, err := s.b.Resume(ctx, sb)
	require.NoError(t, err, "Resume of a running sandbox")
	assert.True(t, again.Running)
	s.requireReady(t, ctx, again, token)
	require.NoError(t, s.b.Destroy(ctx, again))
}

func (s *suite) resumeAfterCrash(t *testing.T, ctx context.Context, agent sandboxes.AgentSpec) {
	sb, token := s.provision(t, ctx, agent)
	require.NoError(t, s.opts.Kill(ctx, sb), "Kill")
	sb, err := s.b.Resume(ctx, sb)
	require.NoError(t, err, "Resume after a crash")
	assert.True(t, sb.Running)
	s.requireReady(t, ctx, sb, token)
	require.NoError(t, s.b.Destroy(ctx, sb))
}

func (s *suite) destroy(t *testing.T, ctx context.Context, agent sandboxes.AgentSpec) {
	sb, _ := s.provision(t, ctx, agent)
	require.NoError(t, s.b.Destroy(ctx, sb))
	require.NoError(t, s.b.Destroy(ctx, sb), "Destroy is idempotent")
	_, ok := s.listedWhen(t, ctx, sb.ID, absent)
	assert.False(t, ok, "List excludes a destroyed sandbox")
	_, err := s.b.Resume(ctx, sb)
	require.Error(t, err, "Resume of a destroyed sandbox")
	assert.True(t, errors.Is(err, sandboxes.ErrGone) || errors.Is(err, sandboxes.ErrNotFound),
		"Resume of a destroyed sandbox = %v, want ErrGone or ErrNotFound", err)
}

func (s *suite) cancelledProvision(t *testing.T, ctx context.Context, agent sandboxes.AgentSpec) {
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	id := uuid.New().String()
	_, err := s.b.Provision(cctx, sandboxes.Spec{ID: id, Role: sandboxes.RoleSession, Agent: agent,
		Env: map[string]string{"HARNESS_AUTH_TOKEN": uuid.NewString()}})
	require.Error(t, err, "Provision with a cancelled context")
	_, ok := s.listedWhen(t, ctx, id, absent)
	assert.False(t, ok, "a failed provision leaves nothing behind")
}

func (s *suite) concurrentProvisions(t *testing.T, ctx context.Context, agent sandboxes.AgentSpec) {
	const n = 3
	type result struct {
		sb    sandboxes.Sandbox
		token string
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			token := uuid.NewString()
			sb, err := s.b.Provision(ctx, sandboxes.Spec{ID: uuid.New().String(), Role: sandboxes.RoleWarm, Agent: agent,
				Env: map[string]string{"HARNESS_AUTH_TOKEN": token}})
			assert.NoError(t, err, "concurrent Provision %d", i)
			results[i] = result{sb, token}
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, r := range results {
		require.NotEmpty(t, r.sb.ID)
		key := r.sb.Endpoint.URL + "|" + r.sb.Endpoint.Host + fmt.Sprint(r.sb.Endpoint.Header)
		assert.False(t, seen[key], "two sandboxes share endpoint %s", key)
		seen[key] = true
		s.requireReady(t, ctx, r.sb, r.token)
	}
	for _, r := range results {
		require.NoError(t, s.b.Destroy(ctx, r.sb))
	}
}

func (s *suite) deleteAgent(t *testing.T, ctx context.Context, agent sandboxes.AgentSpec) {
	a, _ := s.provision(t, ctx, agent)
	b, _ := s.provision(t, ctx, agent)
	_, err := s.b.Suspend(ctx, b)
	require.NoError(t, err)
	require.NoError(t, s.b.DeleteAgent(ctx, agent))
	require.NoError(t, s.b.DeleteAgent(ctx, agent), "DeleteAgent is idempotent")
	for _, sb := range []sandboxes.Sandbox{a, b} {
		_, ok := s.listedWhen(t, ctx, sb.ID, absent)
		assert.False(t, ok, "sandbox %s of a deleted agent is still listed", sb.ID)
	}
	// The cleanup's DeleteAgent runs once more; EnsureAgent again so the
	// agent exists for it as in every other test.
	require.NoError(t, s.b.EnsureAgent(ctx, agent))
}
