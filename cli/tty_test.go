package cli_test

import (
	"regexp"
	"strings"
	"testing"

	"lap.dev/lap/cli/clitest"
	"lap.dev/lap/control/api"
)

// ttyServer is lapd with the local backend running the real terminal
// harness (a fake tool in place of Claude Code) and a claude-code agent.
func ttyServer(t *testing.T) *clitest.Server {
	t.Helper()
	f := clitest.NewServer(t, clitest.Options{Backend: clitest.TTYBackend(t, ttyHarnessBin)})
	f.AddAgent(t, api.CreateAgentRequest{Name: "tui", HarnessID: "claude-code", Model: "anthropic/claude-sonnet-4-5"})
	return f
}

var (
	ansi        = regexp.MustCompile(`\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[P^_][^\x1b]*\x1b\\|\x1b[()*+][0-9A-Za-z]|\x1b[ -/]*[0-~]`)
	resumeHint  = regexp.MustCompile(`resume it with: lap resume ([0-9a-f]{8})`)
	detachedMsg = regexp.MustCompile(`detached from session ([0-9a-f]{8})`)
)

// shown is everything the terminal got, escapes and whitespace removed
// (tmux moves the cursor instead of writing blanks).
func shown(tm *clitest.Term) string {
	return strings.Map(func(r rune) rune {
		if r <= ' ' || r == 0x7f {
			return -1
		}
		return r
	}, ansi.ReplaceAllString(tm.Raw(), ""))
}

func waitShown(tm *clitest.Term, what string) {
	want := strings.ReplaceAll(what, " ", "")
	tm.WaitFor(what, func([]string) bool { return strings.Contains(shown(tm), want) })
}

func TestPTYTerminalAgentAttachDetachResume(t *testing.T) {
	f := ttyServer(t)
	env := clitest.Target{Bin: lapBin, URL: f.URL, Key: f.Key}.Env(t.TempDir())

	tm := clitest.StartTerm(t, lapBin, env, "tui")
	waitShown(tm, "fake tool ready run=1")
	tm.Send("hello tty\r")
	waitShown(tm, "echo:hello tty")
	tm.Send("\x1d") // Ctrl-]
	if code := tm.Wait(); code != 0 {
		t.Fatalf("lap exited %d after a detach; screen:\n%s", code, strings.Join(tm.Lines(), "\n"))
	}
	plain := ansi.ReplaceAllString(tm.Raw(), "")
	m := resumeHint.FindStringSubmatch(plain)
	if m == nil || !detachedMsg.MatchString(plain) {
		t.Fatalf("no detach message and resume hint; output:\n%s", plain)
	}

	// Re-attach: the tool kept running (run=1), its screen is redrawn.
	tm2 := clitest.StartTerm(t, lapBin, env, "resume", m[1])
	waitShown(tm2, "echo:hello tty")
	tm2.Send("again\r")
	waitShown(tm2, "echo:again")
	if strings.Contains(shown(tm2), "run=2") {
		t.Errorf("the tool was started again on re-attach")
	}
	tm2.Send("\x1d")
	if code := tm2.Wait(); code != 0 {
		t.Fatalf("lap resume exited %d", code)
	}
}

func TestTerminalAgentRefusesMessages(t *testing.T) {
	f := ttyServer(t)
	tg := clitest.Target{Bin: lapBin, URL: f.URL, Key: f.Key}
	tm := clitest.StartTerm(t, lapBin, tg.Env(t.TempDir()), "tui", "-m", "hi")
	waitShown(tm, "it takes no messages")
	if code := tm.Wait(); code == 0 {
		t.Fatalf("lap -m on a terminal agent exited 0")
	}
}
