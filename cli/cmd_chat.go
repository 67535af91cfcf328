package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"lap.dev/lap/control/api"
	"lap.dev/lap/sandboxes/protocol"
)

// chatCmd is `lap <agent>` (also `lap chat <agent>`): open a session and
// chat with the agent.
type chatCmd struct {
	Agent   string `arg:"" help:"Agent name or id."`
	Message string `short:"m" help:"Send this one message, print the reply and exit." placeholder:"TEXT"`
	Rm      bool   `help:"Delete the session when chat mode ends (default: keep it for lap resume)."`
	Title   string `help:"Title of the new session." placeholder:"TEXT"`
}

// Help documents the modes and the name rule.
func (chatCmd) Help() string {
	return "On a terminal lap <agent> opens chat mode: each line you type is one message and the reply " +
		"streams back. Ctrl-C during a reply aborts it; Ctrl-D, or Ctrl-C at an empty prompt, leaves and " +
		"prints how to resume. With -m, or with stdin not a terminal, each message (each input line) is sent " +
		"in turn and only the replies go to stdout; progress goes to stderr.\n\n" +
		"A word that names a lap command (agents, sessions, login, …) is that command: chat with an agent " +
		"of such a name as lap chat <name>."
}

// Run opens the session and chats.
func (c *chatCmd) Run(ctx context.Context, a *app) error {
	cl, err := a.client()
	if err != nil {
		return err
	}
	ch := newChat(a, cl, c.Message != "" || !a.inTTY, c.Rm)
	ag, err := findAgent(ctx, cl, c.Agent)
	if err != nil {
		return err
	}
	if err := ch.useAgent(ctx, ag); err != nil {
		return err
	}
	if err := ch.terminalOnly(c.Message); err != nil {
		return err
	}
	s, err := cl.CreateSession(ctx, ag.ID, api.CreateSessionRequest{Title: c.Title})
	if err != nil {
		return fmt.Errorf("open a session with %s: %w", ag.Name, err)
	}
	ch.session = s
	fmt.Fprintf(ch.status, "%s session %s\n", ch.st.green("✓"), shortID(s.ID))
	if ch.terminal {
		return ch.attach(ctx, true)
	}
	return ch.run(ctx, c.Message, true)
}

// resumeCmd is `lap resume <session>`.
type resumeCmd struct {
	Session string `arg:"" help:"Session id or a unique prefix (the 8 hex digits lap prints)."`
	Message string `short:"m" help:"Send this one message, print the reply and exit." placeholder:"TEXT"`
	Rm      bool   `help:"Delete the session when chat mode ends."`
}

// Run reopens chat mode on an existing session: the same conversation, its
// sandbox resumed transparently by the next message if it was idle.
func (c *resumeCmd) Run(ctx context.Context, a *app) error {
	cl, err := a.client()
	if err != nil {
		return err
	}
	ch := newChat(a, cl, c.Message != "" || !a.inTTY, c.Rm)
	s, err := findSession(ctx, cl, c.Session)
	if err != nil {
		return err
	}
	switch s.Status {
	case api.SessionDead:
		return withCode(ExitFailed, fmt.Errorf("session %s has ended; open a new one with lap <agent>", shortID(s.ID)))
	case api.SessionFailed:
		return withCode(ExitFailed, fmt.Errorf("session %s failed: %s (lap diagnose %s explains)", shortID(s.ID), orDash(s.FailureReason), shortID(s.ID)))
	}
	ag, err := cl.GetAgent(ctx, s.AgentID)
	if err != nil {
		return fmt.Errorf("agent of session %s: %w", shortID(s.ID), err)
	}
	if err := ch.useAgent(ctx, ag); err != nil {
		return err
	}
	ch.session = s
	if ch.terminal {
		if err := ch.terminalOnly(c.Message); err != nil {
			return err
		}
		fmt.Fprintf(ch.status, "%s session %s (resumed)\n", ch.st.green("✓"), shortID(s.ID))
		return ch.attach(ctx, s.Status == api.SessionCreating)
	}
	msgs, err := cl.Messages(ctx, s.ID)
	if err != nil {
		return fmt.Errorf("read the conversation of session %s: %w", shortID(s.ID), err)
	}
	fmt.Fprintf(ch.status, "%s session %s (resumed, %d messages)\n", ch.st.green("✓"), shortID(s.ID), len(msgs))
	if !ch.script {
		ch.recap(msgs)
	}
	return ch.run(ctx, c.Message, s.Status == api.SessionCreating)
}

// chat is one chat-mode run on one session.
type chat struct {
	a       *app
	cl      *Client
	agent   api.Agent
	session api.Session
	script  bool // -m or stdin not a terminal: replies to stdout, the rest to stderr
	rm      bool
	// terminal: the agent's harness is a terminal UI (terminal mode,
	// attach.go) rather than a chat API.
	terminal bool
	status   io.Writer
	st       style
	md       *markdown
}

