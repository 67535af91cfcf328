package control

import (
	"net/http"
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
	a, err := s.o.addAgent(ctx, a, req.EnvVars)
	if err != nil {
		return err
	}
	return c.Status(http.StatusCreated).JSON(apiAgent(a))
}

func apiAgent(a store.Agent) api.Agent {
	names := a.EnvNames
	if names == nil {
		names = []string{}
	}
	h, _ := sandboxes.LookupHarness(a.HarnessID)
	return api.Agent{
		SupportsTUI:  h.TUI,
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
	updated, err := s.o.changeAgent(ctx, a, next, req.EnvVars)
	if err != nil {
		return err
	}
	return c.JSON(apiAgent(updated))
}

func (s *Server) deleteAgent(c *fiber.Ctx) error {
	ctx := c.UserContext()
	a, err := s.o.resolveAgent(ctx, c.Params("id"))
	if err != nil {
		return err
	}
	if err := s.o.removeAgent(ctx, a); err != nil {
		return err
	}
	return c.SendStatus(http.StatusNoContent)
}
