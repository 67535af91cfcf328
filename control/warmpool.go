package control

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"lap.dev/lap/control/api"
	"lap.dev/lap/store"
)

// The warm pool manager keeps ready sandboxes for every agent used
// recently, so that a new session claims one (store.ClaimWarmSandbox, in
// the create request) instead of waiting for a cold start. It is
// backend-agnostic: it only calls provisionWarm and destroySandbox.
//
// An agent is "used" when it is created or changed and whenever a session
// of it is created; it stays recent for warmRecentFor after that, then its
// pool is drained. Each recent agent gets its warm_pool_size, or
// WARM_POOL_SIZE, warm sandboxes of its current generation; warm sandboxes
// of older generations, and those beyond the target, are destroyed. The
// manager reconciles when told something changed (kick) and every
// warmTick, with at most warmConcurrency provisions at a time.
type warmPool struct {
	o       *orchestrator
	recent  time.Duration
	tick    time.Duration
	kickCh  chan struct{}
	slots   chan struct{} // bounds provisions in flight
	mu      sync.Mutex
	used    map[string]time.Time // agent id → last use
	running map[string]int       // agent id → warm provisions in flight
	backoff map[string]poolBackoff
}

// poolBackoff spaces retries for an agent whose warm provisions fail, so a
// broken harness does not make the manager provision in a loop. It holds
// for the generation that failed only: an update (say, the repo URL that
// could not be cloned, fixed) is provisioned at once.
type poolBackoff struct {
	generation int64
	until      time.Time
	failures   int
}

const (
	warmRecentFor   = time.Hour
	warmTick        = 15 * time.Second
	warmConcurrency = 3
	warmMaxBackoff  = 5 * time.Minute
)

func newWarmPool(o *orchestrator) *warmPool {
	return &warmPool{
		o:       o,
		recent:  warmRecentFor,
		tick:    warmTick,
		kickCh:  make(chan struct{}, 1),
		slots:   make(chan struct{}, warmConcurrency),
		used:    map[string]time.Time{},
		running: map[string]int{},
		backoff: map[string]poolBackoff{},
	}
}

// use records that agentID was used now and has the pool refilled.
func (p *warmPool) use(agentID string) {
	p.mu.Lock()
	p.used[agentID] = time.Now()
	p.mu.Unlock()
	p.kick()
}

// kick asks for a reconcile soon; kicks while one is pending merge.
func (p *warmPool) kick() {
	select {
	case p.kickCh <- struct{}{}:
	default:
	}
}

// target is how many warm sandboxes agent a should have now. p.mu is
// held.
func (p *warmPool) target(a store.Agent, now time.Time) int {
	if p.o.cfg.LocalSandboxURL != "" {
		return 0 // one shared external harness: nothing to keep warm
	}
	last, ok := p.used[a.ID]
	if !ok || now.Sub(last) > p.recent {
		return 0
	}
	if a.WarmPoolSize != nil {
		return *a.WarmPoolSize
	}
	return p.o.cfg.WarmPoolSize
}

// run reconciles until ctx ends. Agents used recently before a restart
// (agents changed, or with a session running, within the window) count
// as used.
func (p *warmPool) run(ctx context.Context) {
	if err := p.loadRecent(ctx); err != nil {
		p.o.log.Warn("warm pool: find recently used agents", "err", err)
	}
	t := time.NewTicker(p.tick)
	defer t.Stop()
	for {
		p.reconcile(ctx)
		select {
		case <-ctx.Done():
			return
		case <-p.kickCh:
		case <-t.C:
		}
	}
}

