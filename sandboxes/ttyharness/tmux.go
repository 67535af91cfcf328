package ttyharness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// tmuxConf is the tmux configuration of the tool's server. It makes tmux
// invisible: no status line (the terminal is the tool's alone), no prefix
// key and no key bindings (every key goes to the tool; detaching is the
// client closing its socket), no escape delay (Esc reaches the TUI at
// once), the window sized by the client that was active last, and the
// server kept when the tool's session ends, so the session can be started
// again at once (a server that is exiting would take the new session down
// with it).
const tmuxConf = `set -g status off
set -g prefix None
set -g prefix2 None
unbind-key -a
set -s escape-time 0
set -s extended-keys on
set -g focus-events on
set -g history-limit 10000
set -g window-size latest
set -g remain-on-exit off
set -g exit-empty off
set -g mouse off
`

// tmux runs tmux commands against the harness's private socket.
type tmux struct {
	bin    string
	socket string
	conf   string
	log    *slog.Logger
}

// writeConf writes tmuxConf where every tmux command reads it.
func (t *tmux) writeConf() error {
	if err := os.WriteFile(t.conf, []byte(tmuxConf), 0o600); err != nil {
		return fmt.Errorf("write tmux configuration: %w", err)
	}
	return nil
}

// args is the command line of a tmux command on the private socket.
func (t *tmux) args(args ...string) []string {
	return append([]string{"-S", t.socket, "-f", t.conf}, args...)
}

// run runs one tmux command with env (which a tmux server it starts
// passes on to the tool) and returns its error with tmux's message.
func (t *tmux) run(ctx context.Context, env []string, args ...string) error {
	cmd := exec.CommandContext(ctx, t.bin, t.args(args...)...)
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if msg := strings.TrimSpace(out.String()); msg != "" {
			return fmt.Errorf("tmux %s: %s (%w)", args[0], msg, err)
		}
		return fmt.Errorf("tmux %s: %w", args[0], err)
	}
	return nil
}

// serverUp reports whether a tmux server answers on the socket.
func (t *tmux) serverUp(ctx context.Context) bool {
	err := t.run(ctx, nil, "list-sessions")
	if err == nil {
		return true
	}
	msg := err.Error()
	return !strings.Contains(msg, "no server running") && !strings.Contains(msg, "error connecting") &&
		!strings.Contains(msg, "No such file")
}

// startServer runs the tmux server as a child of the harness (tmux -D,
// no daemon) with env as its environment, and waits until it answers. A
// daemon would leave the harness's session and outlive a harness killed
// with SIGKILL, tool and all; as a child it stays in the harness's
// session, which the local backend sweeps when a sandbox stops, and a
// server that dies hangs up the tool's terminal. The returned channel is
// closed when the server exits.
func (t *tmux) startServer(ctx context.Context, env []string) (<-chan struct{}, error) {
	cmd := exec.CommandContext(ctx, t.bin, t.args("-D")...)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start tmux server: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !t.serverUp(ctx) {
		select {
		case <-exited:
			return nil, fmt.Errorf("start tmux server: it exited: %s", strings.TrimSpace(stderr.String()))
		case <-ctx.Done():
			return nil, ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			return nil, errors.New("start tmux server: it did not answer within 10s")
		}
		time.Sleep(5 * time.Millisecond) // a poll interval while its socket comes up
	}
	return exited, nil
}

// newSession starts the detached session SessionName running argv in dir
// unless it exists already. (new-session -A is no help here: for an
// existing session it attaches, which needs a terminal.) The tmux server,
// when this starts it, takes env as its environment, so the tool gets env
// and no secret of the harness.
func (t *tmux) newSession(ctx context.Context, dir string, env []string, cols, rows int, argv []string) error {
	if t.hasSession(ctx) {
		return nil
	}
	args := []string{"new-session", "-d", "-s", SessionName,
		"-x", strconv.Itoa(cols), "-y", strconv.Itoa(rows), "-c", dir, "--"}
	err := t.run(ctx, env, append(args, argv...)...)
	if err != nil && strings.Contains(err.Error(), "duplicate session") {
		return nil // started meanwhile by another caller
	}
	return err
}

// hasSession reports whether the tool's session exists.
func (t *tmux) hasSession(ctx context.Context) bool {
	return t.run(ctx, nil, "has-session", "-t", SessionName) == nil
}

// killServer ends the tmux server, its session and the tool.
func (t *tmux) killServer(ctx context.Context) {
	if err := t.run(ctx, nil, "kill-server"); err != nil {
		t.log.Debug("kill tmux server", "err", err)
	}
}

// waitSession blocks until the tool's session ends, or ctx does. It
// attaches a control-mode client (tmux -C) that asks for no output and
// does not size the window; tmux ends such a client when its session
// ends, so waiting needs no polling.
func (t *tmux) waitSession(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, t.bin, t.args("-C", "attach-session", "-t", SessionName, "-f", "no-output,ignore-size,read-only")...)
	// A control client ends when its input does; keep it open until
	// the client is done.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return fmt.Errorf("watch tmux session: %w", err)
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("watch tmux session: %w", err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("watch tmux session: %w", err)
	}
	_, _ = io.Copy(io.Discard, stdout)
	if err := cmd.Wait(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("watch tmux session: %s (%w)", strings.TrimSpace(stderr.String()), err)
	}
	return nil
}

// attachCommand is a tmux client attached to the tool's session, to be
// run on a pseudo-terminal of its own.
func (t *tmux) attachCommand(ctx context.Context, env []string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, t.bin, t.args("attach-session", "-t", SessionName)...)
	cmd.Env = env
	return cmd
}
