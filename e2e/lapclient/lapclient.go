// Package lapclient makes exactly the calls the LiteLLM Agent Platform's
// own CLI (`@berriai/lap-cli` 0.0.4, cli/bin/lap.mjs) makes, in its order
// (shared/reference/lap-contract.md), so tests can hold lapd to serving
// LAP's users unchanged: only their base URL points at lapd (lapd's
// address plus api.LAPPrefix). It reads the answers as loosely as the CLI
// does (a bare array or {data}, fields it does not know ignored) and keeps
// a log of its requests to compare with the CLI's sequence.
//
// The picker and TTY mode are steps of their own (Agents, Mode, and the
// session's TTYURL/TTYToken) for a TTY client to build on.
package lapclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// apiPath is where LAP's CLI finds the managed-agents API below its base.
const apiPath = "/api/v1/managed_agents"

// Client is LAP's CLI's view of a server: ~/.lap/config.json's base and
// key.
type Client struct {
	Base, Key string
	// HTTP does the requests; nil: http.DefaultClient.
	HTTP *http.Client
	// PollEvery is the pause between two reads of a creating session
	// (1.5 s in the CLI); PollTimes how many reads it makes (60).
	PollEvery time.Duration
	PollTimes int
	// Phases, when set, is told each phase change seen while waiting, as
	// the CLI prints them.
	Phases func(phase string)

	mu  sync.Mutex
	log []string
}

// Agent is what the CLI reads of an agent.
type Agent struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	HarnessID   string `json:"harness_id"`
	SupportsTUI *bool  `json:"supports_tui"`
}

// Session is what the CLI reads of a session.
type Session struct {
	ID               string `json:"id"`
	Status           string `json:"status"`
	Phase            string `json:"phase"`
	PhaseDetail      string `json:"phase_detail"`
	FailureReason    string `json:"failure_reason"`
	SandboxURL       string `json:"sandbox_url"`
	HarnessSessionID string `json:"harness_session_id"`
	SupportsTUI      *bool  `json:"supports_tui"`
	TTYURL           string `json:"tty_url"`
	TTYToken         string `json:"tty_token"`
}

// Reply is what the REPL prints of an answer: its text parts, output
// tokens and cost.
type Reply struct {
	Text         string
	OutputTokens int64
	Cost         float64
}

// Modes a session is used in.
const (
	ModeREPL = "repl"
	ModeTTY  = "tty"
)

// fallbackTUI is the CLI's own list of TUI harnesses, used when an agent
// does not say.
var fallbackTUI = []string{"claude-code", "codex", "hermes", "gemini"}

// Log returns "METHOD /path" of every request so far, the path below the
// base, in order.
func (c *Client) Log() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.log...)
}

// Agents is GET …/agents, the first page only, as the picker and `lap
// <agent>` read it.
func (c *Client) Agents(ctx context.Context) ([]Agent, error) {
	var raw json.RawMessage
	if _, err := c.do(ctx, http.MethodGet, apiPath+"/agents", nil, &raw); err != nil {
		return nil, err
	}
	var page struct {
		Data []Agent `json:"data"`
	}
	if err := json.Unmarshal(raw, &page); err == nil && page.Data != nil {
		return page.Data, nil
	}
	var bare []Agent
	if err := json.Unmarshal(raw, &bare); err != nil {
		return nil, fmt.Errorf("read agents: %w", err)
	}
	return bare, nil
}

// TUIAgents is the picker's list: agents whose supports_tui is true, or,
// when an agent does not say, whose harness is on the CLI's own list.
func TUIAgents(agents []Agent) []Agent {
	var out []Agent
	for _, a := range agents {
		if a.SupportsTUI != nil && *a.SupportsTUI || a.SupportsTUI == nil && slices.Contains(fallbackTUI, a.HarnessID) {
			out = append(out, a)
		}
	}
	return out
}

// Open is `lap <agent name or id>` up to the mode choice: it finds the
// agent, creates a session titled "lap-cli" and reads it until it is
// ready (failed, dead or stopped end the wait with an error naming its
// status, phase and reason).
func (c *Client) Open(ctx context.Context, ref string) (Agent, Session, error) {
	agents, err := c.Agents(ctx)
	if err != nil {
		return Agent{}, Session{}, err
	}
	var agent *Agent
	for i, a := range agents {
		if a.Name == ref || a.ID == ref {
			agent = &agents[i]
			break
		}
	}
	if agent == nil {
		return Agent{}, Session{}, fmt.Errorf("agent %q not found", ref)
	}
	var created Session
	if _, err := c.do(ctx, http.MethodPost, apiPath+"/agents/"+agent.ID+"/session", map[string]string{"title": "lap-cli"}, &created); err != nil {
		return *agent, Session{}, err
	}
	every, times := c.PollEvery, c.PollTimes
	if every <= 0 {
		every = 1500 * time.Millisecond
	}
	if times <= 0 {
		times = 60
	}
	phase := ""
	for i := 0; i < times; i++ {
		sess, err := c.Session(ctx, created.ID)
		if err != nil {
			return *agent, sess, err
		}
		if sess.Phase != phase && c.Phases != nil {
			c.Phases(sess.Phase)
		}
		phase = sess.Phase
		switch sess.Status {
		case "ready":
			return *agent, sess, nil
		case "failed", "dead", "stopped":
			return *agent, sess, fmt.Errorf("session %s is %s (phase %q, %s): %s", sess.ID, sess.Status, sess.Phase, sess.PhaseDetail, sess.FailureReason)
		}
		select {
		case <-ctx.Done():
			return *agent, sess, ctx.Err()
		case <-time.After(every):
		}
	}
	return *agent, created, fmt.Errorf("session %s was not ready after %d reads", created.ID, times)
}

