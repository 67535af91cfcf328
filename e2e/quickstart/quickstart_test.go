// Package quickstart runs the documented flow end to end against the built
// binaries: the README's agent-create curl (its exact text, so the README
// stays true), `lap my-sdk-agent` on a pseudo-terminal with the
// claude-agent-sdk harness it names, a message that makes the agent edit a
// file in the repo, Ctrl-D, `lap resume`, the session going idle (its
// harness stopped) and resuming, and its deletion — checking what the user
// sees and what is on disk. lapd runs with the local backend and its LLM
// gateway in front of the scripted fake LLM.
package quickstart

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/cli/clitest"
	"lap.dev/lap/control/api"
	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/e2e/platform"
	"lap.dev/lap/internal/waitfor"
)

func TestMain(m *testing.M) {
	os.Exit(platform.Main(m))
}

// model is the fake model behind my-sdk-agent, in Claude Code's terms:
// side requests (no tools offered) get "ok"; a prompt about the README
// reads and edits README.md and writes CHANGELOG.md in repo with Claude
// Code's own tools (which take absolute paths); "What did you change?"
// answers from the conversation; anything else is echoed with the turn
// number, so a resumed session shows that it continues the same
// conversation.
type model struct {
	mu   sync.Mutex
	repo string // the clone the edit goes to
}

func (md *model) setRepo(dir string) {
	md.mu.Lock()
	defer md.mu.Unlock()
	md.repo = dir
}

func (md *model) reply(r fakellm.Request) fakellm.Reply {
	if len(r.Tools) == 0 {
		return fakellm.Text("ok")
	}
	prompts := userPrompts(r)
	if len(prompts) == 0 {
		return fakellm.Text("no prompt")
	}
	prompt := prompts[len(prompts)-1]
	switch {
	case strings.HasPrefix(prompt, editPrompt):
		md.mu.Lock()
		repo := md.repo
		md.mu.Unlock()
		readme := filepath.Join(repo, "README.md")
		switch toolResultsSince(r, editPrompt) {
		case 0:
			return fakellm.Reply{Text: "Let me read it first.", ToolCalls: []fakellm.ToolCall{fakellm.ClaudeCodeTools.Read(readme)}}
		case 1:
			return fakellm.CallTools(fakellm.ClaudeCodeTools.Edit(readme, "hello world", "hello from the agent"))
		case 2:
			return fakellm.CallTool("Write", map[string]any{"file_path": filepath.Join(repo, "CHANGELOG.md"), "content": changelog})
		}
		return fakellm.Text(editDone)
	case prompt == askPrompt:
		if r.Contains(editPrompt) && r.Contains(editDone) {
			return fakellm.Text(askAnswer)
		}
		return fakellm.Text("I do not remember changing anything.")
	}
	return fakellm.Text(echo(len(prompts), prompt))
}

const (
	editPrompt = "Please update the README and add a changelog"
	editDone   = "I updated README.md and wrote CHANGELOG.md."
	changelog  = "# Changelog\n\n- README greets from the agent\n"
	askPrompt  = "What did you change?"
	askAnswer  = "I changed README.md and added CHANGELOG.md."
)

func echo(turn int, prompt string) string {
	return fmt.Sprintf("You said: %s. This is turn %d.", prompt, turn)
}

var reminderRE = regexp.MustCompile(`(?s)<system-reminder>.*?</system-reminder>`)

