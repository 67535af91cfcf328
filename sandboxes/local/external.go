package local

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"time"

	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/harnessclient"
)

// External is the backend of LOCAL_SANDBOX_URL: one harness started by
// the developer (e.g. `opencode serve --port 4096` or `lap-harness`)
// serves every session, each a session inside it. lapd neither starts
// nor stops it: Provision and Resume only check that it answers,
// Suspend and Destroy leave it running. It keeps no state, so a restarted
// lapd simply carries on with it.
type External struct {
	url     string
	timeout time.Duration
	// refusedFor is how long connections may be refused before the wait
	// gives up: nothing listens, and a developer should hear so at once
	// rather than after the whole ready timeout.
	refusedFor time.Duration
	client     *harnessclient.Client
}

// refusedGrace is how long an external harness may refuse connections
// before provisioning fails: long enough for `node dist/server.js` started
// just after lapd to come up.
const refusedGrace = 10 * time.Second

var _ sandboxes.Backend = (*External)(nil)

// NewExternal returns the backend for the harness at url. Provision and
// Resume wait up to readyTimeout for it to answer GET /session.
func NewExternal(url string, readyTimeout time.Duration) *External {
	return &External{
		url:        strings.TrimRight(url, "/"),
		timeout:    readyTimeout,
		refusedFor: min(refusedGrace, readyTimeout),
		client:     harnessclient.New(),
	}
}

// Name is "local".
func (e *External) Name() string { return "local" }

// EnsureAgent does nothing: the external harness is the developer's.
func (e *External) EnsureAgent(context.Context, sandboxes.AgentSpec) error { return nil }

// DeleteAgent does nothing: the external harness keeps running.
func (e *External) DeleteAgent(context.Context, sandboxes.AgentSpec) error { return nil }

// Provision returns the external harness as the sandbox once it answers
// GET /session; ErrNotReady if it does not within the ready timeout.
func (e *External) Provision(ctx context.Context, spec sandboxes.Spec) (sandboxes.Sandbox, error) {
	if err := e.waitReady(ctx); err != nil {
		return sandboxes.Sandbox{}, fmt.Errorf("provision sandbox %s: %w", spec.ID, err)
	}
	return e.sandbox(spec.ID, spec.Agent.ID, spec.Agent.Generation, true), nil
}

// Suspend leaves the external harness running and reports the sandbox
// stopped, so the next message goes through Resume's health check.
func (e *External) Suspend(_ context.Context, sb sandboxes.Sandbox) (sandboxes.Sandbox, error) {
	return e.sandbox(sb.ID, sb.AgentID, sb.Generation, false), nil
}

// Resume checks that the external harness answers.
func (e *External) Resume(ctx context.Context, sb sandboxes.Sandbox) (sandboxes.Sandbox, error) {
	if err := e.waitReady(ctx); err != nil {
		return sb, fmt.Errorf("resume sandbox %s: %w", sb.ID, err)
	}
	return e.sandbox(sb.ID, sb.AgentID, sb.Generation, true), nil
}

// Destroy does nothing: the harness is shared and not lapd's to stop.
func (e *External) Destroy(context.Context, sandboxes.Sandbox) error { return nil }

// List returns nothing: lapd started no sandbox to adopt. Sessions of an
// earlier lapd carry on through Resume.
func (e *External) List(context.Context) ([]sandboxes.Sandbox, error) { return nil, nil }

// Logs says where the output is: with the developer, who started it.
func (e *External) Logs(context.Context, sandboxes.Sandbox, int) (string, error) {
	return "the harness at " + e.url + " (LOCAL_SANDBOX_URL) was started outside lapd; its output is where it was started\n", nil
}

func (e *External) sandbox(id, agentID string, generation int64, running bool) sandboxes.Sandbox {
	return sandboxes.Sandbox{
		ID:         id,
		AgentID:    agentID,
		Generation: generation,
		Running:    running,
		Endpoint:   sandboxes.Endpoint{URL: e.url},
		Data:       map[string]string{"external": e.url},
	}
}

// waitReady polls GET /session until the harness answers it with a status
// below 500, as the LiteLLM Agent Platform judges its harnesses (its
// claude-agent-sdk harness has no list route and answers 404), except 401
// and 403: a harness that wants a token it was not given will refuse every
// turn, so that fails at once with the reason. So does a URL that refuses
// connections for refusedFor. It sends no token: an external harness for
// local development runs without one (HARNESS_AUTH_TOKEN empty).
func (e *External) waitReady(ctx context.Context) error {
	var refusedSince time.Time
	err := e.client.WaitReady(ctx, harnessclient.Target{Endpoint: sandboxes.Endpoint{URL: e.url}}, harnessclient.Poll{
		Timeout:  e.timeout,
		Interval: 10 * time.Millisecond, MaxInterval: 500 * time.Millisecond, Factor: 2,
		ReadyStatus: func(status int) bool {
			return status < 500 && status != http.StatusUnauthorized && status != http.StatusForbidden
		},
		Check: func(_ context.Context, attempt error) error {
			if harnessclient.IsStatus(attempt, http.StatusUnauthorized) || harnessclient.IsStatus(attempt, http.StatusForbidden) {
				return fmt.Errorf("%w: it refuses requests without a token (%v): start it without HARNESS_AUTH_TOKEN", sandboxes.ErrNotReady, attempt)
			}
			if !errors.Is(attempt, syscall.ECONNREFUSED) {
				refusedSince = time.Time{}
				return nil
			}
			if refusedSince.IsZero() {
				refusedSince = time.Now()
			}
			if time.Since(refusedSince) >= e.refusedFor {
				return fmt.Errorf("%w: nothing listens there (connection refused for %s); start the harness first", sandboxes.ErrNotReady, e.refusedFor)
			}
			return nil
		},
	})
	if errors.Is(err, sandboxes.ErrNotReady) {
		return fmt.Errorf("the harness at %s (LOCAL_SANDBOX_URL): %w", e.url, err)
	}
	return err
}
