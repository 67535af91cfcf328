package control

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"lap.dev/lap/control/sandboxtoken"
	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/protocol"
	"lap.dev/lap/store"
)

// provisionSandbox records and provisions a sandbox of agent a for
// sessionID ("" for a warm one). The record exists before the backend
// starts anything, so a crash mid-way leaves a trace Start cleans up.
func (o *orchestrator) provisionSandbox(ctx context.Context, a store.Agent, role, sessionID string) (store.Sandbox, sandboxes.Sandbox, error) {
	sb, err := o.recordSandbox(ctx, a, role, sessionID)
	if err != nil {
		return sb, sandboxes.Sandbox{}, err
	}
	// Bookkeeping after the backend acted must happen even if ctx ended.
	keep := context.WithoutCancel(ctx)
	agent, err := o.agentSpec(a)
	if err != nil {
		o.markSandbox(keep, sb.ID, store.SandboxFailed, err.Error())
		return sb, sandboxes.Sandbox{}, err
	}
	bsb, err := o.backend.Provision(ctx, sandboxes.Spec{
		ID:    sb.ID,
		Role:  role,
		Agent: agent,
		Env: map[string]string{
			"HARNESS_AUTH_TOKEN": sb.HarnessToken,
			"LITELLM_API_KEY":    o.tokens.Mint(sandboxtoken.Claims{SandboxID: sb.ID, AgentID: a.ID}),
		},
	})
	if err != nil {
		o.markSandbox(keep, sb.ID, store.SandboxFailed, err.Error())
		return sb, sandboxes.Sandbox{}, fmt.Errorf("provision sandbox for agent %s: %w", a.Name, err)
	}
	state, harnessSession := store.SandboxClaimed, ""
	if sessionID == "" {
		state = store.SandboxWarm
	}
	if sessionID == "" && !isTUI(a) {
		// A warm sandbox enters the pool with the harness session its
		// claimer will use already open, so a warm claim costs no
		// harness write. (A terminal harness has no sessions.)
		var hs protocol.SessionInfo
		if hs, err = o.harness.createSession(ctx, targetOf(sb, bsb, ""), protocol.CreateSessionRequest{}); err != nil {
			o.markSandbox(keep, sb.ID, store.SandboxFailed, err.Error())
			o.destroyUnusable(keep, bsb, "destroy sandbox whose harness opens no session")
			return sb, sandboxes.Sandbox{}, fmt.Errorf("provision sandbox for agent %s: %w", a.Name, err)
		}
		harnessSession = hs.ID
	}
	raw, err := json.Marshal(bsb)
	if err == nil {
		sb, err = o.store.UpdateSandbox(keep, sb.ID, func(x *store.Sandbox) error {
			x.State, x.Backend, x.HarnessSessionID = state, raw, harnessSession
			return nil
		})
	}
	if err != nil {
		o.destroyUnusable(keep, bsb, "destroy unrecorded sandbox")
		return sb, sandboxes.Sandbox{}, err
	}
	o.log.Info("sandbox provisioned", "sandbox", sb.ID, "agent", a.Name, "role", role, "session", sessionID)
	return sb, bsb, nil
}

// recordSandbox stores the record of a sandbox about to be provisioned,
// with the harness token it will be given.
func (o *orchestrator) recordSandbox(ctx context.Context, a store.Agent, role, sessionID string) (store.Sandbox, error) {
	token := make([]byte, 24)
	rand.Read(token)
	return o.store.PutSandbox(ctx, store.Sandbox{
		ID:           store.NewID(),
		AgentID:      a.ID,
		Generation:   a.Generation,
		Role:         role,
		State:        store.SandboxProvisioning,
		SessionID:    sessionID,
		HarnessToken: hex.EncodeToString(token),
	})
}

// destroyUnusable destroys a sandbox the backend provisioned but lapd
// cannot use; a failure is logged as what (the sandbox's record is
// failed, or still provisioning, which start-up recovery retires).
func (o *orchestrator) destroyUnusable(ctx context.Context, bsb sandboxes.Sandbox, what string) {
	if err := o.backend.Destroy(ctx, bsb); err != nil {
		o.log.Error(what, "sandbox", bsb.ID, "err", err)
	}
}

// provisionWarm adds one warm sandbox to agent a's pool. It is the seam
// for the warm-pool manager (which decides when and how many).
func (o *orchestrator) provisionWarm(ctx context.Context, a store.Agent) (store.Sandbox, error) {
	sb, _, err := o.provisionSandbox(ctx, a, sandboxes.RoleWarm, "")
	return sb, err
}

func (o *orchestrator) markSandbox(ctx context.Context, id, state, reason string) {
	if _, err := o.store.UpdateSandbox(ctx, id, func(x *store.Sandbox) error {
		x.State, x.Error = state, reason
		return nil
	}); err != nil {
		o.log.Error("record sandbox state", "sandbox", id, "state", state, "err", err)
	}
}

// retireSandbox destroys a sandbox in the background and records it.
func (o *orchestrator) retireSandbox(sb store.Sandbox, reason string) {
	o.goBackground(func(ctx context.Context) {
		if err := o.destroySandbox(ctx, sb); err != nil {
			o.log.Warn("retire sandbox", "sandbox", sb.ID, "reason", reason, "err", err)
		}
	})
}

// destroySandbox destroys a sandbox on the backend and marks it destroyed,
// which also revokes its gateway token.
func (o *orchestrator) destroySandbox(ctx context.Context, sb store.Sandbox) error {
	// Revoke first: the token must die even if the backend is slow.
	o.markSandbox(context.WithoutCancel(ctx), sb.ID, store.SandboxDestroyed, "")
	if len(sb.Backend) == 0 {
		// Never provisioned (or the record was lost): the backend may
		// still hold it by id.
		return o.backend.Destroy(ctx, sandboxes.Sandbox{ID: sb.ID, AgentID: sb.AgentID, Generation: sb.Generation})
	}
	bsb, err := backendRecord(sb)
	if err != nil {
		return err
	}
	return o.backend.Destroy(ctx, bsb)
}

func backendRecord(sb store.Sandbox) (sandboxes.Sandbox, error) {
	var bsb sandboxes.Sandbox
	if len(sb.Backend) == 0 {
		return bsb, fmt.Errorf("sandbox %s has no backend record", sb.ID)
	}
	if err := json.Unmarshal(sb.Backend, &bsb); err != nil {
		return bsb, fmt.Errorf("sandbox %s: decode backend record: %w", sb.ID, err)
	}
	return bsb, nil
}

func targetOf(sb store.Sandbox, bsb sandboxes.Sandbox, harnessSession string) target {
	return target{sandboxID: sb.ID, endpoint: bsb.Endpoint, token: sb.HarnessToken, sessionID: harnessSession}
}
