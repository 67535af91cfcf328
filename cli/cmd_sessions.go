package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"lap.dev/lap/control/api"
)

// sessionsCmd groups `lap sessions …`; bare `lap sessions` lists them.
type sessionsCmd struct {
	List   sessionsListCmd   `cmd:"" default:"withargs" aliases:"ls" help:"List sessions (the default)."`
	Get    sessionsGetCmd    `cmd:"" aliases:"show" help:"Show one session."`
	Delete sessionsDeleteCmd `cmd:"" aliases:"rm" help:"End sessions and destroy their sandboxes."`
}

type sessionsListCmd struct {
	Agent  string `help:"Only sessions of this agent (name or id)." placeholder:"AGENT"`
	Status string `help:"Only sessions in this status: creating, ready, idle, failed or dead." enum:"creating,ready,idle,failed,dead," default:"" placeholder:"STATUS"`
	JSON   bool   `help:"Print JSON."`
}

// Run lists sessions as a table.
func (c *sessionsListCmd) Run(ctx context.Context, a *app) error {
	cl, err := a.client()
	if err != nil {
		return err
	}
	agentID := ""
	if c.Agent != "" {
		ag, err := findAgent(ctx, cl, c.Agent)
		if err != nil {
			return err
		}
		agentID = ag.ID
	}
	sessions, err := cl.ListSessions(ctx, agentID, c.Status)
	if err != nil {
		return err
	}
	if c.JSON {
		if sessions == nil {
			sessions = []api.Session{}
		}
		return writeJSON(a.out, sessions)
	}
	if len(sessions) == 0 {
		fmt.Fprintln(a.out, "no sessions; open one with: lap <agent>")
		return nil
	}
	names := agentNames(ctx, cl, sessions)
	t := newTable(a.out, "ID", "AGENT", "STATUS", "PHASE", "LAST ACTIVE", "TOKENS", "COST", "TITLE")
	now := a.env.Now()
	for _, s := range sessions {
		t.row(shortID(s.ID), names(s), s.Status, orDash(s.Phase), ago(now, s.LastActiveAt),
			thousands(s.Usage.InputTokens+s.Usage.OutputTokens), dollars(s.Usage.CostUSD), orDash(truncate(s.Title, 40)))
	}
	return t.flush()
}

// agentNames returns a function naming a session's agent: agent_name when
// the server sends it, else looked up once in the agent list.
func agentNames(ctx context.Context, cl *Client, sessions []api.Session) func(api.Session) string {
	byID := map[string]string{}
	for _, s := range sessions {
		if s.AgentName == "" {
			if agents, err := cl.ListAgents(ctx, ""); err == nil {
				for _, ag := range agents {
					byID[ag.ID] = ag.Name
				}
			}
			break
		}
	}
	return func(s api.Session) string {
		switch {
		case s.AgentName != "":
			return s.AgentName
		case byID[s.AgentID] != "":
			return byID[s.AgentID]
		}
		return shortID(s.AgentID)
	}
}

type sessionsGetCmd struct {
	Session string `arg:"" help:"Session id or a unique prefix (8 hex digits are plenty)."`
	JSON    bool   `help:"Print JSON."`
}

// Run shows one session.
func (c *sessionsGetCmd) Run(ctx context.Context, a *app) error {
	cl, err := a.client()
	if err != nil {
		return err
	}
	s, err := findSession(ctx, cl, c.Session)
	if err != nil {
		return err
	}
	if c.JSON {
		return writeJSON(a.out, s)
	}
	printSession(a.out, s, resumeID(ctx, cl, s), a)
	return nil
}

