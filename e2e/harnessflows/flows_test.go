// Package harnessflows runs the Node.js harnesses of issue 8 —
// claude-agent-sdk (the official Claude Agent SDK and its Claude Code) and
// opencode (opencode serve behind lap's adapter) — through the built
// platform, offline: lapd with the local backend and its LLM gateway in
// front of the scripted fake LLM, which speaks the Anthropic Messages
// format to the SDK and the OpenAI format to opencode. For each harness an
// agent is created with the quickstart's body, `lap <agent>` opens chat mode
// on a pseudo-terminal, one turn reads, edits and runs Bash in the repo,
// Ctrl-C aborts a turn in the middle of a long Bash command, and the
// session, suspended once idle, resumes with its history — checking what
// the user sees, what is on disk, which processes run and what reached the
// model.
package harnessflows

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/cli/clitest"
	"lap.dev/lap/control/api"
	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/e2e/platform"
	"lap.dev/lap/internal/waitfor"
	"lap.dev/lap/sandboxes/protocol"
)

func TestMain(m *testing.M) {
	// opencode takes seconds to start on a busy machine; the terminal's
	// waits are guards against a hang, as long as the platform's.
	clitest.Deadline = platform.Deadline
	os.Exit(platform.Main(m))
}

// What the user types, and what the scripted model answers.
const (
	tidyPrompt = "Please tidy the README and note it in the changelog"
	tidyDone   = "I tidied README.md and noted it in CHANGELOG.md."
	slowPrompt = "Run the slow job"
	askPrompt  = "What did you change?"
	askAnswer  = "Earlier I tidied README.md and noted it in CHANGELOG.md; the slow job was interrupted."
	forgot     = "I do not remember changing anything."
	// slowJob runs until it is stopped; its first line shows it started.
	slowJob     = "echo started > slow.txt && sleep 300 && echo finished >> slow.txt"
	noteLine    = "- tidied the README"
	noteCommand = "echo '" + noteLine + "' >> CHANGELOG.md && git status --short"
)

// harness is what differs between the two harnesses: the names and input
// fields of their tools, and how they reach the model.
type harness struct {
	id, agent string
	// tools are what the model calls.
	tools fakellm.Tools
	// format, path and model are what the upstream receives.
	format    fakellm.Format
	llmPath   string
	llmModel  string
	keyHeader func(key string) (name, value string)
}

var (
	claudeAgentSDK = harness{
		id: "claude-agent-sdk", agent: "my-sdk-agent",
		tools:  fakellm.ClaudeCodeTools,
		format: fakellm.FormatAnthropicMessages, llmPath: "/v1/messages", llmModel: "claude-sonnet-4-5",
		keyHeader: func(key string) (string, string) { return "X-Api-Key", key },
	}
	opencode = harness{
		id: "opencode", agent: "my-opencode-agent",
		tools:  fakellm.OpencodeTools,
		format: fakellm.FormatOpenAIChat, llmPath: "/v1/chat/completions", llmModel: "anthropic/claude-sonnet-4-5",
		keyHeader: func(key string) (string, string) { return "Authorization", "Bearer " + key },
	}
)

// model is the fake model behind the agent, scripted by the turn's prompt
// and how many tool results the turn has so far. Requests that offer no
// tools are the harnesses' side requests (titles, summaries).
type model struct {
	h    harness
	mu   sync.Mutex
	repo string // the session's clone, which Claude Code's and opencode's tools want absolute paths into
}

func (md *model) setRepo(dir string) {
	md.mu.Lock()
	defer md.mu.Unlock()
	md.repo = dir
}