func newChat(a *app, cl *Client, script, rm bool) *chat {
	ch := &chat{a: a, cl: cl, script: script, rm: rm, status: a.out}
	statusTTY := a.outTTY
	if script {
		ch.status = a.errOut
		statusTTY = isTerminal(a.errOut)
	}
	ch.st = style{color: statusTTY && a.env.Getenv("NO_COLOR") == ""}
	if a.outTTY {
		ch.md = newMarkdown(a.env.Getenv, a.width())
	}
	return ch
}

// useAgent prints the agent line and refuses harnesses without a chat API.
func (ch *chat) useAgent(ctx context.Context, ag api.Agent) error {
	ch.agent = ag
	fmt.Fprintf(ch.status, "%s agent %s (%s, harness=%s)\n", ch.st.green("✓"), ag.Name, shortID(ag.ID), ag.HarnessID)
	hs, err := ch.cl.Harnesses(ctx)
	if err != nil {
		return fmt.Errorf("list harnesses: %w", err)
	}
	i := slices.IndexFunc(hs, func(h api.Harness) bool { return h.ID == ag.HarnessID })
	switch {
	case i < 0:
		return withCode(ExitUsage, fmt.Errorf("agent %s uses harness %q, which this server does not know (lap harnesses lists them)", ag.Name, ag.HarnessID))
	case !hs[i].Chat && hs[i].SupportsTUI:
		ch.terminal = true
	case !hs[i].Chat:
		return withCode(ExitUsage, fmt.Errorf("agent %s uses harness %s, which has no chat API: it needs a terminal of its own, so lap cannot open chat mode with it", ag.Name, ag.HarnessID))
	}
	return nil
}

// terminalOnly refuses what terminal mode cannot do: a message sent
// without a terminal (-m, or stdin not a terminal).
func (ch *chat) terminalOnly(message string) error {
	if !ch.terminal {
		return nil
	}
	if message != "" || !ch.a.inTTY || !ch.a.outTTY {
		return withCode(ExitUsage, fmt.Errorf("agent %s runs a terminal agent (%s): it takes no messages; attach to it from a terminal with lap %s", ch.agent.Name, ch.agent.HarnessID, ch.agent.Name))
	}
	return nil
}

// recap shows the end of the conversation so far when resuming.
func (ch *chat) recap(msgs []api.Message) {
	const last = 2
	if len(msgs) == 0 {
		return
	}
	start := max(0, len(msgs)-last)
	if start > 0 {
		fmt.Fprintln(ch.status, ch.st.dim(fmt.Sprintf("… %d earlier messages", start)))
	}
	for _, m := range msgs[start:] {
		text := paragraphs(m)
		if text == "" {
			continue
		}
		if m.Info.Role == "user" {
			fmt.Fprintln(ch.a.out, "> "+text)
			continue
		}
		fmt.Fprintln(ch.a.out, ch.md.render(text))
		if e := m.Info.Error; e != nil {
			fmt.Fprintln(ch.status, ch.st.dim("("+strings.ToLower(e.Name)+": "+e.Message+")"))
		}
	}
}

// paragraphs is a message's text parts, each its own paragraph: parts
// that a turn's tool calls separated must not run into one another.
func paragraphs(m api.Message) string {
	var texts []string
	for _, p := range m.Parts {
		if t := strings.TrimSpace(p.Text); p.Type == protocol.PartText && t != "" {
			texts = append(texts, t)
		}
	}
	return strings.Join(texts, "\n\n")
}

// run waits for the sandbox if asked, then chats in the mode that fits and
// finally keeps or deletes the session.
func (ch *chat) run(ctx context.Context, message string, wait bool) (err error) {
	defer func() { err = ch.end(err) }()
	if wait {
		s, err := ch.waitReady(ctx)
		if err != nil {
			return err
		}
		ch.session = s
	}
	switch {
	case message != "":
		return ch.oneShot(ctx, message)
	case ch.script:
		return ch.lines(ctx)
	}
	return ch.repl(ctx)
}

