// Package sandboxestest is an in-process sandboxes.Backend for tests.
// Every sandbox is a real HTTP server on 127.0.0.1 speaking the harness
// protocol with a scripted Harness, so the control plane is exercised over
// real loopback HTTP with no processes, containers or LLM. It keeps each
// sandbox's harness state across Suspend and Resume the way the local
// backend keeps a workspace, and lets tests crash a sandbox (Kill), lose
// one (Forget) or hold provisioning (Options.BeforeProvision).
//
// It is never wired into lapd.
package sandboxestest

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/harnessclient"
)

// Options tune a Backend.
type Options struct {
	// BeforeProvision, when set, runs at the start of every Provision; an
	// error fails the provision. Tests block in it to hold a session in
	// "creating", or fail it to test failure paths.
	BeforeProvision func(ctx context.Context, spec sandboxes.Spec) error
	// Heartbeat is the interval of server.heartbeat events; 0 means 10s.
	Heartbeat time.Duration
	// EchoOnly makes every harness echo what it is sent, taking no text
	// as a script command, so fuzzing can send lapd any text at all.
	EchoOnly bool
}

// Backend runs sandboxes as in-process HTTP servers.
type Backend struct {
	opts Options

	mu     sync.Mutex
	agents map[string]sandboxes.AgentSpec
	boxes  map[string]*box

	provisions atomic.Int64
}

var _ sandboxes.Backend = (*Backend)(nil)

type box struct {
	spec    sandboxes.Spec
	env     map[string]string
	harness *Harness     // the "workspace": survives Suspend and crashes
	srv     *http.Server // nil while stopped
	killed  bool         // srv is closed, but the record still says running
	url     string
	gone    bool
	log     bytes.Buffer
}

// New returns an empty Backend. Call Close when done.
func New(opts Options) *Backend {
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = 10 * time.Second
	}
	return &Backend{opts: opts, agents: map[string]sandboxes.AgentSpec{}, boxes: map[string]*box{}}
}

// Name implements sandboxes.Backend.
func (b *Backend) Name() string { return "test" }

// EnsureAgent implements sandboxes.Backend.
func (b *Backend) EnsureAgent(ctx context.Context, agent sandboxes.AgentSpec) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	b.agents[agent.ID] = agent
	b.mu.Unlock()
	return nil
}

// DeleteAgent implements sandboxes.Backend.
func (b *Backend) DeleteAgent(ctx context.Context, agent sandboxes.AgentSpec) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.agents, agent.ID)
	for id, bx := range b.boxes {
		if bx.spec.Agent.ID == agent.ID {
			b.stopLocked(bx)
			delete(b.boxes, id)
		}
	}
	return nil
}

