package cli_test

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"lap.dev/lap/cli/clitest"
	"lap.dev/lap/control/api"
)

// lapBin and ttyHarnessBin are the lap and lap-tty-harness binaries
// built once for the tests that run them.
var lapBin, ttyHarnessBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lap-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	lapBin, err = clitest.BuildLap(dir)
	if err == nil {
		ttyHarnessBin, err = clitest.BuildTTYHarness(dir)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// echoReply is what the test backend's scripted harness answers to a
// message without a command (sandboxestest.Harness), as the screen shows it.
func echoReply(_ int, msg string) string { return "echo: " + msg }

func newServer(t *testing.T, warm bool) *clitest.Server {
	f := clitest.NewServer(t, clitest.Options{Warm: warm})
	f.AddAgent(t, api.CreateAgentRequest{Name: "my-sdk-agent", HarnessID: "claude-agent-sdk", Model: "anthropic/claude-sonnet-4-5"})
	return f
}

func TestChatSuiteOnControlPlane(t *testing.T) {
	f := clitest.NewServer(t, clitest.Options{Warm: true})
	req := api.CreateAgentRequest{Name: "my-sdk-agent", HarnessID: "claude-agent-sdk", Model: "anthropic/claude-sonnet-4-5"}
	clitest.EnsureAgent(t, f.URL, f.Key, req)
	clitest.EnsureAgent(t, f.URL, f.Key, req) // the second finds it
	clitest.ChatSuite(t, clitest.Target{
		Bin: lapBin, URL: f.URL, Key: f.Key, Agent: "my-sdk-agent", Harness: "claude-agent-sdk", Reply: echoReply,
	})
}

func TestPTYColdSessionShowsPhasesInPlace(t *testing.T) {
	f := newServer(t, false)
	tg := clitest.Target{Bin: lapBin, URL: f.URL, Key: f.Key}
	tm := clitest.StartTerm(t, lapBin, tg.Env(t.TempDir()), "my-sdk-agent")
	lines := tm.WaitFor("the chat prompt", func(l []string) bool { return len(l) >= 5 && l[4] == ">" })
	if lines[2] != "waiting for sandbox. ready" {
		t.Fatalf("line 3 = %q, want %q", lines[2], "waiting for sandbox. ready")
	}
	raw := tm.Raw()
	for _, phase := range clitest.DefaultPhases {
		if !strings.Contains(raw, phase) {
			t.Errorf("phase %q was never shown; output %q", phase, raw)
		}
	}
	tm.Send("\x04")
	if code := tm.Wait(); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
}

func TestPTYStreamingAbortAndTools(t *testing.T) {
	f := newServer(t, true)
	tg := clitest.Target{Bin: lapBin, URL: f.URL, Key: f.Key}
	tm := clitest.StartTerm(t, lapBin, tg.Env(t.TempDir()), "my-sdk-agent", "--rm")
	tm.WaitFor("the chat prompt", func(l []string) bool { return len(l) >= 5 && l[4] == ">" })

	// The harness sends "Working on it" and then holds the turn until it
	// is aborted: the text on screen before the turn ends shows it streams.
	tm.Send("/block Working on it\r")
	tm.WaitLine(5, regexp.MustCompile(`^Working on it$`))
	tm.Send("\x03")
	tm.WaitLine(5, regexp.MustCompile(`^⏹ aborted$`))
	tm.WaitFor("the prompt after the abort", func(l []string) bool { return l[len(l)-1] == ">" })
	if !containsLine(f.Requests(), "POST /sessions/", "/abort") {
		t.Fatalf("Ctrl-C sent no POST /abort; requests %q", f.Requests())
	}

	// Tool calls: one line each, completed in place.
	tm.Send("/tools\r")
	at, _ := tm.WaitLine(5, regexp.MustCompile(`^> /tools$`))
	tm.WaitLine(at, regexp.MustCompile(`^\[.* tokens · .*\]$`))
	lines := tm.WaitFor("the prompt after the tools", func(l []string) bool { return l[len(l)-1] == ">" })
	screen := strings.Join(lines, "\n")
	for _, want := range []string{"✓ bash: ls", "✗ read: missing.txt: no such file", "There is a README.md."} {
		if !strings.Contains(screen, want) {
			t.Errorf("screen lacks %q:\n%s", want, screen)
		}
	}
	if strings.Contains(screen, "… bash") || strings.Contains(screen, "· bash") {
		t.Errorf("a tool line was not completed in place:\n%s", screen)
	}

	tm.Send("\x04")
	tm.WaitLine(5, regexp.MustCompile(`^session [0-9a-f]{8} deleted$`))
	if code := tm.Wait(); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	if !containsLine(f.Requests(), "DELETE /sessions/", "") {
		t.Fatalf("--rm did not delete the session; requests %q", f.Requests())
	}
}

func TestPTYMarkdownOnTerminal(t *testing.T) {
	f := newServer(t, true)
	tg := clitest.Target{Bin: lapBin, URL: f.URL, Key: f.Key}
	tm := clitest.StartTerm(t, lapBin, tg.Env(t.TempDir()), "my-sdk-agent", "-m", "/markdown")
	if code := tm.Wait(); code != 0 {
		t.Fatalf("exit code %d; screen:\n%s", code, strings.Join(tm.Lines(), "\n"))
	}
	screen := strings.Join(tm.Lines(), "\n")
	// Rendered markdown: list bullets, and no literal ** left.
	if !strings.Contains(screen, "• one") || strings.Contains(screen, "**one**") {
		t.Fatalf("reply not rendered as markdown:\n%s", screen)
	}
}

func TestPipedStdinSendsEachLine(t *testing.T) {
	f := newServer(t, true)
	tg := clitest.Target{Bin: lapBin, URL: f.URL, Key: f.Key}
	cmd := exec.Command(lapBin, "my-sdk-agent")
	cmd.Env = tg.Env(t.TempDir())
	cmd.Stdin = strings.NewReader("first\n\nsecond\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("lap my-sdk-agent < two lines: %v", err)
	}
	want := echoReply(1, "first") + "\n" + echoReply(2, "second") + "\n"
	if string(out) != want {
		t.Fatalf("stdout = %q, want %q", out, want)
	}
}

func containsLine(reqs []string, prefix, suffix string) bool {
	for _, r := range reqs {
		if strings.HasPrefix(r, prefix) && strings.HasSuffix(r, suffix) {
			return true
		}
	}
	return false
}