// end deletes the session with --rm, or says how to resume it.
func (ch *chat) end(err error) error {
	id := shortID(ch.session.ID)
	var ee *exitError
	if errors.As(err, &ee) && ee.code == ExitFailed && ch.session.Status == api.SessionFailed {
		return err // a failed session cannot be resumed; the error says so
	}
	if isStatus(err, 404) {
		return err // the session is gone
	}
	if ch.rm {
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		defer cancel()
		if derr := ch.cl.DeleteSession(ctx, ch.session.ID); derr != nil {
			fmt.Fprintf(ch.a.errOut, "lap: delete session %s: %v\n", id, derr)
		} else {
			fmt.Fprintf(ch.status, "session %s deleted\n", id)
		}
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	fmt.Fprintf(ch.status, "session %s kept; resume it with: lap resume %s\n", id, resumeID(ctx, ch.cl, ch.session))
	return err
}

// waitReady prints "waiting for sandbox." and the session's phases as they
// change until it is ready.
func (ch *chat) waitReady(ctx context.Context) (api.Session, error) {
	s := ch.session
	tty := ch.st.color || isTerminal(ch.status)
	ph := &phasePrinter{w: ch.status, tty: tty, st: ch.st, seen: map[string]bool{}}
	ph.start()
	if s.Status == api.SessionCreating {
		var err error
		s, err = ch.watch(ctx, s, ph)
		if err != nil {
			ph.end("")
			return s, err
		}
	}
	ch.session = s
	switch s.Status {
	case api.SessionReady, api.SessionIdle:
		ph.end("ready")
		return s, nil
	case api.SessionFailed:
		ph.end("failed")
		return s, withCode(ExitFailed, fmt.Errorf("session %s failed: %s (lap diagnose %s explains)", shortID(s.ID), orDash(s.FailureReason), shortID(s.ID)))
	}
	ph.end(s.Status)
	return s, withCode(ExitFailed, fmt.Errorf("session %s is %s", shortID(s.ID), s.Status))
}

// recheckEvery is how long the event stream may stay silent before the
// CLI asks for the session directly, in case a change was missed.
const recheckEvery = 30 * time.Second

// maxWaitPolls bounds the long polls of one wait (60 s each); the server
// fails a session that takes longer than SESSION_CREATING_TIMEOUT anyway.
const maxWaitPolls = 60

// watch follows the session's event stream until it leaves "creating". It
// subscribes first and then reads the session, so no change falls between
// the two; a server without the stream is long-polled instead.
func (ch *chat) watch(ctx context.Context, s api.Session, ph *phasePrinter) (api.Session, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := ch.cl.Events(ctx, s.ID)
	if err != nil {
		if ctx.Err() != nil || isStatus(err, 401) {
			return s, err
		}
		return ch.poll(ctx, s, ph)
	}
	defer stream.Close()
	if s, err = ch.cl.GetSession(ctx, s.ID); err != nil {
		return s, err
	}
	ph.phase(s.Phase)
	if s.Status != api.SessionCreating {
		return s, nil
	}
	updates := make(chan api.Session)
	streamErr := make(chan error, 1)
	id := s.ID
	go func() {
		for {
			ev, err := stream.Next()
			if err != nil {
				streamErr <- err
				return
			}
			var es api.Session
			if ev.Name != api.EventSession || json.Unmarshal(ev.Data, &es) != nil || (es.ID != "" && es.ID != id) || es.Status == "" {
				continue
			}
			select {
			case updates <- es:
			case <-ctx.Done():
				return
			}
		}
	}()
	recheck := time.NewTicker(recheckEvery)
	defer recheck.Stop()
	for {
		select {
		case <-ctx.Done():
			return s, context.Cause(ctx)
		case <-streamErr:
			return ch.poll(ctx, s, ph)
		case s = <-updates:
		case <-recheck.C:
			cur, err := ch.cl.GetSession(ctx, s.ID)
			if err != nil {
				return s, err
			}
			s = cur
		}
		ph.phase(s.Phase)
		if s.Status != api.SessionCreating {
			return s, nil
		}
	}
}

// poll long-polls GET /sessions/:id?wait=ready until the session leaves
// "creating".
func (ch *chat) poll(ctx context.Context, s api.Session, ph *phasePrinter) (api.Session, error) {
	for range maxWaitPolls {
		cur, err := ch.cl.WaitSession(ctx, s.ID, 60*time.Second)
		if err != nil {
			return s, err
		}
		s = cur
		ph.phase(s.Phase)
		if s.Status != api.SessionCreating {
			return s, nil
		}
	}
	return s, withCode(ExitFailed, fmt.Errorf("session %s is still not ready after %d minutes (lap diagnose %s)", shortID(s.ID), maxWaitPolls, shortID(s.ID)))
}

// phasePrinter shows "waiting for sandbox." and then the phases. On a
// terminal the current phase is shown after the dot and replaced in place,
// so the line ends as "waiting for sandbox. ready"; piped, each phase is
// appended: "waiting for sandbox. cloning repo. ready".
type phasePrinter struct {
	w    io.Writer
	tty  bool
	st   style
	last string
	seen map[string]bool
}

const waitingLine = "waiting for sandbox."

func (p *phasePrinter) start() { fmt.Fprint(p.w, waitingLine) }

func (p *phasePrinter) phase(phase string) {
	if phase == "" || phase == p.last || phase == "ready" || (!p.tty && p.seen[phase]) {
		return
	}
	p.last = phase
	p.seen[phase] = true
	if p.tty {
		fmt.Fprint(p.w, "\r\x1b[K"+waitingLine+" "+p.st.dim(phase+" …"))
		return
	}
	fmt.Fprint(p.w, " "+phase+".")
}

func (p *phasePrinter) end(word string) {
	if p.tty {
		fmt.Fprint(p.w, "\r\x1b[K"+waitingLine)
	}
	if word != "" {
		fmt.Fprint(p.w, " "+word)
	}
	fmt.Fprintln(p.w)
}