func (md *model) reply(r fakellm.Request) fakellm.Reply {
	if len(r.Tools) == 0 {
		return fakellm.Text("A title")
	}
	md.mu.Lock()
	readme := filepath.Join(md.repo, "README.md")
	md.mu.Unlock()
	h := md.h
	// The ask first: a harness may carry earlier turns in front of it.
	prompt, step := turn(r, askPrompt, slowPrompt, tidyPrompt)
	switch prompt {
	case tidyPrompt:
		switch step {
		case 0:
			return fakellm.Reply{Text: "Let me read it first.", ToolCalls: []fakellm.ToolCall{h.tools.Read(readme)}}
		case 1:
			return fakellm.CallTools(h.tools.Edit(readme, "hello world", "hello from the agent"))
		case 2:
			return fakellm.CallTools(h.tools.Bash(noteCommand, "Note the change"))
		}
		return fakellm.Text(tidyDone)
	case slowPrompt:
		if step == 0 {
			return fakellm.CallTools(h.tools.Bash(slowJob, "Run the slow job"))
		}
		return fakellm.Text("The job finished.")
	case askPrompt:
		if r.Contains(tidyPrompt) && r.Contains(tidyDone) && r.Contains(slowPrompt) {
			return fakellm.Text(askAnswer)
		}
		return fakellm.Text(forgot)
	}
	return fakellm.Text("unexpected prompt")
}

// turn finds which prompt the request's current turn answers (the last
// user message containing one; harnesses wrap what the user typed in
// reminders and context) and its step: the tool results since then.
func turn(r fakellm.Request, prompts ...string) (prompt string, step int) {
	for i := len(r.Messages) - 1; i >= 0; i-- {
		if r.Messages[i].Role != "user" {
			continue
		}
		for _, p := range prompts {
			if strings.Contains(r.Messages[i].Text, p) {
				for _, later := range r.Messages[i+1:] {
					if later.Role == "tool" {
						step++
					}
				}
				return p, step
			}
		}
	}
	return "", 0
}

func TestClaudeAgentSDK(t *testing.T) {
	t.Parallel()
	flow(t, claudeAgentSDK)
}

func TestOpencode(t *testing.T) {
	t.Parallel()
	flow(t, opencode)
}

// upstreamKey is lapd's LITELLM_API_KEY: the fake must see it on every
// request, and the harness never.
const upstreamKey = "sk-upstream-key-of-the-flows-test"

