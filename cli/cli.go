// Package cli is the `lap` command: the Kong grammar of its commands, a
// client for lapd's REST API (control/api) and the chat REPL that `lap
// <agent>` opens. It talks to lapd only over HTTP and imports none of the
// server's packages, so it runs anywhere a user has a terminal.
//
// cmd/lap is a thin main around Main; Run carries the whole program, so
// tests drive the CLI in-process with their own streams and environment.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/term"
)

// Env is everything the CLI takes from its process.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Getenv reads the environment: HOME, LAP_URL, LAP_MASTER_KEY.
	Getenv func(string) string
	// Interrupts delivers Ctrl-C (SIGINT). In chat mode it aborts the
	// running turn; elsewhere it cancels the command. Nil: never.
	Interrupts <-chan os.Signal
	// Now is the clock for elapsed times; nil means time.Now.
	Now func() time.Time
}

// Exit codes, documented in `lap --help`.
const (
	ExitOK          = 0   // success
	ExitError       = 1   // any other error
	ExitUsage       = 2   // bad command line or input
	ExitUnreachable = 3   // the server cannot be reached
	ExitAuth        = 4   // the master key is missing or rejected
	ExitNotFound    = 5   // no such agent or session
	ExitFailed      = 6   // the session or a turn failed (sandbox, LLM, aborted)
	ExitInterrupted = 130 // interrupted with Ctrl-C
)

const exitCodesHelp = `Exit codes:
  0    success
  1    any other error
  2    bad command line or input
  3    the server cannot be reached (see lap login)
  4    the master key is missing or rejected (see lap login)
  5    no such agent or session
  6    the session or a turn failed (sandbox, LLM, aborted)
  130  interrupted with Ctrl-C
`

// exitError carries an exit code for an error that is already worded for
// the user.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func withCode(code int, err error) error { return &exitError{code: code, err: err} }

// errSilent ends the program with an exit code after the command has told
// the user everything already.
type errSilent struct{ code int }

func (e errSilent) Error() string { return fmt.Sprintf("exit %d", e.code) }

// errInterrupted is the cause of a context cancelled by Ctrl-C.
var errInterrupted = errors.New("interrupted")

// Main runs the CLI and returns the process exit code. Errors are printed
// to env.Stderr as one line each.
func Main(args []string, env Env) int {
	err := Run(context.Background(), args, env)
	if err == nil {
		return ExitOK
	}
	if msg := describe(err); msg != "" {
		fmt.Fprintln(env.Stderr, "lap: "+msg)
	}
	return ExitCode(err)
}

// ExitCode maps an error returned by Run to the process exit code.
func ExitCode(err error) int {
	var silent errSilent
	var ee *exitError
	var ue *UnreachableError
	var ae *APIError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &silent):
		return silent.code
	case errors.As(err, &ee):
		return ee.code
	case errors.Is(err, errInterrupted), errors.Is(err, context.Canceled):
		return ExitInterrupted
	case errors.As(err, &ue):
		return ExitUnreachable
	case errors.As(err, &ae):
		switch ae.Status {
		case 401, 403:
			return ExitAuth
		case 404:
			return ExitNotFound
		case 400, 413, 415, 422:
			return ExitUsage
		}
	}
	return ExitError
}

// describe words err for the one line Main prints; "" prints nothing.
func describe(err error) string {
	var silent errSilent
	var ue *UnreachableError
	var ae *APIError
	switch {
	case errors.As(err, &silent):
		return ""
	case errors.Is(err, errInterrupted) || errors.Is(err, context.Canceled):
		return "interrupted"
	case errors.As(err, &ue):
		return ue.Error() + "; is lapd running there? Run `lap login` to use another URL"
	case errors.As(err, &ae) && ae.Status == 401:
		return "master key rejected by " + ae.URL + "; run `lap login` with the right key (lapd prints it at its first start, or see MASTER_KEY)"
	}
	return err.Error()
}

// Run parses args and runs the command they name.
func Run(ctx context.Context, args []string, env Env) error {
	if env.Getenv == nil {
		env.Getenv = func(string) string { return "" }
	}
	if env.Now == nil {
		env.Now = time.Now
	}
	if env.Stdin == nil {
		env.Stdin = eofReader{}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	intr := &interrupter{cancel: func() { cancel(errInterrupted) }}
	if env.Interrupts != nil {
		done := make(chan struct{})
		defer close(done)
		go func() {
			for {
				select {
				case <-env.Interrupts:
					intr.fire()
				case <-done:
					return
				}
			}
		}()
	}
	a := newApp(env, intr)
	err := runKong(ctx, args, a)
	if err != nil && context.Cause(ctx) == errInterrupted && errors.Is(err, context.Canceled) {
		return errInterrupted
	}
	return err
}

// interrupter routes Ctrl-C: to the handler the chat REPL installs while a
// turn runs, else to cancelling the command.
type interrupter struct {
	mu      sync.Mutex
	handler func()
	cancel  func()
}

func (i *interrupter) fire() {
	i.mu.Lock()
	h := i.handler
	i.mu.Unlock()
	if h != nil {
		h()
		return
	}
	i.cancel()
}

// set installs h until the returned function is called.
func (i *interrupter) set(h func()) (restore func()) {
	i.mu.Lock()
	prev := i.handler
	i.handler = h
	i.mu.Unlock()
	return func() {
		i.mu.Lock()
		i.handler = prev
		i.mu.Unlock()
	}
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// app is what every command gets bound: the streams, the environment and a
// lazily made API client.
type app struct {
	env  Env
	intr *interrupter

	in          io.Reader
	out, errOut io.Writer
	inTTY       bool // stdin is a terminal: interactive prompts
	outTTY      bool // stdout is a terminal: colours, in-place lines, markdown
}

func newApp(env Env, intr *interrupter) *app {
	return &app{
		env:    env,
		intr:   intr,
		in:     env.Stdin,
		out:    env.Stdout,
		errOut: env.Stderr,
		inTTY:  isTerminal(env.Stdin),
		outTTY: isTerminal(env.Stdout),
	}
}

// target resolves the server to talk to.
func (a *app) target() (target, error) { return resolveTarget(a.env.Getenv) }

// client returns a client for the resolved server. With no key anywhere it
// says how to log in instead of letting the server answer 401.
func (a *app) client() (*Client, error) {
	t, err := a.target()
	if err != nil {
		return nil, err
	}
	if t.Key == "" {
		return nil, withCode(ExitAuth, fmt.Errorf("not logged in to %s: run `lap login` (or set %s)", t.URL, EnvKey))
	}
	return NewClient(t.URL, t.Key), nil
}

// width is the terminal width of stdout, 80 when it is not a terminal.
func (a *app) width() int {
	if f, ok := a.out.(interface{ Fd() uintptr }); ok && a.outTTY {
		if w, _, err := term.GetSize(int(f.Fd())); err == nil && w > 0 {
			return w
		}
	}
	return 80
}

// height is the terminal height of stdout, 0 when unknown.
func (a *app) height() int {
	if f, ok := a.out.(interface{ Fd() uintptr }); ok && a.outTTY {
		if _, h, err := term.GetSize(int(f.Fd())); err == nil {
			return h
		}
	}
	return 0
}

func isTerminal(x any) bool {
	f, ok := x.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}
