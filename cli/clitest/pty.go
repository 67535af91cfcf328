package clitest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/creack/pty"
)

// Deadline bounds every wait on a program's output or exit. It is a guard
// against a hang, not a timing assertion: a healthy run takes a fraction.
var Deadline = 60 * time.Second

// BuildLap builds cmd/lap into dir and returns the binary's path.
func BuildLap(dir string) (string, error) {
	bin := filepath.Join(dir, "lap")
	cmd := exec.Command("go", "build", "-o", bin, "lap.dev/lap/cmd/lap")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build lap: %w\n%s", err, out)
	}
	return bin, nil
}

// Term is a program running on a pseudo-terminal of Cols×Rows, with its
// output kept both raw and as the lines a terminal would show.
type Term struct {
	t   testing.TB
	cmd *exec.Cmd
	pty *os.File

	mu      sync.Mutex
	raw     []byte
	changed chan struct{} // closed and replaced whenever output arrives
	readEnd chan struct{} // closed when the terminal has no more output
	exited  chan struct{} // closed when the process has exited
	exitErr error
}

// Terminal size of every Term.
const (
	Cols = 100
	Rows = 40
)

// StartTerm runs bin with args on a new pseudo-terminal with exactly the
// environment env (nothing is inherited).
func StartTerm(t testing.TB, bin string, env []string, args ...string) *Term {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	f, err := pty.StartWithSize(cmd, &pty.Winsize{Cols: Cols, Rows: Rows})
	if err != nil {
		t.Fatalf("start %s on a pty: %v", bin, err)
	}
	tm := &Term{t: t, cmd: cmd, pty: f, changed: make(chan struct{}), readEnd: make(chan struct{}), exited: make(chan struct{})}
	go tm.read()
	go func() {
		err := cmd.Wait()
		tm.mu.Lock()
		tm.exitErr = err
		tm.mu.Unlock()
		close(tm.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-tm.exited:
		default:
			_ = cmd.Process.Kill()
			<-tm.exited
		}
		f.Close()
	})
	return tm
}

func (tm *Term) read() {
	defer close(tm.readEnd)
	buf := make([]byte, 4096)
	for {
		n, err := tm.pty.Read(buf)
		if n > 0 {
			tm.mu.Lock()
			tm.raw = append(tm.raw, buf[:n]...)
			close(tm.changed)
			tm.changed = make(chan struct{})
			tm.mu.Unlock()
		}
		if err != nil {
			return // EIO once the program and its children closed the terminal
		}
	}
}

// Send types s (use "\r" for Enter, "\x04" for Ctrl-D, "\x03" for Ctrl-C).
func (tm *Term) Send(s string) {
	tm.t.Helper()
	if _, err := tm.pty.WriteString(s); err != nil {
		tm.t.Fatalf("type %q: %v", s, err)
	}
}

// Raw returns everything the program wrote so far.
func (tm *Term) Raw() string {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return string(tm.raw)
}

// Lines returns the terminal's lines as a user would see them now, trailing
// blanks removed.
func (tm *Term) Lines() []string { return ScreenLines(tm.Raw(), Cols) }

// WaitFor waits until cond holds for the screen lines, failing the test with
// what was on screen when the program ends or the deadline passes first.
func (tm *Term) WaitFor(what string, cond func(lines []string) bool) []string {
	tm.t.Helper()
	deadline := time.NewTimer(Deadline)
	defer deadline.Stop()
	for {
		tm.mu.Lock()
		changed := tm.changed
		tm.mu.Unlock()
		lines := tm.Lines()
		if cond(lines) {
			return lines
		}
		select {
		case <-changed:
		case <-tm.readEnd:
			lines := tm.Lines()
			if cond(lines) {
				return lines
			}
			tm.t.Fatalf("program ended before %s; screen:\n%s", what, strings.Join(lines, "\n"))
		case <-deadline.C:
			tm.t.Fatalf("no %s within %v; screen:\n%s", what, Deadline, strings.Join(tm.Lines(), "\n"))
		}
	}
}

// WaitLine waits for a line matching re (anchored by the caller) at index
// from or later, and returns its index and submatches.
func (tm *Term) WaitLine(from int, re *regexp.Regexp) (int, []string) {
	tm.t.Helper()
	idx, m := -1, []string(nil)
	tm.WaitFor(fmt.Sprintf("line matching %q", re), func(lines []string) bool {
		for i := from; i < len(lines); i++ {
			if sm := re.FindStringSubmatch(lines[i]); sm != nil {
				idx, m = i, sm
				return true
			}
		}
		return false
	})
	return idx, m
}

