package main

import (
	"context"
	"errors"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"lap.dev/lap/config"
	"lap.dev/lap/control"
	"lap.dev/lap/control/gateway"
	"lap.dev/lap/control/sandboxtoken"
	"lap.dev/lap/store"
)

// gatewayGroup mounts the LLM gateway at /llm. It authenticates sandbox
// tokens itself, so the group is outside the master-key middleware.
func gatewayGroup(cfg config.Config, st *store.Store, tokens *sandboxtoken.Signer, reg prometheus.Registerer, log *slog.Logger) (control.RouteGroup, error) {
	opts, err := gateway.ConfigOptions(cfg)
	if err != nil {
		return control.RouteGroup{}, err
	}
	gs := gatewayStore{st}
	opts.Tokens = tokens
	opts.Sandboxes = gs
	opts.Usage = gs
	opts.Budgets = gs
	opts.Registerer = reg
	opts.Logger = log.With("part", "gateway")
	g, err := gateway.New(opts)
	if err != nil {
		return control.RouteGroup{}, err
	}
	// Long conversations (and images) exceed the API's 1 MiB bodies.
	return control.RouteGroup{Prefix: "/llm", OwnAuth: true, BodyLimit: 32 << 20, Register: g.Register}, nil
}

// gatewayStore adapts the store to the gateway's narrow interfaces.
type gatewayStore struct{ st *store.Store }

func (g gatewayStore) LookupSandbox(ctx context.Context, id string) (gateway.SandboxInfo, error) {
	sb, err := g.st.GetSandbox(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return gateway.SandboxInfo{}, nil
	}
	if err != nil {
		return gateway.SandboxInfo{}, err
	}
	return gateway.SandboxInfo{AgentID: sb.AgentID, SessionID: sb.SessionID, Live: sb.Live()}, nil
}

func (g gatewayStore) RecordUsage(ctx context.Context, sessionID, agentID, model string, u gateway.Usage) error {
	return g.st.AddUsage(ctx, agentID, sessionID, store.Usage{
		InputTokens:  u.InputTokens,
		OutputTokens: u.OutputTokens,
		CostUSD:      u.CostUSD,
		Requests:     1,
	})
}

func (g gatewayStore) Budget(ctx context.Context, agentID, sessionID string) (gateway.Budget, error) {
	b, err := g.st.Budget(ctx, agentID, sessionID)
	if err != nil {
		return gateway.Budget{}, err
	}
	return gateway.Budget{
		AgentMaxUSD:     b.AgentMaxUSD,
		AgentSpentUSD:   b.AgentSpentUSD,
		SessionMaxUSD:   b.SessionMaxUSD,
		SessionSpentUSD: b.SessionSpentUSD,
	}, nil
}
