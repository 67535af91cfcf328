package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// pipeDrainTimeout bounds the wait for a command's output after its
// process group was killed: only a process that left the group (setsid)
// can still hold the pipe open then.
const pipeDrainTimeout = 2 * time.Second

// bash runs command with bash -c in the repo, in its own process group.
// When the command ends, times out or the turn is aborted, the whole group
// is killed, so nothing it started outlives it and no grandchild keeps
// the output pipe open. Output is stdout and stderr interleaved, capped to
// the first and last parts with a note when longer than the limit.
func (tb *toolbox) bash(ctx context.Context, command string, timeoutS *float64) toolResult {
	if strings.TrimSpace(command) == "" {
		return toolResult{err: errors.New("command is empty")}
	}
	timeout := tb.timeout
	if timeoutS != nil {
		if *timeoutS <= 0 {
			return toolResult{err: fmt.Errorf("timeout_s must be positive")}
		}
		timeout = min(time.Duration(*timeoutS*float64(time.Second)), tb.maxTime)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	pr, pw, err := os.Pipe()
	if err != nil {
		return toolResult{err: fmt.Errorf("create output pipe: %w", err)}
	}
	defer pr.Close()
	cmd := exec.Command(tb.shell, "-c", command)
	cmd.Dir = tb.root
	cmd.Env = tb.env
	cmd.Stdout, cmd.Stderr = pw, pw
	// Its own group, so the whole of it can be killed; and killed with
	// the harness should the harness die without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		pw.Close()
		return toolResult{err: fmt.Errorf("start %s: %w", tb.shell, err)}
	}
	pw.Close() // the children hold the only write ends now
	pgid := cmd.Process.Pid

	out := newHeadTail(tb.limit)
	copied := make(chan struct{})
	go func() {
		_, _ = io.Copy(out, pr)
		close(copied)
	}()

	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var waitErr error
	select {
	case waitErr = <-exited:
		// Stop what the command left running in the background.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	case <-ctx.Done():
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		waitErr = <-exited
	}
	select {
	case <-copied:
	case <-time.After(pipeDrainTimeout):
		pr.Close()
		<-copied
	}

	text := out.String()
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return toolResult{output: text, err: fmt.Errorf("command timed out after %s and was killed", timeout)}
	case ctx.Err() != nil:
		return toolResult{output: text, err: errors.New("command aborted")}
	}
	var exitErr *exec.ExitError
	switch {
	case waitErr == nil:
		if text == "" {
			text = "(no output)"
		}
		return toolResult{output: text}
	case errors.As(waitErr, &exitErr):
		return toolResult{output: text + fmt.Sprintf("\n[exit code %d]", exitErr.ExitCode())}
	default:
		return toolResult{output: text, err: fmt.Errorf("run command: %w", waitErr)}
	}
}

// headTail keeps the first and the last half of the limit of what is
// written to it and counts the rest, so long output keeps both how it
// began and how it ended (where errors usually are).
type headTail struct {
	mu      sync.Mutex
	limit   int
	head    []byte
	tail    []byte // a ring, start at tailPos once full
	tailPos int
	total   int
}

func newHeadTail(limit int) *headTail { return &headTail{limit: limit} }

func (h *headTail) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.total += len(p)
	half := h.limit / 2
	rest := p
	if n := min(half-len(h.head), len(rest)); n > 0 {
		h.head = append(h.head, rest[:n]...)
		rest = rest[n:]
	}
	tailMax := h.limit - half
	for len(rest) > 0 {
		if len(h.tail) < tailMax {
			n := min(tailMax-len(h.tail), len(rest))
			h.tail = append(h.tail, rest[:n]...)
			rest = rest[n:]
			continue
		}
		if len(rest) >= tailMax {
			rest = rest[len(rest)-tailMax:]
			copy(h.tail, rest)
			h.tailPos = 0
			rest = nil
			break
		}
		n := copy(h.tail[h.tailPos:], rest)
		rest = rest[n:]
		h.tailPos = (h.tailPos + n) % tailMax
	}
	return len(p), nil
}

// String returns the kept output, with a note where bytes were dropped.
func (h *headTail) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	tail := append(append([]byte(nil), h.tail[h.tailPos:]...), h.tail[:h.tailPos]...)
	kept := len(h.head) + len(tail)
	if h.total <= kept {
		return string(h.head) + string(tail)
	}
	return fmt.Sprintf("%s\n[output cut: %d of %d bytes not shown; the first %d and the last %d bytes are kept]\n%s",
		strings.ToValidUTF8(string(h.head), ""), h.total-kept, h.total, len(h.head), len(tail), strings.ToValidUTF8(string(tail), ""))
}
