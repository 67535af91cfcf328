package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/chzyer/readline"

	"lap.dev/lap/control/api"
)

// abortGrace is how long a turn may take to end after Ctrl-C asked the
// server to abort it, before the CLI stops listening.
const abortGrace = 15 * time.Second

// errTurnFailed marks a turn that ended with an error the renderer showed.
var errTurnFailed = errors.New("turn failed")

// oneShot sends one message (-m) and prints the reply.
func (ch *chat) oneShot(ctx context.Context, text string) error {
	if err := ch.turn(ctx, text); err != nil {
		return scriptTurnError(err)
	}
	return nil
}

// lines sends each line of stdin as a message, in order.
func (ch *chat) lines(ctx context.Context) error {
	sc := bufio.NewScanner(ch.a.in)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		if err := ch.turn(ctx, text); err != nil {
			return scriptTurnError(err)
		}
	}
	if err := sc.Err(); err != nil {
		return withCode(ExitUsage, fmt.Errorf("read messages from stdin: %w", err))
	}
	return nil
}

// scriptTurnError is the error a script sees for a failed turn: the
// renderer has printed why already.
func scriptTurnError(err error) error {
	if errors.Is(err, errTurnFailed) {
		return errSilent{ExitFailed}
	}
	return err
}

// repl is chat mode on a terminal: a readline prompt, one message a line.
func (ch *chat) repl(ctx context.Context) error {
	cfg := &readline.Config{
		Prompt:            "> ",
		Stdin:             readline.NewCancelableStdin(ch.a.in),
		Stdout:            ch.a.out,
		Stderr:            ch.a.errOut,
		EOFPrompt:         "\n", // Ctrl-D ends the prompt line, nothing more
		HistorySearchFold: true,
		FuncIsTerminal:    func() bool { return ch.a.inTTY && ch.a.outTTY },
		FuncGetWidth:      ch.a.width,
	}
	if f, ok := ch.a.in.(interface{ Fd() uintptr }); ok {
		// readline's raw mode keeps output processing on (unlike x/term's),
		// so "\n" still starts a new line while the prompt is active.
		var mu sync.Mutex
		var saved *readline.State
		fd := int(f.Fd())
		cfg.FuncMakeRaw = func() error {
			mu.Lock()
			defer mu.Unlock()
			st, err := readline.MakeRaw(fd)
			if err == nil {
				saved = st
			}
			return err
		}
		cfg.FuncExitRaw = func() error {
			mu.Lock()
			defer mu.Unlock()
			if saved == nil {
				return nil
			}
			err := readline.Restore(fd, saved)
			saved = nil
			return err
		}
	}
	if dir, err := lapDir(ch.a.env.Getenv); err == nil {
		// Typed lines can hold secrets: the history is private like the login.
		if err := ensurePrivateFile(filepath.Join(dir, "history")); err == nil {
			cfg.HistoryFile = filepath.Join(dir, "history")
		}
	}
	rl, err := readline.NewEx(cfg)
	if err != nil {
		return fmt.Errorf("start chat mode: %w", err)
	}
	defer rl.Close()
	fmt.Fprintln(ch.a.out, "Chat mode — Ctrl-D to exit")
	for {
		line, err := rl.Readline()
		switch {
		case errors.Is(err, readline.ErrInterrupt):
			if strings.TrimSpace(line) == "" {
				return nil // Ctrl-C at an empty prompt leaves, like Ctrl-D
			}
			continue
		case errors.Is(err, io.EOF):
			return nil
		case err != nil:
			return fmt.Errorf("read input: %w", err)
		}
		text := strings.TrimSpace(line)
		if text == "" {
			continue
		}
		if err := ch.turn(ctx, text); err != nil && !errors.Is(err, errTurnFailed) {
			if ctx.Err() != nil {
				return err
			}
			if fatalForSession(err) {
				return err
			}
			fmt.Fprintln(ch.a.out, ch.st.red("✗ "+describe(err)))
		}
	}
}

// fatalForSession reports errors after which chat mode cannot go on.
func fatalForSession(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && (ae.Status == 401 || ae.Status == 404 || ae.Status == 410)
}

