package local

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
	client  *harnessclient.Client
}

var _ sandboxes.Backend = (*External)(nil)

// NewExternal returns the backend for the harness at url. Provision and
// Resume wait up to readyTimeout for it to answer GET /session.
func NewExternal(url string, readyTimeout time.Duration) *External {
	return &External{
		url:     strings.TrimRight(url, "/"),
		timeout: readyTimeout,
		client:  harnessclient.New(),
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

// waitReady polls GET /session until it answers 2xx. It sends no token:
// an external harness for local development runs without one
// (HARNESS_AUTH_TOKEN empty).
func (e *External) waitReady(ctx context.Context) error {
	err := e.client.WaitReady(ctx, harnessclient.Target{Endpoint: sandboxes.Endpoint{URL: e.url}}, harnessclient.Poll{
		Timeout:  e.timeout,
		Interval: 10 * time.Millisecond, MaxInterval: 500 * time.Millisecond, Factor: 2,
	})
	if errors.Is(err, sandboxes.ErrNotReady) {
		return fmt.Errorf("the harness at %s (LOCAL_SANDBOX_URL): %w", e.url, err)
	}
	return err
}