// Provision implements sandboxes.Backend.
func (b *Backend) Provision(ctx context.Context, spec sandboxes.Spec) (sandboxes.Sandbox, error) {
	if b.opts.BeforeProvision != nil {
		if err := b.opts.BeforeProvision(ctx, spec); err != nil {
			return sandboxes.Sandbox{}, fmt.Errorf("provision sandbox %s: %w", spec.ID, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return sandboxes.Sandbox{}, fmt.Errorf("provision sandbox %s: %w", spec.ID, err)
	}
	env := map[string]string{}
	maps.Copy(env, spec.Agent.Env)
	maps.Copy(env, spec.Agent.Secrets)
	maps.Copy(env, spec.Env)
	bx := &box{spec: spec, env: env}
	bx.harness = NewHarness(env["HARNESS_AUTH_TOKEN"], env)
	bx.harness.heartbeat = b.opts.Heartbeat
	bx.harness.echoOnly = b.opts.EchoOnly
	b.mu.Lock()
	if _, dup := b.boxes[spec.ID]; dup {
		b.mu.Unlock()
		return sandboxes.Sandbox{}, fmt.Errorf("provision sandbox %s: already exists", spec.ID)
	}
	b.boxes[spec.ID] = bx
	bx.harness.crash = func() { b.Kill(spec.ID) }
	err := b.startLocked(bx)
	b.mu.Unlock()
	if err == nil {
		err = waitReady(ctx, bx.url, env["HARNESS_AUTH_TOKEN"])
	}
	if err != nil {
		// A failed provision leaves nothing behind.
		b.mu.Lock()
		b.stopLocked(bx)
		delete(b.boxes, spec.ID)
		b.mu.Unlock()
		return sandboxes.Sandbox{}, fmt.Errorf("provision sandbox %s: %w", spec.ID, err)
	}
	b.provisions.Add(1)
	return b.record(bx), nil
}

// startLocked starts bx's HTTP server on a free loopback port.
func (b *Backend) startLocked(bx *box) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	bx.harness.resetBusy()
	bx.killed = false
	bx.srv = &http.Server{Handler: bx.harness, ReadHeaderTimeout: 10 * time.Second}
	bx.url = "http://" + ln.Addr().String()
	fmt.Fprintf(&bx.log, "harness listening on %s\n", bx.url)
	go bx.srv.Serve(ln)
	return nil
}

func (b *Backend) stopLocked(bx *box) {
	if bx.srv != nil {
		bx.srv.Close()
		bx.srv = nil
		fmt.Fprintf(&bx.log, "harness stopped\n")
	}
}

// readiness asks the test harnesses whether they are ready.
var readiness = harnessclient.New()

// waitReady polls GET /session until it answers 2xx, with the readiness
// check of the real backends; ErrNotReady after about as long as 50
// attempts took before.
func waitReady(ctx context.Context, url, token string) error {
	return readiness.WaitReady(ctx, harnessclient.Target{Endpoint: sandboxes.Endpoint{URL: url}, Token: token},
		harnessclient.Poll{Timeout: 1300 * time.Millisecond, Interval: time.Millisecond, MaxInterval: 50 * time.Millisecond, Factor: 1.5})
}

func (b *Backend) record(bx *box) sandboxes.Sandbox {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.recordLocked(bx)
}

func (b *Backend) recordLocked(bx *box) sandboxes.Sandbox {
	return sandboxes.Sandbox{
		ID:         bx.spec.ID,
		AgentID:    bx.spec.Agent.ID,
		Generation: bx.spec.Agent.Generation,
		Running:    bx.srv != nil,
		Endpoint:   sandboxes.Endpoint{URL: bx.url},
		Data:       map[string]string{"url": bx.url, "role": bx.spec.Role},
	}
}

func (b *Backend) lookup(id string) (*box, error) {
	bx, ok := b.boxes[id]
	if !ok {
		return nil, fmt.Errorf("sandbox %s: %w", id, sandboxes.ErrNotFound)
	}
	return bx, nil
}

// Suspend implements sandboxes.Backend: the server stops, the harness
// state stays.
func (b *Backend) Suspend(ctx context.Context, sb sandboxes.Sandbox) (sandboxes.Sandbox, error) {
	if err := ctx.Err(); err != nil {
		return sb, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	bx, err := b.lookup(sb.ID)
	if err != nil {
		return sb, fmt.Errorf("suspend: %w", err)
	}
	b.stopLocked(bx)
	return b.recordLocked(bx), nil
}

// Resume implements sandboxes.Backend.
func (b *Backend) Resume(ctx context.Context, sb sandboxes.Sandbox) (sandboxes.Sandbox, error) {
	if err := ctx.Err(); err != nil {
		return sb, err
	}
	b.mu.Lock()
	bx, err := b.lookup(sb.ID)
	if err == nil && bx.gone {
		err = fmt.Errorf("sandbox %s: %w", sb.ID, sandboxes.ErrGone)
	}
	if err != nil {
		b.mu.Unlock()
		return sb, fmt.Errorf("resume: %w", err)
	}
	if bx.srv != nil && !bx.killed {
		b.mu.Unlock()
		return b.record(bx), nil
	}
	b.stopLocked(bx) // a killed server is restarted on its old state
	err = b.startLocked(bx)
	url := bx.url
	b.mu.Unlock()
	if err == nil {
		err = waitReady(ctx, url, bx.env["HARNESS_AUTH_TOKEN"])
	}
	if err != nil {
		return sb, fmt.Errorf("resume sandbox %s: %w", sb.ID, err)
	}
	return b.record(bx), nil
}

// Destroy implements sandboxes.Backend.
func (b *Backend) Destroy(ctx context.Context, sb sandboxes.Sandbox) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if bx, ok := b.boxes[sb.ID]; ok {
		b.stopLocked(bx)
		delete(b.boxes, sb.ID)
	}
	return nil
}

// List implements sandboxes.Backend.
func (b *Backend) List(ctx context.Context) ([]sandboxes.Sandbox, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	ids := slices.Sorted(maps.Keys(b.boxes))
	out := make([]sandboxes.Sandbox, 0, len(ids))
	for _, id := range ids {
		out = append(out, b.recordLocked(b.boxes[id]))
	}
	return out, nil
}

// Logs implements sandboxes.Backend.
func (b *Backend) Logs(ctx context.Context, sb sandboxes.Sandbox, n int) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	bx, err := b.lookup(sb.ID)
	if err != nil {
		return "", fmt.Errorf("logs: %w", err)
	}
	out := bx.log.Bytes()
	if n > 0 && len(out) > n {
		out = out[len(out)-n:]
	}
	return string(out), nil
}

// Kill crashes a sandbox: its server and connections close at once, but
// the backend still records it as running, as when a harness process dies
// unobserved. Resume brings it back with its state.
func (b *Backend) Kill(id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	bx, err := b.lookup(id)
	if err != nil {
		return err
	}
	if bx.srv != nil && !bx.killed {
		bx.srv.Close()
		bx.killed = true
		fmt.Fprintf(&bx.log, "harness killed\n")
	}
	return nil
}

// Forget loses a sandbox's state, as when its workspace or revision is
// removed: Resume then returns sandboxes.ErrGone.
func (b *Backend) Forget(id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	bx, err := b.lookup(id)
	if err != nil {
		return err
	}
	b.stopLocked(bx)
	bx.gone = true
	return nil
}

// Env returns the environment the sandbox was given.
func (b *Backend) Env(id string) (map[string]string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	bx, err := b.lookup(id)
	if err != nil {
		return nil, err
	}
	return maps.Clone(bx.env), nil
}

// Provisions returns how many sandboxes were provisioned successfully.
func (b *Backend) Provisions() int { return int(b.provisions.Load()) }

// Running returns the ids of sandboxes whose server is up (not stopped,
// not killed), sorted.
func (b *Backend) Running() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var ids []string
	for id, bx := range b.boxes {
		if bx.srv != nil && !bx.killed {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// Close stops every sandbox.
func (b *Backend) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, bx := range b.boxes {
		b.stopLocked(bx)
		delete(b.boxes, id)
	}
}