// loadRecent seeds the use times from the store: agents changed within
// the window, and the agents of sessions that are ready or being created
// (found through the status index). It reads no other session: on a
// store of many sessions, reading them all cost lapd seconds and the
// whole file in memory at every start. An agent whose sessions had all
// gone idle before the restart gets its pool back at its next use.
func (p *warmPool) loadRecent(ctx context.Context) error {
	agents, err := p.o.store.AllAgents(ctx)
	if err != nil {
		return err
	}
	since := time.Now().Add(-p.recent)
	last := map[string]time.Time{}
	for _, a := range agents {
		last[a.ID] = a.UpdatedAt
	}
	for _, status := range []string{api.SessionReady, api.SessionCreating} {
		ids, err := p.o.store.SessionIDsByStatus(ctx, status)
		if err != nil {
			return err
		}
		for _, id := range ids {
			sess, err := p.o.store.GetSession(ctx, id)
			if err != nil {
				continue // deleted meanwhile
			}
			if t, ok := last[sess.AgentID]; ok && sess.LastActiveAt.After(t) {
				last[sess.AgentID] = sess.LastActiveAt
			}
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, t := range last {
		if t.After(since) && t.After(p.used[id]) {
			p.used[id] = t
		}
	}
	return nil
}

// reconcile brings every agent's pool to its target: it retires warm
// sandboxes of old generations, of deleted agents and beyond the target,
// and starts provisions for what is missing. It holds p.mu throughout, so
// a provision that finishes meanwhile is counted either as warm in the
// store or as running, never as neither or both.
func (p *warmPool) reconcile(ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	agents, err := p.o.store.AllAgents(ctx)
	if err != nil {
		if ctx.Err() == nil {
			p.o.log.Warn("warm pool: list agents", "err", err)
		}
		return
	}
	warm, err := p.o.store.ListSandboxes(ctx, store.SandboxFilter{States: []string{store.SandboxWarm}})
	if err != nil {
		if ctx.Err() == nil {
			p.o.log.Warn("warm pool: list warm sandboxes", "err", err)
		}
		return
	}
	byAgent := map[string][]store.Sandbox{}
	for _, sb := range warm {
		byAgent[sb.AgentID] = append(byAgent[sb.AgentID], sb)
	}
	now := time.Now()
	for _, a := range agents {
		target := p.target(a, now)
		var current []store.Sandbox
		for _, sb := range byAgent[a.ID] {
			if sb.Generation == a.Generation {
				current = append(current, sb)
			} else {
				p.retire(ctx, sb, "warm sandbox of an older agent generation")
			}
		}
		delete(byAgent, a.ID)
		// ListSandboxes is oldest first and claims take the oldest, so
		// the newest are the ones to retire.
		for len(current) > target {
			p.retire(ctx, current[len(current)-1], "warm pool above its size")
			current = current[:len(current)-1]
		}
		p.fill(ctx, a, target-len(current))
	}
	for _, orphans := range byAgent {
		for _, sb := range orphans {
			p.retire(ctx, sb, "warm sandbox of a deleted agent")
		}
	}
}

// retire takes a warm sandbox out of the pool and destroys it, unless a
// session claimed it meanwhile: the state change is one transaction, like
// the claim.
func (p *warmPool) retire(ctx context.Context, sb store.Sandbox, reason string) {
	taken, err := p.o.store.UpdateSandbox(ctx, sb.ID, func(x *store.Sandbox) error {
		if x.State != store.SandboxWarm {
			return errNotWarm
		}
		x.State, x.Error = store.SandboxDestroyed, reason
		return nil
	})
	if err != nil {
		if !errors.Is(err, errNotWarm) && ctx.Err() == nil {
			p.o.log.Warn("warm pool: retire sandbox", "sandbox", sb.ID, "err", err)
		}
		return
	}
	p.o.retireSandbox(taken, reason)
}

var errNotWarm = errors.New("sandbox is no longer warm")

// fill starts up to missing warm provisions for a, counting those already
// in flight, unless a's generation is backing off after failures. p.mu is
// held.
func (p *warmPool) fill(ctx context.Context, a store.Agent, missing int) {
	if b := p.backoff[a.ID]; b.generation == a.Generation && time.Now().Before(b.until) {
		return
	}
	for n := missing - p.running[a.ID]; n > 0; n-- {
		p.running[a.ID]++
		p.o.goBackground(func(ctx context.Context) { p.provision(ctx, a) })
	}
}

// provision adds one warm sandbox to a's pool, waiting for a free slot.
// When it ends, the pool is reconciled again: the agent may have changed
// or gone meanwhile, or this provision failed. The reconcile is asked for
// only once this provision no longer counts as in flight, or it would
// count it and start none in its place.
func (p *warmPool) provision(ctx context.Context, a store.Agent) {
	defer func() {
		p.mu.Lock()
		p.running[a.ID]--
		if p.running[a.ID] <= 0 {
			delete(p.running, a.ID)
		}
		p.mu.Unlock()
		p.kick()
	}()
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return
	}
	defer func() { <-p.slots }()
	// The agent may have changed or gone while this waited for a slot.
	cur, err := p.o.store.GetAgent(ctx, a.ID)
	if err != nil || cur.Generation != a.Generation {
		return
	}
	_, err = p.o.provisionWarm(ctx, cur)
	if err != nil {
		if ctx.Err() == nil {
			p.o.log.Warn("warm pool: provision", "agent", a.Name, "err", err)
		}
		p.mu.Lock()
		b := p.backoff[a.ID]
		if b.generation != a.Generation {
			b = poolBackoff{generation: a.Generation}
		}
		b.failures++
		wait := min(time.Second<<min(b.failures, 16), warmMaxBackoff)
		b.until = time.Now().Add(wait)
		p.backoff[a.ID] = b
		p.mu.Unlock()
		// Retry when the backoff ends, not at the first tick after it.
		// (The agent may have changed meanwhile: the backoff holds only
		// for the generation that failed, and the reconcile as this
		// returns provisions the new one.)
		time.AfterFunc(wait, p.kick)
		return
	}
	p.mu.Lock()
	delete(p.backoff, a.ID)
	p.mu.Unlock()
	// Deleted or changed while provisioning: the reconcile as this
	// returns retires sb (its agent or generation no longer matches).
}

// forget drops a deleted agent's bookkeeping.
func (p *warmPool) forget(agentID string) {
	p.mu.Lock()
	delete(p.used, agentID)
	delete(p.backoff, agentID)
	p.mu.Unlock()
	p.kick()
}

// warmCollector reports the warm sandboxes per agent from the store at
// scrape time (lap_warm_sandboxes).
type warmCollector struct {
	store *store.Store
}

var warmDesc = prometheus.NewDesc("lap_warm_sandboxes", "Warm (ready, unclaimed) sandboxes by agent.", []string{"agent"}, nil)

// Describe implements prometheus.Collector.
func (c *warmCollector) Describe(ch chan<- *prometheus.Desc) { ch <- warmDesc }

// Collect implements prometheus.Collector.
func (c *warmCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	warm, err := c.store.ListSandboxes(ctx, store.SandboxFilter{States: []string{store.SandboxWarm}})
	if err != nil {
		ch <- prometheus.NewInvalidMetric(warmDesc, err)
		return
	}
	agents, err := c.store.AllAgents(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(warmDesc, err)
		return
	}
	counts := map[string]int{}
	for _, sb := range warm {
		counts[sb.AgentID]++
	}
	for _, a := range agents {
		ch <- prometheus.MustNewConstMetric(warmDesc, prometheus.GaugeValue, float64(counts[a.ID]), a.Name)
	}
}