// flow is the whole user flow with harness h.
func flow(t *testing.T, h harness) {
	platform.UseNodeHarnesses(t)
	// Each step's duration goes to the verbose log (no assertion on it).
	began := time.Now()
	step := func(what string) { t.Logf("%6.1fs %s", time.Since(began).Seconds(), what) }
	p := platform.New(t, map[string]string{
		// The harnesses reach the fake LLM through lapd's gateway.
		"LAP_SANDBOX_GATEWAY_URL": "",
		"LITELLM_API_KEY":         upstreamKey,
		// A warm sandbox, so chat mode does not wait for the harness to
		// start (opencode takes seconds).
		"WARM_POOL_SIZE":       "1",
		"SESSION_IDLE_TIMEOUT": "4s",
		"LOCAL_STOP_ON_EXIT":   "true",
		"LOCAL_STOP_GRACE":     "30s",
	})
	md := &model{h: h}
	p.LLM.Respond(md.reply)
	l := p.Start()
	defer l.Stop()
	env := func() []string {
		return []string{"HOME=" + t.TempDir(), "PATH=" + os.Getenv("PATH"), "TERM=xterm-256color",
			"LAP_URL=" + l.URL, "LAP_MASTER_KEY=" + platform.MasterKey}
	}
	lap := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(platform.Lap(), args...)
		cmd.Env = env()
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "lap %s:\n%s", strings.Join(args, " "), out)
		return string(out)
	}

	step("lapd started")
	// The agent, created with the quickstart's body (README.md's curl),
	// naming this harness.
	agent := createAgent(t, l, h)
	assert.Equal(t, h.agent, agent.Name)
	assert.Equal(t, h.id, agent.HarnessID)
	assert.Equal(t, "anthropic/claude-sonnet-4-5", agent.Model)
	assert.Equal(t, "You are a helpful assistant.", agent.Prompt)
	// This machine has no internet: point the agent at a repo on loopback.
	repoURL := platform.GitRepo(t, map[string]string{"README.md": "# demo\nhello world\n"})
	lap("agents", "update", h.agent, "--repo", repoURL)
	envs := map[string]string{"LOG_LEVEL": "DEBUG"}
	l.Do("PATCH", api.BasePath+"/agents/"+h.agent, api.UpdateAgentRequest{EnvVars: &envs}, nil)
	waitfor.Within(t, platform.Deadline, "a warm sandbox of the new generation", func() bool { return l.Warm(h.agent) == 1 })

	step("agent created and repo set; a warm sandbox is ready")
	// Chat mode: the five lines.
	tm := clitest.StartTerm(t, platform.Lap(), env(), h.agent)
	lines := tm.WaitFor("the chat prompt", func(l []string) bool { return len(l) >= 5 && l[4] == ">" })
	assert.Regexp(t, `^✓ agent `+h.agent+` \(`+agent.ID[:8]+`, harness=`+h.id+`\)$`, lines[0])
	m := regexp.MustCompile(`^✓ session ([0-9a-f]{8})$`).FindStringSubmatch(lines[1])
	require.NotNil(t, m, "line 2: %q", lines[1])
	short := m[1]
	assert.Equal(t, []string{"waiting for sandbox. ready", "Chat mode — Ctrl-D to exit", ">"}, lines[2:5])
	sess := l.Session(short, "")
	repo := filepath.Join(p.Workspace(sess.SandboxID), "repo")
	md.setRepo(repo)

	step("chat mode open")
	// A turn that reads, edits and runs Bash in the repo.
	tm.Send(tidyPrompt + ".\r")
	start, _ := tm.WaitLine(0, regexp.MustCompile(`^> `+regexp.QuoteMeta(tidyPrompt)+`\.$`))
	screen := strings.Join(platform.TurnEnd(tm, start)[start:], "\n")
	assert.Contains(t, screen, "Let me read it first.")
	assert.Contains(t, screen, tidyDone)
	// One line per tool call, completed in place, naming the file as the
	// user knows it (relative to the repo) or the command.
	assert.Regexp(t, `(?m)^✓ read: README\.md$`, screen)
	assert.Regexp(t, `(?m)^✓ edit: README\.md$`, screen)
	assert.Regexp(t, `(?m)^✓ bash: `+regexp.QuoteMeta(noteCommand)+`$`, screen)
	platform.AssertFile(t, filepath.Join(repo, "README.md"), "# demo\nhello from the agent\n")
	platform.AssertFile(t, filepath.Join(repo, "CHANGELOG.md"), noteLine+"\n")

	step("edit turn done")
	// Ctrl-C in the middle of a long Bash command: the turn is aborted,
	// the command's processes stopped, and the prompt is back.
	tm.Send(slowPrompt + "\r")
	start, _ = tm.WaitLine(0, regexp.MustCompile(`^> `+regexp.QuoteMeta(slowPrompt)+`$`))
	slow := filepath.Join(repo, "slow.txt")
	waitfor.Within(t, platform.Deadline, "the slow job to start", func() bool { _, err := os.Stat(slow); return err == nil })
	var jobs []int
	waitfor.Within(t, platform.Deadline, "the slow job's sleep", func() bool { jobs = processesIn(repo, "sleep"); return len(jobs) > 0 })
	tm.WaitLine(start, regexp.MustCompile(`^… bash: `))
	tm.Send("\x03")
	tm.WaitLine(start, regexp.MustCompile(`^⏹ aborted$`))
	tm.WaitFor("the next prompt", func(l []string) bool { return len(l) > 0 && l[len(l)-1] == ">" })
	for _, pid := range jobs {
		waitfor.Within(t, platform.Deadline, "the slow job's process "+strconv.Itoa(pid)+" to end", func() bool { return !platform.Alive(pid) })
	}
	platform.AssertFile(t, slow, "started\n")
	msgs := l.Messages(sess.ID)
	require.Len(t, msgs, 4)
	aborted := msgs[3]
	assert.Equal(t, "assistant", aborted.Info.Role)
	assert.Equal(t, protocol.StatusFailed, aborted.Info.Status)
	require.NotNil(t, aborted.Info.Error, "the aborted turn is logged with its error")
	assert.Equal(t, "Aborted", aborted.Info.Error.Name)

	step("aborted turn done")
	// Ctrl-D; the session goes idle and its harness stops.
	tm.Send("\x04")
	tm.WaitLine(0, regexp.MustCompile(`^session `+short+` kept; resume it with: lap resume `+short+`$`))
	require.Equal(t, 0, tm.Wait(), "Ctrl-D exits 0")
	pid := p.HarnessPID(sess.SandboxID)
	waitfor.Within(t, platform.Deadline, "the session to go idle", func() bool { return l.Session(sess.ID, "").Status == api.SessionIdle })
	waitfor.Within(t, platform.Deadline, "its harness to stop", func() bool { return !platform.Alive(pid) })

	step("session idle, harness stopped")
	// lap resume: the next message wakes it with its history.
	before := len(p.LLM.Requests())
	tm = clitest.StartTerm(t, platform.Lap(), env(), "resume", short)
	tm.WaitLine(0, regexp.MustCompile(`^✓ session `+short+` \(resumed, 4 messages\)$`))
	tm.WaitFor("the chat prompt", func(l []string) bool { return len(l) > 0 && l[len(l)-1] == ">" })
	tm.Send(askPrompt + "\r")
	start, _ = tm.WaitLine(0, regexp.MustCompile(`^> `+regexp.QuoteMeta(askPrompt)+`$`))
	screen = strings.Join(platform.TurnEnd(tm, start)[start:], "\n")
	assert.Contains(t, screen, askAnswer, "the model saw the earlier turns")
	resumed := l.Session(sess.ID, "")
	assert.Equal(t, api.SessionReady, resumed.Status)
	assert.Equal(t, sess.SandboxID, resumed.SandboxID, "resumed on the same workspace")
	assert.NotEqual(t, pid, p.HarnessPID(sess.SandboxID), "by a new harness process")
	var main *fakellm.Request
	for _, r := range p.LLM.Requests()[before:] {
		if len(r.Tools) > 0 {
			main = &r
			break
		}
	}
	require.NotNil(t, main, "the resumed turn called the model")
	for _, earlier := range []string{tidyPrompt, tidyDone, slowPrompt} {
		assert.True(t, main.Contains(earlier), "the resumed turn's request holds %q", earlier)
	}
	tm.Send("\x04")
	require.Equal(t, 0, tm.Wait())

	step("resumed turn done")
	// Every request reached the upstream in the harness's format, for the
	// agent's model, with lapd's key in place of the sandbox's token.
	name, value := h.keyHeader(upstreamKey)
	for _, r := range p.LLM.Requests() {
		assert.Equal(t, h.format, r.Format, "request %d", r.Seq)
		assert.Equal(t, h.llmPath, r.Path, "request %d", r.Seq)
		assert.Equal(t, h.llmModel, r.Model, "request %d", r.Seq)
		assert.Equal(t, value, r.Header.Get(name), "request %d carries lapd's key", r.Seq)
		assert.NotContains(t, fmt.Sprint(r.Header), "lapsb_", "request %d carries no sandbox token", r.Seq)
	}
	usage := l.Session(sess.ID, "").Usage
	assert.Positive(t, usage.Requests)
	assert.Positive(t, usage.InputTokens)
	assert.Positive(t, usage.CostUSD, "claude-sonnet-4-5 has a price")
}