// Mode is the CLI's choice for a session opened with `lap <ref>`:
// supports_tui of the agent, else of the session, decides; unknown, an
// id given as the argument means TTY mode.
func Mode(agent Agent, sess Session, refWasID bool) string {
	for _, tui := range []*bool{agent.SupportsTUI, sess.SupportsTUI} {
		if tui != nil {
			if *tui {
				return ModeTTY
			}
			return ModeREPL
		}
	}
	if refWasID {
		return ModeTTY
	}
	return ModeREPL
}

// Session is GET …/sessions/<id>.
func (c *Client) Session(ctx context.Context, id string) (Session, error) {
	var sess Session
	_, err := c.do(ctx, http.MethodGet, apiPath+"/sessions/"+id, nil, &sess)
	return sess, err
}

// Resume is `lap --resume <id | <base>/sessions/<id>>`: the session, and
// the mode to use it in; anything but ready is refused ("session is
// <status>").
func (c *Client) Resume(ctx context.Context, ref string) (Session, string, error) {
	id := ref
	if i := strings.LastIndex(ref, "/sessions/"); i >= 0 {
		id = strings.Trim(ref[i+len("/sessions/"):], "/")
	}
	sess, err := c.Session(ctx, id)
	if err != nil {
		return sess, "", err
	}
	if sess.Status != "ready" {
		return sess, "", fmt.Errorf("session is %s", sess.Status)
	}
	mode := ModeREPL
	if sess.SupportsTUI != nil && *sess.SupportsTUI || sess.SupportsTUI == nil && sess.TTYURL != "" {
		mode = ModeTTY
	}
	return sess, mode, nil
}

// REPL is the CLI's chat with a REPL-mode session.
type REPL struct {
	c                  *Client
	sessionID, harness string
	// Skills is false when the server has no skills (GET /api/v1/skills
	// answered 404).
	Skills bool
}

// StartREPL starts the chat as the CLI does: GET /api/v1/skills (a 404
// means none), then the session's harness_session_id, read once.
func (c *Client) StartREPL(ctx context.Context, sessionID string) (*REPL, error) {
	status, err := c.do(ctx, http.MethodGet, "/api/v1/skills", nil, nil)
	if err != nil && status != http.StatusNotFound {
		return nil, err
	}
	sess, err := c.Session(ctx, sessionID)
	if err != nil {
		return nil, err
	}
	if sess.HarnessSessionID == "" {
		return nil, fmt.Errorf("session %s has no harness_session_id", sessionID)
	}
	return &REPL{c: c, sessionID: sessionID, harness: sess.HarnessSessionID, Skills: status != http.StatusNotFound}, nil
}

// Send is one line typed: POST …/sessions/<id>/opencode/session/<harness
// session id>/message with {"parts":[{"type":"text","text":…}]}, read as
// {info, parts}.
func (r *REPL) Send(ctx context.Context, text string) (Reply, error) {
	body := map[string]any{"parts": []map[string]string{{"type": "text", "text": text}}}
	var msg struct {
		Info struct {
			Tokens struct {
				Output int64 `json:"output"`
			} `json:"tokens"`
			Cost float64 `json:"cost"`
		} `json:"info"`
		Parts []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		} `json:"parts"`
	}
	if _, err := r.c.do(ctx, http.MethodPost, apiPath+"/sessions/"+r.sessionID+"/opencode/session/"+r.harness+"/message", body, &msg); err != nil {
		return Reply{}, err
	}
	var texts []string
	for _, p := range msg.Parts {
		if p.Type == "text" {
			texts = append(texts, p.Text)
		}
	}
	return Reply{Text: strings.Join(texts, ""), OutputTokens: msg.Info.Tokens.Output, Cost: msg.Info.Cost}, nil
}

// StatusError is a non-2xx answer.
type StatusError struct {
	Status int
	Body   string
}

// Error implements error.
func (e *StatusError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.Status, e.Body) }

// do sends one request, as the CLI does (Bearer key, JSON body), and
// decodes a 2xx JSON answer into out (if not nil). It returns the status.
func (c *Client) do(ctx context.Context, method, path string, in, out any) (int, error) {
	c.mu.Lock()
	c.log = append(c.log, method+" "+path)
	c.mu.Unlock()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.Base, "/")+path, body)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.Key)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return resp.StatusCode, fmt.Errorf("%s %s: %w", method, path, &StatusError{resp.StatusCode, strings.TrimSpace(string(data))})
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: read answer: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

// IsStatus reports whether err is an answer with that status.
func IsStatus(err error, status int) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Status == status
}
