package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"

	"github.com/gofiber/fiber/v2"

	"lap.dev/lap/control/api"
	"lap.dev/lap/sandboxes"
	"lap.dev/lap/store"
)

func (s *Server) createAgent(c *fiber.Ctx) error {
	ctx := c.UserContext()
	var req api.CreateAgentRequest
	if err := decodeBody(c, &req, true); err != nil {
		return err
	}
	if req.HarnessID == "" {
		req.HarnessID = sandboxes.DefaultHarness
	}
	if req.Model == "" {
		req.Model = s.cfg.DefaultModel
	}
	if req.Branch == "" {
		req.Branch = "main"
	}
	var p problems
	validateName(&p, req.Name)
	validateHarness(&p, req.HarnessID)
	validateModel(&p, req.Model)
	validatePrompt(&p, req.Prompt)
	validateRepoURL(&p, req.RepoURL)
	validateBranch(&p, req.Branch)
	validateEnv(&p, req.EnvVars)
	validateWarmPool(&p, req.WarmPoolSize)
	validateBudget(&p, req.MaxBudgetUSD)
	if err := p.err(); err != nil {
		return err
	}
	a := store.Agent{
		ID:           store.NewID(),
		Name:         req.Name,
		HarnessID:    req.HarnessID,
		Model:        req.Model,
		Prompt:       req.Prompt,
		RepoURL:      req.RepoURL,
		Branch:       req.Branch,
		WarmPoolSize: req.WarmPoolSize,
		MaxBudgetUSD: req.MaxBudgetUSD,
	}
	if err := s.o.sealEnv(&a, req.EnvVars); err != nil {
		return err
	}
	a, err := s.store.CreateAgent(ctx, a)
	if errors.Is(err, store.ErrConflict) {
		return conflict("agent %q already exists", req.Name)
	}
	if err != nil {
		return err
	}
	if err := s.o.ensureAgent(ctx, a); err != nil {
		// Without its backend resources the agent cannot run; do not
		// leave a record that looks usable.
		if derr := s.store.DeleteAgent(context.WithoutCancel(ctx), a.ID); derr != nil {
			s.log.Error("remove agent after failed create", "agent", a.ID, "err", derr)
		}
		return fmt.Errorf("create agent %s on the %s backend: %w", a.Name, s.backend.Name(), err)
	}
	s.o.pool.use(a.ID) // its first session should find a warm sandbox
	s.log.Info("agent created", "agent", a.ID, "name", a.Name, "harness", a.HarnessID, "model", a.Model)
	return c.Status(http.StatusCreated).JSON(apiAgent(a))
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

func apiAgent(a store.Agent) api.Agent {
	names := a.EnvNames
	if names == nil {
		names = []string{}
	}
	return api.Agent{
		ID:           a.ID,
		Name:         a.Name,
		HarnessID:    a.HarnessID,
		Model:        a.Model,
		Prompt:       a.Prompt,
		RepoURL:      a.RepoURL,
		Branch:       a.Branch,
		EnvVars:      names,
		WarmPoolSize: a.WarmPoolSize,
		MaxBudgetUSD: a.MaxBudgetUSD,
		Generation:   a.Generation,
		Usage:        api.Usage(a.Usage),
		CreatedAt:    a.CreatedAt,
		UpdatedAt:    a.UpdatedAt,
	}
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

// pageParams reads ?limit and ?cursor.
func pageParams(c *fiber.Ctx) (store.Page, error) {
	p := store.Page{Cursor: c.Query("cursor")}
	if v := c.Query("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > store.MaxLimit {
			return p, badRequest("limit %q must be an integer from 1 to %d", v, store.MaxLimit)
		}
		p.Limit = n
	}
	return p, nil
}

func (s *Server) listAgents(c *fiber.Ctx) error {
	page, err := pageParams(c)
	if err != nil {
		return err
	}
	agents, next, err := s.store.ListAgents(c.UserContext(), store.AgentFilter{Page: page, Search: c.Query("search")})
	if err != nil {
		return err
	}
	out := make([]api.Agent, 0, len(agents))
	for _, a := range agents {
		out = append(out, apiAgent(a))
	}
	return c.JSON(api.List[api.Agent]{Data: out, NextCursor: next})
}

func (s *Server) getAgent(c *fiber.Ctx) error {
	a, err := s.o.resolveAgent(c.UserContext(), c.Params("id"))
	if err != nil {
		return err
	}
	return c.JSON(apiAgent(a))
}

func (s *Server) updateAgent(c *fiber.Ctx) error {
	ctx := c.UserContext()
	a, err := s.o.resolveAgent(ctx, c.Params("id"))
	if err != nil {
		return err
	}
	var req api.UpdateAgentRequest
	if err := decodeBody(c, &req, true); err != nil {
		return err
	}
	if req.Name != nil && *req.Name != a.Name {
		return unprocessable("an agent's name cannot change (it names the agent's sandboxes and Knative Service); create a new agent instead")
	}
	next := a
	set := func(dst *string, v *string) {
		if v != nil {
			*dst = *v
		}
	}
	set(&next.HarnessID, req.HarnessID)
	set(&next.Model, req.Model)
	set(&next.Prompt, req.Prompt)
	set(&next.RepoURL, req.RepoURL)
	set(&next.Branch, req.Branch)
	if req.WarmPoolSize != nil {
		next.WarmPoolSize = req.WarmPoolSize
	}
	if req.MaxBudgetUSD != nil {
		next.MaxBudgetUSD = req.MaxBudgetUSD
	}
	var p problems
	validateHarness(&p, next.HarnessID)
	validateModel(&p, next.Model)
	validatePrompt(&p, next.Prompt)
	validateRepoURL(&p, next.RepoURL)
	validateBranch(&p, next.Branch)
	validateWarmPool(&p, next.WarmPoolSize)
	validateBudget(&p, next.MaxBudgetUSD)
	if req.EnvVars != nil {
		validateEnv(&p, *req.EnvVars)
	}
	if err := p.err(); err != nil {
		return err
	}
	specChanged := next.HarnessID != a.HarnessID || next.Model != a.Model || next.Prompt != a.Prompt ||
		next.RepoURL != a.RepoURL || next.Branch != a.Branch
	if req.EnvVars != nil {
		old, err := s.o.openEnv(a)
		if err != nil {
			return err
		}
		if !maps.Equal(old, *req.EnvVars) {
			specChanged = true
			if err := s.o.sealEnv(&next, *req.EnvVars); err != nil {
				return err
			}
		}
	}
	updated, err := s.store.UpdateAgent(ctx, a.ID, func(cur *store.Agent) error {
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
		return err
	}
	if specChanged {
		// New sandboxes get the new spec; running sessions keep theirs.
		if err := s.o.ensureAgent(ctx, updated); err != nil {
			return fmt.Errorf("update agent %s on the %s backend: %w", a.Name, s.backend.Name(), err)
		}
	}
	s.o.pool.use(a.ID) // replaces warm sandboxes of the old generation, resizes the pool
	return c.JSON(apiAgent(updated))
}

func (s *Server) deleteAgent(c *fiber.Ctx) error {
	ctx := c.UserContext()
	a, err := s.o.resolveAgent(ctx, c.Params("id"))
	if err != nil {
		return err
	}
	// End every session (aborting turns, destroying sandboxes) first, so
	// nothing of the agent keeps running once it is gone.
	cursor := ""
	for {
		page, next, err := s.store.ListSessions(ctx, store.SessionFilter{AgentID: a.ID, Page: store.Page{Limit: store.MaxLimit, Cursor: cursor}})
		if err != nil {
			return err
		}
		for _, sess := range page {
			if sess.Status != api.SessionDead {
				if err := s.o.endSession(ctx, sess.ID); err != nil {
					return err
				}
			}
		}
		if next == "" {
			break
		}
		cursor = next
	}
	live, err := s.store.ListSandboxes(ctx, store.SandboxFilter{AgentID: a.ID,
		States: []string{store.SandboxProvisioning, store.SandboxWarm, store.SandboxClaimed, store.SandboxSuspended}})
	if err != nil {
		return err
	}
	for _, sb := range live {
		if err := s.o.destroySandbox(ctx, sb); err != nil {
			return err
		}
	}
	spec, err := s.o.agentSpec(a)
	if err != nil {
		return err
	}
	if err := s.backend.DeleteAgent(ctx, spec); err != nil {
		return fmt.Errorf("delete agent %s on the %s backend: %w", a.Name, s.backend.Name(), err)
	}
	if err := s.store.DeleteAgent(ctx, a.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	s.o.pool.forget(a.ID)
	s.log.Info("agent deleted", "agent", a.ID, "name", a.Name)
	return c.SendStatus(http.StatusNoContent)
}