func printSession(w io.Writer, s api.Session, resumeID string, a *app) {
	now := a.env.Now()
	fmt.Fprintf(w, "id           %s\n", s.ID)
	agent := shortID(s.AgentID)
	if s.AgentName != "" {
		agent = s.AgentName + " (" + agent + ")"
	}
	fmt.Fprintf(w, "agent        %s\n", agent)
	if s.Title != "" {
		fmt.Fprintf(w, "title        %s\n", s.Title)
	}
	fmt.Fprintf(w, "status       %s\n", s.Status)
	if s.Phase != "" {
		fmt.Fprintf(w, "phase        %s\n", s.Phase)
	}
	if s.FailureReason != "" {
		fmt.Fprintf(w, "failure      %s\n", s.FailureReason)
	}
	if s.SandboxID != "" {
		fmt.Fprintf(w, "sandbox      %s\n", shortID(s.SandboxID))
	}
	fmt.Fprintf(w, "usage        %s in / %s out tokens, %s, %d requests\n",
		thousands(s.Usage.InputTokens), thousands(s.Usage.OutputTokens), dollars(s.Usage.CostUSD), s.Usage.Requests)
	fmt.Fprintf(w, "created      %s\n", ago(now, s.CreatedAt))
	fmt.Fprintf(w, "last active  %s\n", ago(now, s.LastActiveAt))
	if s.Status != api.SessionDead {
		fmt.Fprintf(w, "resume with  lap resume %s\n", resumeID)
	}
}

type sessionsDeleteCmd struct {
	Sessions []string `arg:"" name:"session" help:"Session ids or unique prefixes."`
}

// Run deletes each session; deleting is idempotent on the server.
func (c *sessionsDeleteCmd) Run(ctx context.Context, a *app) error {
	cl, err := a.client()
	if err != nil {
		return err
	}
	for _, id := range c.Sessions {
		s, err := findSession(ctx, cl, id)
		if err != nil {
			return err
		}
		if err := cl.DeleteSession(ctx, s.ID); err != nil {
			return fmt.Errorf("delete session %s: %w", shortID(s.ID), err)
		}
		fmt.Fprintf(a.out, "✓ session %s deleted\n", shortID(s.ID))
	}
	return nil
}

// findSession accepts a full id or a unique prefix of one (8 hex digits
// or more, with or without dashes), which is what lap prints. The server
// resolves it: one request, however many sessions there are.
func findSession(ctx context.Context, cl *Client, idOrPrefix string) (api.Session, error) {
	hex := strings.ReplaceAll(idOrPrefix, "-", "")
	switch {
	case hex == "":
		return api.Session{}, withCode(ExitUsage, errors.New("empty session id"))
	case len(hex) < 8:
		return api.Session{}, withCode(ExitUsage, fmt.Errorf("session id %s is too short: give at least its first 8 hex digits (lap sessions lists them)", idOrPrefix))
	}
	s, err := cl.GetSession(ctx, idOrPrefix)
	switch {
	case isStatus(err, 404):
		return api.Session{}, withCode(ExitNotFound, fmt.Errorf("session %s not found (lap sessions lists them)", idOrPrefix))
	case isStatus(err, 409):
		// The server's message lists the sessions the prefix names.
		return api.Session{}, withCode(ExitUsage, err)
	}
	return s, err
}

// resumeID is how lap names session s for `lap resume`: its 8 hex digits
// when the server resolves them to s alone (ids are random, so they
// nearly always do), else its full id.
func resumeID(ctx context.Context, cl *Client, s api.Session) string {
	short := shortID(s.ID)
	if got, err := cl.GetSession(ctx, short); err == nil && got.ID == s.ID {
		return short
	}
	return s.ID
}

type logsCmd struct {
	Session string `arg:"" help:"Session id or a unique prefix."`
	JSON    bool   `help:"Print JSON."`
}

// Run prints the session's timeline.
func (c *logsCmd) Run(ctx context.Context, a *app) error {
	cl, err := a.client()
	if err != nil {
		return err
	}
	s, err := findSession(ctx, cl, c.Session)
	if err != nil {
		return err
	}
	entries, err := cl.Log(ctx, s.ID)
	if err != nil {
		return err
	}
	if c.JSON {
		if entries == nil {
			entries = []api.LogEntry{}
		}
		return writeJSON(a.out, entries)
	}
	printTimeline(a.out, entries)
	return nil
}