// createAgent runs the README's agent-create curl, as a user copies it,
// with this harness's name and id in its body.
func createAgent(t *testing.T, l *platform.Lapd, h harness) api.Agent {
	t.Helper()
	curl := platform.ReadmeCurl(t)
	for _, field := range []string{`"name": "my-sdk-agent"`, `"harness_id": "claude-agent-sdk"`} {
		require.Contains(t, curl, field, "the quickstart body")
	}
	curl = strings.Replace(curl, `"name": "my-sdk-agent"`, `"name": "`+h.agent+`"`, 1)
	curl = strings.Replace(curl, `"harness_id": "claude-agent-sdk"`, `"harness_id": "`+h.id+`"`, 1)
	cmd := exec.Command("bash", "-c", curl+" --silent --show-error --fail-with-body")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "LAP_URL=" + l.URL, "MASTER_KEY=" + platform.MasterKey}
	out, err := cmd.Output()
	require.NoError(t, err, "%s\n%s", curl, out)
	var a api.Agent
	require.NoError(t, json.Unmarshal(out, &a), "%s", out)
	return a
}

// processesIn returns the pids of the running processes named comm whose
// working directory is dir.
func processesIn(dir, comm string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		name, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil || strings.TrimSpace(string(name)) != comm {
			continue
		}
		if cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd")); err == nil && cwd == dir && platform.Alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}