// Wait waits for the program to exit and returns its exit code.
func (tm *Term) Wait() int {
	tm.t.Helper()
	select {
	case <-tm.exited:
	case <-time.After(Deadline):
		tm.t.Fatalf("program did not exit within %v; screen:\n%s", Deadline, strings.Join(tm.Lines(), "\n"))
	}
	select { // the last output is read before the terminal reports its end
	case <-tm.readEnd:
	case <-time.After(Deadline):
		tm.t.Fatalf("terminal output did not end within %v", Deadline)
	}
	tm.mu.Lock()
	defer tm.mu.Unlock()
	var ee *exec.ExitError
	switch {
	case tm.exitErr == nil:
		return 0
	case errors.As(tm.exitErr, &ee):
		return ee.ExitCode()
	}
	tm.t.Fatalf("wait: %v", tm.exitErr)
	return -1
}

// ScreenLines replays terminal output on a screen cols wide and returns its
// lines: carriage returns, line erasing, cursor movement and wrapping are
// applied, colours and other escape sequences dropped. It is enough of a
// terminal to check what a user sees after in-place updates.
func ScreenLines(out string, cols int) []string {
	s := &screen{cols: cols, lines: [][]rune{nil}}
	b := []byte(out)
	for len(b) > 0 {
		switch c := b[0]; {
		case c == 0x1b:
			b = s.escape(b)
			continue
		case c == '\r':
			s.col = 0
		case c == '\n':
			s.down(1)
		case c == '\b':
			s.col = max(0, s.col-1)
		case c == '\t':
			s.col = min(cols-1, (s.col/8+1)*8)
		case c == 0x07 || c < 0x20:
			// bell and other controls show nothing
		default:
			r, n := utf8.DecodeRune(b)
			s.put(r)
			b = b[n:]
			continue
		}
		b = b[1:]
	}
	lines := make([]string, len(s.lines))
	for i, l := range s.lines {
		lines[i] = strings.TrimRight(string(l), " \x00")
	}
	for len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return lines
}

type screen struct {
	cols     int
	lines    [][]rune
	row, col int
}

func (s *screen) down(n int) {
	s.row += n
	for len(s.lines) <= s.row {
		s.lines = append(s.lines, nil)
	}
}

func (s *screen) put(r rune) {
	if s.col >= s.cols {
		s.col = 0
		s.down(1)
	}
	l := s.lines[s.row]
	for len(l) <= s.col {
		l = append(l, ' ')
	}
	l[s.col] = r
	s.lines[s.row] = l
	s.col++
}

var csiRE = regexp.MustCompile(`^\x1b\[([0-9;?]*)([@-~])`)

// escape applies one escape sequence at the start of b and returns the rest.
func (s *screen) escape(b []byte) []byte {
	if m := csiRE.FindSubmatch(b); m != nil {
		n := 1
		params := strings.TrimPrefix(string(m[1]), "?")
		if p := strings.Split(params, ";")[0]; p != "" {
			fmt.Sscanf(p, "%d", &n)
		}
		switch m[2][0] {
		case 'A':
			s.row = max(0, s.row-max(n, 1))
		case 'B':
			s.down(max(n, 1))
		case 'C':
			s.col = min(s.cols-1, s.col+max(n, 1))
		case 'D':
			s.col = max(0, s.col-max(n, 1))
		case 'G':
			s.col = max(0, min(s.cols-1, n-1))
		case 'K':
			l := s.lines[s.row]
			switch {
			case params == "" || params == "0":
				if s.col < len(l) {
					s.lines[s.row] = l[:s.col]
				}
			case params == "1":
				for i := 0; i <= s.col && i < len(l); i++ {
					l[i] = ' '
				}
			case params == "2":
				s.lines[s.row] = nil
			}
		case 'J':
			if params == "" || params == "0" {
				if l := s.lines[s.row]; s.col < len(l) {
					s.lines[s.row] = l[:s.col]
				}
				s.lines = s.lines[:s.row+1]
			}
		}
		return b[len(m[0]):]
	}
	if len(b) >= 2 && b[1] == ']' { // OSC, ended by BEL or ESC \
		if i := bytes.IndexAny(b, "\x07"); i >= 0 {
			return b[i+1:]
		}
		if i := bytes.Index(b, []byte("\x1b\\")); i >= 0 {
			return b[i+2:]
		}
		return nil
	}
	if len(b) >= 2 {
		return b[2:]
	}
	return nil
}
