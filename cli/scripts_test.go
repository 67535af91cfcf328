package cli_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"lap.dev/lap/cli"
	"lap.dev/lap/cli/clitest"
	"lap.dev/lap/control/api"
	"lap.dev/lap/internal/waitfor"
)

// step is one command of a scripted test: run in-process with its own
// stdin, the script's HOME and environment.
type step struct {
	args  []string
	stdin string
	env   map[string]string // added to the script's environment ("" unsets)
	code  int               // expected exit code
}

// script runs steps against a control plane and writes one transcript, compared with
// testdata/scripts/<name>.golden. Ids, URLs and times are replaced by
// placeholders so the transcript is stable.
type script struct {
	t    *testing.T
	srv  *clitest.Server
	home string
	env  map[string]string
	out  strings.Builder
}

func newScript(t *testing.T, srv *clitest.Server) *script {
	s := &script{t: t, srv: srv, home: t.TempDir()}
	s.env = map[string]string{"HOME": s.home}
	if srv != nil {
		s.env[cli.EnvURL] = srv.URL
		s.env[cli.EnvKey] = srv.Key
	}
	return s
}

// fixedNow makes "ago" columns and elapsed times stable.
var fixedNow = func() time.Time { return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) }

// syncBuffer is a buffer written by the CLI while a test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func (s *script) env2(extra map[string]string) func(string) string {
	return func(k string) string {
		if v, ok := extra[k]; ok {
			return v
		}
		return s.env[k]
	}
}

// run runs one step and appends it to the transcript.
func (s *script) run(st step) (stdout, stderr string) {
	s.t.Helper()
	var out, errOut syncBuffer
	code := cli.Main(st.args, cli.Env{
		Stdin:  strings.NewReader(st.stdin),
		Stdout: &out,
		Stderr: &errOut,
		Getenv: s.env2(st.env),
		Now:    fixedNow,
	})
	fmt.Fprintf(&s.out, "$ lap %s\n", quoteArgs(st.args))
	if st.stdin != "" {
		for _, l := range strings.Split(strings.TrimSuffix(st.stdin, "\n"), "\n") {
			fmt.Fprintf(&s.out, "< %s\n", l)
		}
	}
	s.out.WriteString(out.String())
	for _, l := range strings.Split(strings.TrimSuffix(errOut.String(), "\n"), "\n") {
		if l != "" {
			fmt.Fprintf(&s.out, "stderr: %s\n", l)
		}
	}
	fmt.Fprintf(&s.out, "[exit %d]\n\n", code)
	if code != st.code {
		s.t.Errorf("lap %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", quoteArgs(st.args), code, st.code, out.String(), errOut.String())
	}
	return out.String(), errOut.String()
}

func quoteArgs(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " '\"") {
			a = "'" + a + "'"
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}

var (
	uuidRE  = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)
	hexRE   = regexp.MustCompile(`\b[0-9a-f]{8,32}\b`)
	timeRE  = regexp.MustCompile(`\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)`)
	msgIDRE = regexp.MustCompile(`msg_<uuid>`)
	portRE  = regexp.MustCompile(`127\.0\.0\.1:\d+`)
	// Harness session ids (the test backend's "ses_" and 8 hex).
	harnessSessionRE = regexp.MustCompile(`ses_[0-9a-f]{8}\b`)
)

// normalize replaces what changes from run to run.
func (s *script) normalize(text string) string {
	text = strings.ReplaceAll(text, s.home, "$HOME")
	text = uuidRE.ReplaceAllString(text, "<uuid>")
	text = msgIDRE.ReplaceAllString(text, "msg_<uuid>")
	text = harnessSessionRE.ReplaceAllString(text, "ses_<hex>")
	text = hexRE.ReplaceAllString(text, "<hex>")
	text = timeRE.ReplaceAllString(text, "<time>")
	text = portRE.ReplaceAllString(text, "127.0.0.1:<port>")
	return text
}

func (s *script) golden(name string) {
	s.t.Helper()
	cli.Golden(s.t, "scripts/"+name+".golden", s.normalize(s.out.String()))
}

