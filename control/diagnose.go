package control

import (
	"context"
	"fmt"
	"slices"
	"time"

	"lap.dev/lap/control/api"
	"lap.dev/lap/store"
)

// timeline merges the session's status/phase log with its messages.
func (o *orchestrator) timeline(ctx context.Context, id string) ([]api.LogEntry, error) {
	entries, err := o.store.ListLog(ctx, id, 0)
	if err != nil {
		return nil, err
	}
	out := make([]api.LogEntry, 0, len(entries))
	for _, e := range entries {
		out = append(out, api.LogEntry(e))
	}
	msgs, err := o.store.ListMessages(ctx, id, 0, 0)
	if err != nil {
		return nil, err
	}
	for _, m := range msgs {
		line := fmt.Sprintf("%s message %d %s", m.Role, m.Seq, m.Status)
		if m.Error != nil {
			line += fmt.Sprintf(": %s: %s", m.Error.Name, m.Error.Message)
		}
		out = append(out, api.LogEntry{Time: m.UpdatedAt, Kind: "message", Message: line})
	}
	slices.SortStableFunc(out, func(a, b api.LogEntry) int { return a.Time.Compare(b.Time) })
	return out, nil
}

// diagnose gathers everything known about why session sess is (not)
// working: its agent, timeline, messages, sandbox and harness, and hints
// on what to do.
func (o *orchestrator) diagnose(ctx context.Context, sess store.Session) (api.Diagnosis, error) {
	var err error
	d := api.Diagnosis{Session: o.apiSession(ctx, sess, "")}
	if a, err := o.store.GetAgent(ctx, sess.AgentID); err == nil {
		d.Agent = apiAgent(a)
	} else {
		d.Hints = append(d.Hints, "the session's agent no longer exists")
	}
	if d.Timeline, err = o.timeline(ctx, sess.ID); err != nil {
		return d, err
	}
	msgs, err := o.store.ListMessages(ctx, sess.ID, 0, 0)
	if err != nil {
		return d, err
	}
	d.Messages = make([]api.MessageStatus, 0, len(msgs))
	for _, m := range msgs {
		ms := api.MessageStatus{Seq: m.Seq, Role: m.Role, Status: m.Status}
		if rm := renderMessage(m); rm.Info.Error != nil {
			ms.Error = rm.Info.Error.Name + ": " + rm.Info.Error.Message
		}
		d.Messages = append(d.Messages, ms)
	}
	if sess.SandboxID != "" {
		o.diagnoseSandbox(ctx, &d, sess)
	}
	switch sess.Status {
	case api.SessionFailed:
		d.Hints = append(d.Hints, fmt.Sprintf("the session failed (%s); POST %s/sessions/%s/restart starts it on a new sandbox with its history", sess.FailureReason, api.BasePath, sess.ID))
	case api.SessionCreating:
		d.Hints = append(d.Hints, fmt.Sprintf("the session is being created (phase %q); it fails if not ready within SESSION_CREATING_TIMEOUT (%s)", sess.Phase, o.cfg.SessionCreatingTimeout))
	case api.SessionIdle:
		d.Hints = append(d.Hints, "the sandbox is scaled to zero; the next message resumes it")
	}
	if o.turnRunning(sess.ID) {
		d.Hints = append(d.Hints, "a turn is running now")
	}
	return d, nil
}

// diagnoseSandbox adds what the store, the backend and the harness say
// about the session's sandbox; each probe is bounded.
func (o *orchestrator) diagnoseSandbox(ctx context.Context, d *api.Diagnosis, sess store.Session) {
	sb, err := o.store.GetSandbox(ctx, sess.SandboxID)
	if err != nil {
		d.Hints = append(d.Hints, "the session's sandbox record is missing: "+err.Error())
		return
	}
	d.Sandbox = map[string]any{"id": sb.ID, "state": sb.State, "role": sb.Role, "generation": sb.Generation,
		"created_at": sb.CreatedAt, "updated_at": sb.UpdatedAt, "backend": o.backend.Name()}
	if sb.Error != "" {
		d.Sandbox["error"] = sb.Error
	}
	bsb, err := backendRecord(sb)
	if err != nil {
		d.Hints = append(d.Hints, err.Error())
		return
	}
	d.Sandbox["running"], d.Sandbox["endpoint"] = bsb.Running, bsb.Endpoint.URL
	probe, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if logs, err := o.backend.Logs(probe, bsb, 4096); err == nil {
		d.LogTail = logs
	} else {
		d.Sandbox["logs_error"] = err.Error()
	}
	if !bsb.Running {
		return
	}
	if id, err := o.harness.identity(probe, targetOf(sb, bsb, "")); err == nil {
		d.Harness = map[string]any{"reachable": true, "harness": id.Harness, "version": id.Version, "ready": id.Ready, "workspace": id.Workspace}
		if id.Error != "" {
			d.Harness["error"] = id.Error
			d.Hints = append(d.Hints, "the harness reports: "+id.Error)
		}
	} else {
		d.Harness = map[string]any{"reachable": false, "error": err.Error()}
		d.Hints = append(d.Hints, "the harness does not answer; the next message restarts it")
	}
}
