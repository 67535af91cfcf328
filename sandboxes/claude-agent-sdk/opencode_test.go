package claudeagentsdk_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/sandboxes/protocol"
)

// TestOpencodeHarness drives the pinned opencode through lap's adapter, as
// TestClaudeAgentSDKHarness does the SDK: edit the repo, abort, restart.
func TestOpencodeHarness(t *testing.T) {
	entry := built(t, "opencode.js")
	if _, err := os.Stat(filepath.Join("..", "opencode", "node_modules")); err != nil {
		t.Fatalf("opencode is not installed (%v): run `make build` first", err)
	}
	r := startEditRun(t, entry, opencode)
	var id protocol.Identity
	r.h.call("GET", "/", nil, &id)
	assert.Equal(t, "opencode", id.Harness)
	assert.Equal(t, "1.18.33", id.Version)

	ev := r.h.subscribe()
	session := r.h.newSession(protocol.CreateSessionRequest{Title: "readme"})

	m, _ := r.fixTurn(t, session)
	got := turnEvents(t, ev, session)
	assert.Equal(t, 2, strings.Count(strings.Join(got, " "), "message.updated"), "one message per turn: %v", got)
	for _, e := range ev.of(session) {
		if e.Properties.Part != nil {
			assert.Equal(t, m.Info.ID, e.Properties.Part.MessageID, "parts of every step belong to the turn's message")
		}
	}

	main := mainRequest(r.f)
	assert.Equal(t, fakellm.FormatOpenAIChat, main.Format)
	assert.Equal(t, "/llm/v1/chat/completions", main.Path)
	assert.Equal(t, "anthropic/claude-sonnet-4-5", main.Model)
	assert.Equal(t, "Bearer lapsb_test", main.Header.Get("Authorization"))
	assert.Contains(t, main.SystemText(), "You are a careful engineer.")

	// Abort mid-tool; a second turn meanwhile is a 409.
	r.abortSlowTurn(t, ev, session)

	// Restart on the same workspace: opencode's store is in the workspace.
	r.restartAndAsk(t, session)
}

// TestOpencodeHistorySeeding: history given at session creation reaches
// the model, and the log shows the conversation as the user had it.
func TestOpencodeHistorySeeding(t *testing.T) {
	f := historySeeding(t, built(t, "opencode.js"), "mock/tools", "/llm", "ada")
	for _, r := range f.Requests() {
		assert.Equal(t, "mock/tools", r.Model, "lap's model name reaches the gateway whole")
	}
}

// TestOpencodeWithMockModel: lapd's offline demo model mock/tools drives
// opencode through the gateway's OpenAI format: bash with ls, then the answer.
func TestOpencodeWithMockModel(t *testing.T) {
	mockModelTurn(t, built(t, "opencode.js"), "demo")
}