func TestScriptLogin(t *testing.T) {
	fake := clitest.NewServer(t, clitest.Options{})
	s := newScript(t, nil)
	s.run(step{args: []string{"agents"}, code: cli.ExitAuth})
	s.run(step{args: []string{"config"}})
	s.run(step{args: []string{"login"}, stdin: fake.URL + "\nwrong-key-000000000\n", code: cli.ExitAuth})
	s.run(step{args: []string{"login"}, stdin: fake.URL + "/\n" + fake.Key + "\n"})
	info, err := os.Stat(filepath.Join(s.home, ".lap", "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("~/.lap/config.json mode = %v, want 0600", info.Mode().Perm())
	}
	s.run(step{args: []string{"config"}})
	s.run(step{args: []string{"config", "--json"}})
	s.run(step{args: []string{"agents"}})
	s.run(step{args: []string{"config"}, env: map[string]string{cli.EnvURL: "lapd.example:3000", cli.EnvKey: "from-the-environment-key"}})
	s.run(step{args: []string{"login", "--url", fake.URL}, stdin: "\n", code: cli.ExitUsage})
	s.run(step{args: []string{"logout"}})
	s.run(step{args: []string{"logout"}})
	s.run(step{args: []string{"agents"}, code: cli.ExitAuth})
	s.golden("login")
}

func TestScriptAgents(t *testing.T) {
	fake := clitest.NewServer(t, clitest.Options{})
	s := newScript(t, fake)
	dir := s.home
	agentFile := filepath.Join(dir, "agent.json")
	if err := os.WriteFile(agentFile, []byte(`{
  "name": "my-sdk-agent",
  "harness_id": "claude-agent-sdk",
  "model": "anthropic/claude-sonnet-4-5",
  "prompt": "You are a helpful assistant.",
  "repo_url": "https://github.com/your-org/your-repo"
}`), 0o644); err != nil {
		t.Fatal(err)
	}
	typoFile := filepath.Join(dir, "typo.json")
	if err := os.WriteFile(typoFile, []byte(`{"name": "x", "harness": "lap"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	s.run(step{args: []string{"agents"}})
	s.run(step{args: []string{"agents", "create", "-f", agentFile}})
	s.run(step{args: []string{"agents", "create", "-f", agentFile}, code: cli.ExitError})
	s.run(step{args: []string{"agents", "create", "-f", typoFile}, code: cli.ExitUsage})
	s.run(step{args: []string{"agents", "create", "--name", "reviewer", "--model", "mock/tools", "--prompt-file", "-",
		"--repo", "https://example.com/r.git", "--branch", "dev", "--env", "GITHUB_TOKEN=secret", "--warm", "2"}, stdin: "Review code.\nBe terse.\n"})
	s.run(step{args: []string{"agents", "create", "--name", "Bad_Name"}, code: cli.ExitUsage})
	s.run(step{args: []string{"agents", "create", "--model", "x"}, code: cli.ExitUsage})
	s.run(step{args: []string{"agents", "create", "--name", "x", "--prompt", "a", "--prompt-file", "b"}, code: cli.ExitUsage})
	s.run(step{args: []string{"agents", "create", "--name", "third"}})
	s.run(step{args: []string{"agents"}})
	s.run(step{args: []string{"agents", "--search", "sdk", "--json"}})
	s.run(step{args: []string{"agents", "get", "reviewer"}})
	s.run(step{args: []string{"agents", "get", "my-sdk-agnet"}, code: cli.ExitNotFound})
	s.run(step{args: []string{"agents", "update", "reviewer", "--model", "anthropic/claude-sonnet-4-5", "--warm", "0"}})
	s.run(step{args: []string{"agents", "update", "reviewer", "--env", "A=b"}, code: cli.ExitUsage})
	s.run(step{args: []string{"agents", "update", "reviewer", "--env", "A=b", "--clear-env", "--json"}})
	s.run(step{args: []string{"agents", "update", "reviewer"}, code: cli.ExitUsage})
	s.run(step{args: []string{"agents", "delete", "third"}, code: cli.ExitUsage})
	s.run(step{args: []string{"agents", "delete", "third", "--yes"}})
	s.run(step{args: []string{"agents", "ls"}})
	s.run(step{args: []string{"harnesses"}})
	s.golden("agents")
}

func TestScriptChat(t *testing.T) {
	fake := clitest.NewServer(t, clitest.Options{Warm: true, ExtraHarnesses: []api.Harness{
		{ID: "tty-only", Description: "a terminal program without a chat API", Chat: false},
	}})
	fake.AddAgent(t, api.CreateAgentRequest{Name: "my-sdk-agent", HarnessID: "claude-agent-sdk", Model: "anthropic/claude-sonnet-4-5"})
	// An agent of a harness without a chat API (lapd's registry has none
	// yet, so it is written to the store and listed by the recorder).
	fake.SeedAgent(t, "terminal-agent", "tty-only")
	// And one of a harness this lapd does not know at all.
	fake.SeedAgent(t, "stranger", "from-another-lapd")
	s := newScript(t, fake)
	s.run(step{args: []string{"my-sdk-agent", "-m", "hi"}})
	s.run(step{args: []string{"my-sdk-agent"}, stdin: "first\n\nsecond\n"})
	s.run(step{args: []string{"my-sdk-agent", "-m", "/tools", "--rm"}})
	s.run(step{args: []string{"my-sdk-agent", "-m", "/markdown"}})
	s.run(step{args: []string{"my-sdk-agent", "-m", "/fail"}, code: cli.ExitFailed})
	s.run(step{args: []string{"my-sdk-agnet", "-m", "hi"}, code: cli.ExitNotFound})
	s.run(step{args: []string{"agnts"}, code: cli.ExitNotFound})
	s.run(step{args: []string{"nothing-like-it"}, code: cli.ExitNotFound})
	s.run(step{args: []string{"terminal-agent", "-m", "hi"}, code: cli.ExitUsage})
	s.run(step{args: []string{"stranger", "-m", "hi"}, code: cli.ExitUsage})
	s.run(step{args: []string{"chat"}, code: cli.ExitUsage})
	s.golden("chat")
}

func TestScriptSessions(t *testing.T) {
	fake := clitest.NewServer(t, clitest.Options{Warm: true})
	fake.AddAgent(t, api.CreateAgentRequest{Name: "my-sdk-agent", HarnessID: "claude-agent-sdk", Model: "anthropic/claude-sonnet-4-5"})
	fake.AddAgent(t, api.CreateAgentRequest{Name: "other"})
	s := newScript(t, fake)
	s.run(step{args: []string{"sessions"}})
	// Ids are random; these two share their first 8 hex digits, as two
	// of many sessions rarely may. They are idle, as a lapd that ran
	// before left them.
	full := []string{"c3970704-1111-4000-8000-00000000000a", "c3970704-2222-4000-8000-00000000000b"}
	fake.SeedSession(t, "my-sdk-agent", full[0])
	fake.SeedSession(t, "other", full[1])
	s.run(step{args: []string{"my-sdk-agent", "-m", "hello"}})
	s.run(step{args: []string{"other", "-m", "hello"}})
	s.run(step{args: []string{"sessions"}})
	s.run(step{args: []string{"sessions", "--agent", "my-sdk-agent", "--json"}})
	// The server resolves short ids and lists what an ambiguous one names.
	s.run(step{args: []string{"sessions", "get", "c3970704"}, code: cli.ExitUsage})
	s.run(step{args: []string{"sessions", "get", "c39707"}, code: cli.ExitUsage})
	s.run(step{args: []string{"logs", "c39707042222"}})
	s.run(step{args: []string{"sessions", "get", full[0]}})
	s.run(step{args: []string{"resume", full[0], "-m", "again"}})
	s.run(step{args: []string{"logs", full[0]}})
	s.run(step{args: []string{"logs", full[0], "--json"}})
	s.run(step{args: []string{"diagnose", full[0]}})
	s.run(step{args: []string{"sessions", "rm", full[1]}})
	s.run(step{args: []string{"resume", full[1]}, code: cli.ExitFailed})
	s.run(step{args: []string{"sessions", "--status", "dead"}})
	s.run(step{args: []string{"sessions", "get", "ffffffff"}, code: cli.ExitNotFound})
	s.golden("sessions")
}

func TestScriptColdAndFailedSessions(t *testing.T) {
	fake := clitest.NewServer(t, clitest.Options{})
	fake.AddAgent(t, api.CreateAgentRequest{Name: "cold"})
	s := newScript(t, fake)
	s.run(step{args: []string{"cold", "-m", "hi"}})
	fake.FailProvisions("git clone https://example.com/nope.git: repository not found")
	s.run(step{args: []string{"cold", "-m", "hi"}, code: cli.ExitFailed})
	s.golden("cold")
}

func TestScriptServerErrors(t *testing.T) {
	fake := clitest.NewServer(t, clitest.Options{})
	fake.AddAgent(t, api.CreateAgentRequest{Name: "my-sdk-agent"})
	s := newScript(t, fake)
	s.run(step{args: []string{"agents"}, env: map[string]string{cli.EnvKey: "wrong-key-0000000000"}, code: cli.ExitAuth})
	s.run(step{args: []string{"my-sdk-agent"}, env: map[string]string{cli.EnvKey: "wrong-key-0000000000"}, code: cli.ExitAuth})
	// A port that was just closed: nothing listens there.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String()
	l.Close()
	s.run(step{args: []string{"agents"}, env: map[string]string{cli.EnvURL: closed}, code: cli.ExitUnreachable})
	s.run(step{args: []string{"my-sdk-agent", "-m", "hi"}, env: map[string]string{cli.EnvURL: closed}, code: cli.ExitUnreachable})
	s.run(step{args: []string{"agents"}, env: map[string]string{cli.EnvURL: "ftp://x"}, code: cli.ExitError})
	s.run(step{args: []string{"agents", "--bogus"}, code: cli.ExitUsage})
	s.golden("errors")
}

// TestInterruptAbortsTurn sends Ctrl-C (as the signal channel would) while
// a scripted turn runs: the CLI asks the server to abort and exits 130.
func TestInterruptAbortsTurn(t *testing.T) {
	fake := clitest.NewServer(t, clitest.Options{Warm: true})
	fake.AddAgent(t, api.CreateAgentRequest{Name: "my-sdk-agent"})
	interrupts := make(chan os.Signal, 1)
	var out, errOut syncBuffer
	done := make(chan int, 1)
	home := t.TempDir()
	go func() {
		done <- cli.Main([]string{"my-sdk-agent", "-m", "/block Working on it"}, cli.Env{
			Stdout: &out, Stderr: &errOut, Interrupts: interrupts, Now: fixedNow,
			Getenv: func(k string) string {
				return map[string]string{"HOME": home, cli.EnvURL: fake.URL, cli.EnvKey: fake.Key}[k]
			},
		})
	}()
	waitfor.Within(t, clitest.Deadline, "the turn to start", func() bool { return strings.Contains(out.String(), "Working on it") })
	interrupts <- os.Interrupt
	deadline := time.After(clitest.Deadline)
	select {
	case code := <-done:
		if code != cli.ExitInterrupted {
			t.Fatalf("exit %d, want %d; stderr %q", code, cli.ExitInterrupted, errOut.String())
		}
	case <-deadline:
		t.Fatal("Ctrl-C did not end the run")
	}
	if !strings.Contains(errOut.String(), "⏹ aborted") {
		t.Errorf("stderr %q lacks the abort line", errOut.String())
	}
	found := false
	for _, r := range fake.Requests() {
		found = found || strings.HasSuffix(r, "/abort")
	}
	if !found {
		t.Errorf("no POST /abort; requests %q", fake.Requests())
	}
}
