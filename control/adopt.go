package control

import (
	"context"
	"encoding/json"
	"errors"

	"lap.dev/lap/sandboxes"
	"lap.dev/lap/store"
)

// adoptSandboxes matches what the backend runs with the store's records
// after lapd (re)starts. Sandboxes run on without lapd (local harnesses in
// their own sessions, Knative revisions), so a restart must not lose or
// duplicate them:
//
//   - a live record whose sandbox the backend reports takes the backend's
//     view (Running as observed now): a running harness is used as is,
//     with no replay; a dead one is resumed at the next message;
//   - a claimed or suspended record the backend no longer knows is marked
//     not running, so the next message's Resume gets ErrGone and replays
//     the history into a new sandbox;
//   - a warm record whose sandbox is gone or dead leaves the pool (the
//     pool manager refills it);
//   - a sandbox the backend runs that no live record claims (its record
//     is destroyed or failed, or lapd died before recording it) is
//     destroyed, if it is this lapd's: its record or its agent is in the
//     store. Another lapd on the same cluster namespace (one in the
//     cluster, one on a laptop) runs sandboxes this store has never
//     heard of; they are left alone.
func (o *orchestrator) adoptSandboxes(ctx context.Context) error {
	found, err := o.backend.List(ctx)
	if err != nil {
		return err
	}
	seen := make(map[string]sandboxes.Sandbox, len(found))
	for _, bsb := range found {
		seen[bsb.ID] = bsb
	}
	live, err := o.store.ListSandboxes(ctx, store.SandboxFilter{
		States: []string{store.SandboxWarm, store.SandboxClaimed, store.SandboxSuspended}})
	if err != nil {
		return err
	}
	adopted, dead := 0, 0
	for _, sb := range live {
		bsb, ok := seen[sb.ID]
		delete(seen, sb.ID)
		switch {
		case sb.State == store.SandboxWarm && (!ok || !bsb.Running):
			o.markSandbox(ctx, sb.ID, store.SandboxDestroyed, "found dead when lapd started")
			o.retireSandbox(sb, "warm sandbox found dead at start-up")
			continue
		case !ok:
			prev, err := backendRecord(sb)
			if err != nil {
				continue // no record to mark; ensureRunning recovers it
			}
			prev.Running = false
			bsb = prev
		}
		if bsb.Running {
			adopted++
		} else {
			dead++
		}
		raw, err := json.Marshal(bsb)
		if err != nil {
			return err
		}
		if _, err := o.store.UpdateSandbox(ctx, sb.ID, func(x *store.Sandbox) error {
			x.Backend = raw
			return nil
		}); err != nil {
			return err
		}
	}
	for id, bsb := range seen {
		rec, err := o.store.GetSandbox(ctx, id)
		if err == nil && rec.State == store.SandboxProvisioning {
			continue // recoverState retires half-provisioned ones
		}
		if errors.Is(err, store.ErrNotFound) {
			if _, aerr := o.store.GetAgent(ctx, bsb.AgentID); errors.Is(aerr, store.ErrNotFound) {
				o.log.Info("leaving a sandbox of an agent this lapd does not know (another lapd's?)", "sandbox", id, "agent", bsb.AgentID)
				continue
			}
		}
		o.log.Warn("destroying a sandbox no live record claims", "sandbox", id, "agent", bsb.AgentID)
		o.goBackground(func(ctx context.Context) {
			if err := o.backend.Destroy(ctx, bsb); err != nil {
				o.log.Warn("destroy unclaimed sandbox", "sandbox", id, "err", err)
			}
		})
	}
	if adopted+dead > 0 {
		o.log.Info("sandboxes adopted after start", "running", adopted, "to_resume", dead)
	}
	return nil
}
