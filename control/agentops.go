package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"

	"lap.dev/lap/control/api"
	"lap.dev/lap/sandboxes"
	"lap.dev/lap/store"
)

// addAgent stores the new agent a with its env_vars env sealed and
// creates it on the backend; without its backend resources the agent
// cannot run, so a failure there removes the record again.
func (o *orchestrator) addAgent(ctx context.Context, a store.Agent, env map[string]string) (store.Agent, error) {
	if err := o.sealEnv(&a, env); err != nil {
		return store.Agent{}, err
	}
	name := a.Name
	a, err := o.store.CreateAgent(ctx, a)
	if errors.Is(err, store.ErrConflict) {
		return a, conflict("agent %q already exists", name)
	}
	if err != nil {
		return store.Agent{}, err
	}
	if err := o.ensureAgent(ctx, a); err != nil {
		// Without its backend resources the agent cannot run; do not
		// leave a record that looks usable.
		if derr := o.store.DeleteAgent(context.WithoutCancel(ctx), a.ID); derr != nil {
			o.log.Error("remove agent after failed create", "agent", a.ID, "err", derr)
		}
		return store.Agent{}, fmt.Errorf("create agent %s on the %s backend: %w", a.Name, o.backend.Name(), err)
	}
	o.pool.use(a.ID) // its first session should find a warm sandbox
	o.log.Info("agent created", "agent", a.ID, "name", a.Name, "harness", a.HarnessID, "model", a.Model)
	return a, nil
}

// changeAgent stores next as agent a's new settings (with env, when not
// nil, as its env_vars). A change of what its sandboxes run bumps its
// generation and is applied on the backend; new sandboxes get it,
// running sessions keep theirs.
func (o *orchestrator) changeAgent(ctx context.Context, a, next store.Agent, env *map[string]string) (store.Agent, error) {
	specChanged := next.HarnessID != a.HarnessID || next.Model != a.Model || next.Prompt != a.Prompt ||
		next.RepoURL != a.RepoURL || next.Branch != a.Branch
	if env != nil {
		old, err := o.openEnv(a)
		if err != nil {
			return store.Agent{}, err
		}
		if !maps.Equal(old, *env) {
			specChanged = true
			if err := o.sealEnv(&next, *env); err != nil {
				return store.Agent{}, err
			}
		}
	}
	updated, err := o.store.UpdateAgent(ctx, a.ID, func(cur *store.Agent) error {
		gen := cur.Generation
		if specChanged {
			gen++
		}
		usage := cur.Usage // the gateway may have added usage meanwhile
		*cur = next
		cur.Generation, cur.Usage = gen, usage
		return nil
	})
	if err != nil {
		return store.Agent{}, err
	}
	if specChanged {
		// New sandboxes get the new spec; running sessions keep theirs.
		if err := o.ensureAgent(ctx, updated); err != nil {
			return store.Agent{}, fmt.Errorf("update agent %s on the %s backend: %w", a.Name, o.backend.Name(), err)
		}
	}
	o.pool.use(a.ID) // replaces warm sandboxes of the old generation, resizes the pool
	return updated, nil
}

// removeAgent deletes agent a: its sessions end, its sandboxes and its
// backend resources are destroyed, then its record goes.
func (o *orchestrator) removeAgent(ctx context.Context, a store.Agent) error {
	// End every session (aborting turns, destroying sandboxes) first, so
	// nothing of the agent keeps running once it is gone.
	cursor := ""
	for {
		page, next, err := o.store.ListSessions(ctx, store.SessionFilter{AgentID: a.ID, Page: store.Page{Limit: store.MaxLimit, Cursor: cursor}})
		if err != nil {
			return err
		}
		for _, sess := range page {
			if sess.Status == api.SessionDead {
				continue // listed from the page read: no write needed
			}
			if err := o.endSession(ctx, sess.ID); err != nil {
				return err
			}
		}
		if next == "" {
			break
		}
		cursor = next
	}
	live, err := o.store.ListSandboxes(ctx, store.SandboxFilter{AgentID: a.ID,
		States: []string{store.SandboxProvisioning, store.SandboxWarm, store.SandboxClaimed, store.SandboxSuspended}})
	if err != nil {
		return err
	}
	for _, sb := range live {
		if err := o.destroySandbox(ctx, sb); err != nil {
			return err
		}
	}
	spec, err := o.agentSpec(a)
	if err != nil {
		return err
	}
	if err := o.backend.DeleteAgent(ctx, spec); err != nil {
		return fmt.Errorf("delete agent %s on the %s backend: %w", a.Name, o.backend.Name(), err)
	}
	if err := o.store.DeleteAgent(ctx, a.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	o.pool.forget(a.ID)
	o.log.Info("agent deleted", "agent", a.ID, "name", a.Name)
	return nil
}

// sealEnv stores env's names in the clear and its values encrypted.
func (o *orchestrator) sealEnv(a *store.Agent, env map[string]string) error {
	if len(env) == 0 {
		a.EnvNames, a.SealedEnv = nil, nil
		return nil
	}
	plain, err := json.Marshal(env)
	if err != nil {
		return err
	}
	a.EnvNames = slices.Sorted(maps.Keys(env))
	a.SealedEnv = o.secrets.Seal(plain, a.ID)
	return nil
}

// openEnv decrypts the agent's env_vars.
func (o *orchestrator) openEnv(a store.Agent) (map[string]string, error) {
	env := map[string]string{}
	if len(a.SealedEnv) == 0 {
		return env, nil
	}
	plain, err := o.secrets.Open(a.SealedEnv, a.ID)
	if err != nil {
		return nil, fmt.Errorf("env_vars of agent %s: %w (was ENCRYPTION_KEY or %s changed?)", a.Name, err, "encryption.key")
	}
	if err := json.Unmarshal(plain, &env); err != nil {
		return nil, fmt.Errorf("env_vars of agent %s: %w", a.Name, err)
	}
	return env, nil
}

// agentSpec is what a backend learns about an agent (ARCHITECTURE §5).
func (o *orchestrator) agentSpec(a store.Agent) (sandboxes.AgentSpec, error) {
	env, err := o.openEnv(a)
	if err != nil {
		return sandboxes.AgentSpec{}, err
	}
	return sandboxes.AgentSpec{
		ID:         a.ID,
		Name:       a.Name,
		HarnessID:  a.HarnessID,
		Generation: a.Generation,
		Env: map[string]string{
			"REPO_URL":         a.RepoURL,
			"BRANCH":           a.Branch,
			"AGENT_PROMPT":     a.Prompt,
			"LAP_MODEL":        a.Model,
			"LITELLM_API_BASE": o.cfg.SandboxGatewayURL,
		},
		Secrets: env,
	}, nil
}

func (o *orchestrator) ensureAgent(ctx context.Context, a store.Agent) error {
	spec, err := o.agentSpec(a)
	if err != nil {
		return err
	}
	return o.backend.EnsureAgent(ctx, spec)
}

// resolveAgent finds the agent a path names by id, name or short id.
func (o *orchestrator) resolveAgent(ctx context.Context, ref string) (store.Agent, error) {
	a, err := o.store.ResolveAgent(ctx, ref)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return a, notFound("agent %s not found", ref)
	case errors.Is(err, store.ErrConflict):
		return a, ambiguous(err, ref, "agent")
	}
	return a, err
}