func printTimeline(w io.Writer, entries []api.LogEntry) {
	for _, e := range entries {
		fmt.Fprintf(w, "%s  %-8s  %s\n", e.Time.UTC().Format("2006-01-02 15:04:05.000Z"), e.Kind, e.Message)
	}
}

type diagnoseCmd struct {
	Session string `arg:"" help:"Session id or a unique prefix."`
	JSON    bool   `help:"Print the server's whole diagnosis as JSON."`
}

// Run explains the session's state: status, failure, hints, the last of
// the timeline and of the harness log.
func (c *diagnoseCmd) Run(ctx context.Context, a *app) error {
	cl, err := a.client()
	if err != nil {
		return err
	}
	s, err := findSession(ctx, cl, c.Session)
	if err != nil {
		return err
	}
	d, raw, err := cl.Diagnose(ctx, s.ID)
	if err != nil {
		return err
	}
	if c.JSON {
		_, err := a.out.Write(append(raw, '\n'))
		return err
	}
	w := a.out
	fmt.Fprintf(w, "session %s of agent %s: %s", shortID(d.Session.ID), orDash(d.Agent.Name), d.Session.Status)
	if d.Session.Phase != "" {
		fmt.Fprintf(w, " (%s)", d.Session.Phase)
	}
	fmt.Fprintln(w)
	if d.Session.FailureReason != "" {
		fmt.Fprintf(w, "failure: %s\n", d.Session.FailureReason)
	}
	fmt.Fprintf(w, "harness %s, model %s\n", orDash(d.Agent.HarnessID), orDash(d.Agent.Model))
	if len(d.Hints) > 0 {
		fmt.Fprintln(w, "\nhints:")
		for _, h := range d.Hints {
			fmt.Fprintf(w, "  - %s\n", h)
		}
	}
	var bad []api.MessageStatus
	for _, m := range d.Messages {
		if m.Status != "" && m.Status != "completed" {
			bad = append(bad, m)
		}
	}
	fmt.Fprintf(w, "\nmessages: %d", len(d.Messages))
	if len(bad) > 0 {
		fmt.Fprintf(w, ", not completed:")
	}
	fmt.Fprintln(w)
	for _, m := range bad {
		fmt.Fprintf(w, "  #%d %s %s %s\n", m.Seq, m.Role, m.Status, m.Error)
	}
	if n := len(d.Timeline); n > 0 {
		const tail = 15
		fmt.Fprintln(w, "\ntimeline (last entries):")
		printTimeline(w, d.Timeline[max(0, n-tail):])
	}
	if d.LogTail != "" {
		fmt.Fprintln(w, "\nharness log (tail):")
		for _, line := range strings.Split(strings.TrimRight(d.LogTail, "\n"), "\n") {
			fmt.Fprintf(w, "  %s\n", line)
		}
	}
	fmt.Fprintln(w, "\n(lap diagnose --json shows everything)")
	return nil
}

type harnessesCmd struct {
	JSON bool `help:"Print JSON."`
}

// Run lists the server's harnesses.
func (c *harnessesCmd) Run(ctx context.Context, a *app) error {
	cl, err := a.client()
	if err != nil {
		return err
	}
	hs, err := cl.Harnesses(ctx)
	if err != nil {
		return err
	}
	if c.JSON {
		if hs == nil {
			hs = []api.Harness{}
		}
		return writeJSON(a.out, hs)
	}
	t := newTable(a.out, "ID", "CHAT", "DESCRIPTION")
	for _, h := range hs {
		chat := "no"
		if h.Chat {
			chat = "yes"
		}
		t.row(h.ID, chat, h.Description)
	}
	return t.flush()
}