// userPrompts returns what the user typed in each turn of the
// conversation: user messages without the context Claude Code attaches
// (<system-reminder> blocks), tool results excluded.
func userPrompts(r fakellm.Request) []string {
	var out []string
	for _, m := range r.Messages {
		if m.Role != "user" {
			continue
		}
		if s := strings.TrimSpace(reminderRE.ReplaceAllString(m.Text, "")); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// toolResultsSince counts the tool results after the last user message
// starting with prompt: how far the scripted turn has got.
func toolResultsSince(r fakellm.Request, prompt string) int {
	n := 0
	for _, m := range r.Messages {
		switch {
		case m.Role == "user" && strings.HasPrefix(strings.TrimSpace(reminderRE.ReplaceAllString(m.Text, "")), prompt):
			n = 0
		case m.Role == "tool":
			n++
		}
	}
	return n
}

// TestQuickstart is the README's flow, as a user runs it.
func TestQuickstart(t *testing.T) {
	platform.UseNodeHarnesses(t)
	p := platform.New(t, map[string]string{
		// The harnesses reach the fake LLM through lapd's gateway.
		"LAP_SANDBOX_GATEWAY_URL": "",
		"WARM_POOL_SIZE":          "1",
		"SESSION_IDLE_TIMEOUT":    "3s",
		"LOCAL_STOP_ON_EXIT":      "true",
	})
	md := &model{}
	p.LLM.Respond(md.reply)
	l := p.Start()
	defer l.Stop()
	env := func(home string) []string {
		return []string{"HOME=" + home, "PATH=" + os.Getenv("PATH"), "TERM=xterm-256color",
			"LAP_URL=" + l.URL, "LAP_MASTER_KEY=" + platform.MasterKey}
	}
	lap := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(platform.Lap(), args...)
		cmd.Env = env(t.TempDir())
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "lap %s:\n%s", strings.Join(args, " "), out)
		return string(out)
	}

	// The README's curl, word for word, with the two variables it uses.
	curl := platform.ReadmeCurl(t)
	runCurl := func() api.Agent {
		t.Helper()
		cmd := exec.Command("bash", "-c", curl+" --silent --show-error")
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "LAP_URL=" + l.URL, "MASTER_KEY=" + platform.MasterKey}
		out, err := cmd.Output()
		require.NoError(t, err, "%s", curl)
		var a api.Agent
		require.NoError(t, json.Unmarshal(out, &a), "%s", out)
		return a
	}
	agent := runCurl()
	assert.Equal(t, "my-sdk-agent", agent.Name)
	assert.Equal(t, "claude-agent-sdk", agent.HarnessID)
	assert.Equal(t, "anthropic/claude-sonnet-4-5", agent.Model)
	assert.Equal(t, "You are a helpful assistant.", agent.Prompt)
	assert.Equal(t, "main", agent.Branch)
	status, body := l.Do(http.MethodPost, api.BasePath+"/agents", api.CreateAgentRequest{Name: "my-sdk-agent", Model: "m"}, nil)
	assert.Equal(t, http.StatusConflict, status, "the same name again: %s", body)

	// This machine has no internet: point the agent at a repo on loopback.
	repo := platform.GitRepo(t, map[string]string{"README.md": "# demo\nhello world\n"})
	out := lap("agents", "update", "my-sdk-agent", "--repo", repo)
	assert.Regexp(t, `^✓ agent my-sdk-agent \([0-9a-f]{8}\) updated, generation 2\n$`, out)
	waitfor.Within(t, platform.Deadline, "a warm sandbox of the new generation", func() bool { return l.Warm("my-sdk-agent") == 1 })

	clitest.ChatSuite(t, clitest.Target{
		Bin:     platform.Lap(),
		URL:     l.URL,
		Key:     platform.MasterKey,
		Agent:   "my-sdk-agent",
		Harness: "claude-agent-sdk",
		Reply:   func(turn int, message string) string { return echo(turn, message) },
	})
	if t.Failed() {
		return
	}

	// A message that makes the agent edit the repo.
	tm := clitest.StartTerm(t, platform.Lap(), env(t.TempDir()), "my-sdk-agent")
	_, m := tm.WaitLine(0, regexp.MustCompile(`^✓ session ([0-9a-f]{8})$`))
	short := m[1]
	tm.WaitFor("the chat prompt", func(l []string) bool { return len(l) >= 5 && l[4] == ">" })
	sess := l.Session(short, "")
	repoDir := filepath.Join(p.Workspace(sess.SandboxID), "repo")
	md.setRepo(repoDir)
	tm.Send(editPrompt + ".\r")
	start, _ := tm.WaitLine(0, regexp.MustCompile(`^> `+regexp.QuoteMeta(editPrompt)+`\.$`))
	screen := strings.Join(platform.TurnEnd(tm, start)[start:], "\n")
	assert.Contains(t, screen, editDone)
	// Each tool call is one line, completed in place, naming the file as
	// the user knows it: relative to the repo.
	assert.Regexp(t, `(?m)^✓ read: README\.md$`, screen)
	assert.Regexp(t, `(?m)^✓ edit: README\.md$`, screen)
	assert.Regexp(t, `(?m)^✓ write: CHANGELOG\.md$`, screen)
	platform.AssertFile(t, filepath.Join(repoDir, "README.md"), "# demo\nhello from the agent\n")
	platform.AssertFile(t, filepath.Join(repoDir, "CHANGELOG.md"), changelog)

	tm.Send("\x04")
	tm.WaitLine(0, regexp.MustCompile(`^session `+short+` kept; resume it with: lap resume `+short+`$`))
	require.Equal(t, 0, tm.Wait(), "Ctrl-D exits 0")

	// Idle: the harness is stopped, the workspace kept.
	pid := p.HarnessPID(sess.SandboxID)
	waitfor.Within(t, platform.Deadline, "the session to go idle", func() bool { return l.Session(sess.ID, "").Status == api.SessionIdle })
	waitfor.Within(t, platform.Deadline, "its harness to stop", func() bool { return !platform.Alive(pid) })
	platform.AssertFile(t, filepath.Join(repoDir, "CHANGELOG.md"), changelog)
	out = lap("sessions", "get", short)
	assert.Contains(t, out, "status       idle\n")
	assert.Contains(t, out, "resume with  lap resume "+short+"\n")

	// lap resume: the next message wakes it, on the same files and
	// conversation.
	tm = clitest.StartTerm(t, platform.Lap(), env(t.TempDir()), "resume", short)
	tm.WaitLine(0, regexp.MustCompile(`^✓ session `+short+` \(resumed, 2 messages\)$`))
	tm.WaitFor("the chat prompt", func(l []string) bool { return len(l) > 0 && l[len(l)-1] == ">" })
	tm.Send(askPrompt + "\r")
	start, _ = tm.WaitLine(0, regexp.MustCompile(`^> `+regexp.QuoteMeta(askPrompt)+`$`))
	screen = strings.Join(platform.TurnEnd(tm, start)[start:], "\n")
	assert.Contains(t, screen, askAnswer)
	resumed := l.Session(sess.ID, "")
	assert.Equal(t, api.SessionReady, resumed.Status)
	assert.Equal(t, sess.SandboxID, resumed.SandboxID, "resumed on the same sandbox")
	assert.NotEqual(t, pid, p.HarnessPID(sess.SandboxID), "by a new harness process")
	tm.Send("\x04")
	require.Equal(t, 0, tm.Wait())

	// Delete: the session ends and its sandbox goes.
	out = lap("sessions", "delete", short)
	assert.Equal(t, "✓ session "+short+" deleted\n", out)
	assert.Equal(t, api.SessionDead, l.Session(sess.ID, "").Status)
	_, err := os.Stat(p.Workspace(sess.SandboxID))
	assert.ErrorIs(t, err, os.ErrNotExist, "the sandbox's directory is removed")
	cmd := exec.Command(platform.Lap(), "resume", short)
	cmd.Env = env(t.TempDir())
	b, err := cmd.CombinedOutput()
	assert.Error(t, err)
	assert.Contains(t, string(b), "session "+short+" has ended")
	msgs := l.Messages(sess.ID)
	require.Len(t, msgs, 4, "the log outlives the session")
	for _, m := range msgs {
		assert.Equal(t, "completed", m.Info.Status)
	}
}
