package sandboxes

import (
	"slices"
	"strings"
)

// Harness describes one kind of harness server lap can run in a sandbox.
type Harness struct {
	// ID is the agent's harness_id.
	ID          string `json:"id"`
	Description string `json:"description"`
	// Chat is true when the harness answers whole turns over the harness
	// protocol, so the CLI can open chat mode with it.
	Chat bool `json:"chat"`
	// TUI is true for a terminal harness: it runs a terminal agent (a TUI)
	// under tmux and serves its terminal as a WebSocket at GET /tty
	// (sandboxes/ttyharness), so clients attach to it instead of chatting.
	TUI bool `json:"supports_tui"`
	// Command is how the local backend starts it: argv with $PORT expanded
	// from the sandbox environment. A relative first element is looked up
	// next to the lapd binary, then on PATH.
	Command []string `json:"command"`
	// Image is the default container image on Knative; the setting
	// HARNESS_IMAGE_<ID> (upper case, '-' → '_') overrides it.
	Image string `json:"image"`
}

// ImageSetting is the name of the setting that overrides h's image.
func (h Harness) ImageSetting() string {
	return "HARNESS_IMAGE_" + strings.ToUpper(strings.ReplaceAll(h.ID, "-", "_"))
}

// DefaultHarness is the harness_id of agents that name none.
const DefaultHarness = "lap"

// harnesses is the registry, in the order they are listed to users.
var harnesses = []Harness{
	{
		ID:          "lap",
		Description: "lap's own Go harness: a tool-using coding agent over any OpenAI-compatible model",
		Chat:        true,
		Command:     []string{"lap-harness"},
		Image:       "ko://lap.dev/lap/cmd/lap-harness",
	},
	{
		ID:          "claude-agent-sdk",
		Description: "the official Claude Agent SDK (Node.js) behind the harness protocol",
		Chat:        true,
		Command:     []string{"lap-harness-claude-agent-sdk"},
		Image:       "lap.dev/harness-claude-agent-sdk:latest",
	},
	{
		ID:          "opencode",
		Description: "opencode's own server (opencode serve) behind lap's protocol adapter",
		Chat:        true,
		// The adapter clones the repo, configures the gateway as opencode's
		// provider and runs opencode serve on a private port (DESIGN.md).
		Command: []string{"lap-harness-opencode"},
		Image:   "lap.dev/harness-opencode:latest",
	},
	{
		ID:          "claude-code",
		Description: "Claude Code's own terminal UI, run under tmux in the sandbox; attach to its terminal",
		TUI:         true,
		// The launcher runs lap-tty-harness with the pinned Claude Code of
		// sandboxes/claude-code (make build writes it).
		Command: []string{"lap-harness-claude-code"},
		Image:   "lap.dev/harness-claude-code:latest",
	},
	{
		ID:          "codex",
		Description: "OpenAI Codex's terminal UI, run under tmux in the sandbox; attach to its terminal",
		TUI:         true,
		Command:     []string{"lap-harness-codex"},
		Image:       "lap.dev/harness-codex:latest",
	},
}

// Harnesses returns every known harness.
func Harnesses() []Harness { return slices.Clone(harnesses) }

// LookupHarness returns the harness with the given id.
func LookupHarness(id string) (Harness, bool) {
	i := slices.IndexFunc(harnesses, func(h Harness) bool { return h.ID == id })
	if i < 0 {
		return Harness{}, false
	}
	return harnesses[i], true
}

// HarnessIDs returns the ids of every known harness, for error messages.
func HarnessIDs() []string {
	ids := make([]string, len(harnesses))
	for i, h := range harnesses {
		ids[i] = h.ID
	}
	return ids
}