// turn sends text and renders the streamed answer. Ctrl-C while it runs
// asks the server to abort the turn; a second Ctrl-C stops waiting.
func (ch *chat) turn(ctx context.Context, text string) error {
	start := ch.a.env.Now()
	turnCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	statusTTY := ch.st.color || isTerminal(ch.status)
	r := newTurnRenderer(ch.a.out, ch.status, statusTTY, ch.a.width(), ch.a.height(), ch.md, ch.st)

	var mu sync.Mutex
	aborting := false
	var grace *time.Timer
	restore := ch.a.intr.set(func() {
		mu.Lock()
		defer mu.Unlock()
		if aborting {
			cancel(errInterrupted)
			return
		}
		aborting = true
		go func() {
			actx, acancel := context.WithTimeout(context.Background(), requestTimeout)
			defer acancel()
			_ = ch.cl.Abort(actx, ch.session.ID)
		}()
		grace = time.AfterFunc(abortGrace, func() { cancel(errInterrupted) })
	})
	defer func() {
		restore()
		mu.Lock()
		if grace != nil {
			grace.Stop()
		}
		mu.Unlock()
	}()
	wasAborted := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return aborting
	}

	waiting := ""
	if statusTTY && ch.session.Status != api.SessionReady {
		waiting = "resuming sandbox …"
		fmt.Fprint(ch.status, ch.st.dim(waiting))
	}
	clearWaiting := func() {
		if waiting != "" {
			fmt.Fprint(ch.status, "\r\x1b[K")
			waiting = ""
		}
	}
	defer clearWaiting()

	stream, err := ch.cl.MessageStream(turnCtx, ch.session.ID, text)
	if err != nil {
		clearWaiting()
		if isStatus(err, 409) {
			return fmt.Errorf("session %s is busy with another turn; wait for it or press Ctrl-C there", shortID(ch.session.ID))
		}
		if wasAborted() {
			r.abandon("⏹ aborted")
			return errTurnFailed
		}
		return err
	}
	defer stream.Close()
	for {
		ev, err := stream.Next()
		if err != nil {
			clearWaiting()
			switch {
			case wasAborted() || errors.Is(context.Cause(turnCtx), errInterrupted):
				r.abandon("⏹ aborted")
				if ch.script {
					return errInterrupted
				}
				return errTurnFailed
			case ctx.Err() != nil:
				return context.Cause(ctx)
			}
			r.abandon("✗ the connection to the server ended before the turn did")
			return errTurnFailed
		}
		switch ev.Name {
		case api.EventReady:
			clearWaiting()
			var s api.Session
			if json.Unmarshal(ev.Data, &s) == nil && s.ID != "" {
				ch.session = s
			}
			ch.session.Status = api.SessionReady
		case api.EventHarness:
			clearWaiting()
			he, err := api.DecodeHarnessEvent(ev.Data)
			if err != nil {
				continue
			}
			// A harness's event bus carries every session it serves; lapd
			// should pass on only this one's, and this makes sure.
			if hs := ch.session.HarnessSessionID; hs != "" && he.Properties.SessionID != "" && he.Properties.SessionID != hs {
				continue
			}
			r.event(he)
		case api.EventDone:
			clearWaiting()
			var m api.Message
			if err := json.Unmarshal(ev.Data, &m); err != nil {
				r.abandon("✗ unreadable final message: " + err.Error())
				return errTurnFailed
			}
			r.finish(m, ch.a.env.Now().Sub(start))
			if m.Info.Error != nil {
				if m.Info.Error.Name == "Aborted" && ch.script {
					return errInterrupted
				}
				return errTurnFailed
			}
			return nil
		case api.EventError:
			clearWaiting()
			var e api.ErrorDetail
			_ = json.Unmarshal(ev.Data, &e)
			msg := e.Message
			if msg == "" {
				msg = string(ev.Data)
			}
			r.abandon("✗ " + msg)
			return errTurnFailed
		}
	}
}

// ensurePrivateFile creates path (and its directory) with mode 0600 if it
// does not exist, so readline's later appends keep that mode.
func ensurePrivateFile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	return f.Close()
}
