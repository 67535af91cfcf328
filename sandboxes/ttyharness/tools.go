package ttyharness

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// tool is one terminal agent: its executable's usual name, how its
// configuration is written into the tool's $HOME before it first runs, and
// the command and environment tmux runs it with.
type tool struct {
	bin       string
	configure func(s *Server) error
	command   func(s *Server) (argv, env []string)
}

var tools = map[string]tool{
	ToolClaudeCode: {bin: "claude", configure: configureClaudeCode, command: claudeCodeCommand},
	ToolCodex:      {bin: "codex", configure: configureCodex, command: codexCommand},
}

// gatewayRoot turns LITELLM_API_BASE into an API root without a final /v1
// (lap's convention is base + /v1 unless the base already ends so), as the
// claude-agent-sdk harness does.
func gatewayRoot(base string) string {
	s := strings.TrimRight(strings.TrimSpace(base), "/")
	return strings.TrimSuffix(s, "/v1")
}

// claudeModel maps lap's model names to Claude Code's: the Anthropic
// provider prefix is dropped, other names pass through for the gateway.
func claudeModel(name string) string {
	s := strings.TrimSpace(name)
	if len(s) > len("anthropic/") && strings.EqualFold(s[:len("anthropic/")], "anthropic/") {
		return s[len("anthropic/"):]
	}
	return s
}

// configureClaudeCode writes $HOME/.claude.json so Claude Code starts
// straight at its prompt: onboarding done (else it checks the public API
// host, which a sandbox cannot reach), bypass-permissions mode accepted
// and the repo trusted. Keys Claude Code wrote on an earlier run are kept.
func configureClaudeCode(s *Server) error {
	path := filepath.Join(s.home, ".claude.json")
	doc := map[string]any{}
	if b, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(b, &doc); err != nil {
			s.log.Warn("Claude Code's .claude.json is not JSON; writing a new one", "err", err)
			doc = map[string]any{}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read %s: %w", path, err)
	}
	doc["hasCompletedOnboarding"] = true
	doc["bypassPermissionsModeAccepted"] = true
	doc["autoUpdates"] = false
	projects, _ := doc["projects"].(map[string]any)
	if projects == nil {
		projects = map[string]any{}
	}
	project, _ := projects[s.repo].(map[string]any)
	if project == nil {
		project = map[string]any{}
	}
	project["hasTrustDialogAccepted"] = true
	project["hasCompletedProjectOnboarding"] = true
	projects[s.repo] = project
	doc["projects"] = projects
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// claudeCodeCommand runs Claude Code unattended against the gateway:
// the stub token as ANTHROPIC_AUTH_TOKEN (ANTHROPIC_API_KEY would make it
// ask whether to use the key), every model slot on the agent's model,
// permissions bypassed (the sandbox is the boundary; as root that needs
// IS_SANDBOX=1), no updater or other traffic, the agent's prompt appended
// to Claude Code's own, and --continue once a conversation exists, so a
// restart or a resumed sandbox goes on with it.
func claudeCodeCommand(s *Server) (argv, env []string) {
	argv = []string{s.cfg.ToolBin, "--dangerously-skip-permissions"}
	if s.cfg.AgentPrompt != "" {
		argv = append(argv, "--append-system-prompt", s.cfg.AgentPrompt)
	}
	if hasFile(filepath.Join(s.home, ".claude", "projects"), ".jsonl") {
		argv = append(argv, "--continue")
	}
	drop := []string{"ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "CLAUDE_CONFIG_DIR",
		"ANTHROPIC_MODEL", "ANTHROPIC_DEFAULT_OPUS_MODEL", "ANTHROPIC_DEFAULT_SONNET_MODEL",
		"ANTHROPIC_DEFAULT_HAIKU_MODEL", "ANTHROPIC_SMALL_FAST_MODEL", "CLAUDE_CODE_SUBAGENT_MODEL",
		"CLAUDE_CODE_ENABLE_TELEMETRY"}
	extra := []string{
		"ANTHROPIC_BASE_URL=" + gatewayRoot(s.cfg.LLMBaseURL),
		"ANTHROPIC_AUTH_TOKEN=" + s.cfg.LLMAPIKey,
		"IS_SANDBOX=1",
		"DISABLE_AUTOUPDATER=1",
		"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1",
		"DISABLE_TELEMETRY=1",
		"DISABLE_ERROR_REPORTING=1",
		"DISABLE_BUG_COMMAND=1",
		"CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY=1",
	}
	if m := claudeModel(s.cfg.Model); m != "" {
		// Claude Code calls a small model for side tasks; the gateway
		// should see the agent's model only.
		for _, k := range []string{"ANTHROPIC_MODEL", "ANTHROPIC_DEFAULT_OPUS_MODEL", "ANTHROPIC_DEFAULT_SONNET_MODEL",
			"ANTHROPIC_DEFAULT_HAIKU_MODEL", "ANTHROPIC_SMALL_FAST_MODEL", "CLAUDE_CODE_SUBAGENT_MODEL"} {
			extra = append(extra, k+"="+m)
		}
	}
	return argv, s.toolEnv(drop, extra...)
}

// codexTokenEnv is the variable Codex reads the gateway's stub token from
// (the custom provider's env_key).
const codexTokenEnv = "LAP_LLM_TOKEN"

// configureCodex writes $HOME/.codex/config.toml: a custom model provider
// whose base URL is the gateway and whose key is the stub token, spoken
// over the Responses API (this Codex refuses wire_api = "chat"), no
// approvals and no Codex sandbox (lap's sandbox is the boundary), no
// hosted web search (see below), the repo trusted, no update check and
// no analytics. It is rewritten on every
// start, so a changed agent takes effect.
func configureCodex(s *Server) error {
	dir := filepath.Join(s.home, ".codex")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	var b strings.Builder
	b.WriteString("# Written by lap-tty-harness on every start; edits are lost.\n")
	if s.cfg.Model != "" {
		fmt.Fprintf(&b, "model = %s\n", tomlString(s.cfg.Model))
	}
	b.WriteString("model_provider = \"lap\"\n")
	b.WriteString("approval_policy = \"never\"\n")
	b.WriteString("sandbox_mode = \"danger-full-access\"\n")
	b.WriteString("check_for_update_on_startup = false\n")
	// Keystrokes arrive in bursts over the network (lapd's relay); Codex
	// would take a burst ending in Enter for a paste with a newline.
	b.WriteString("disable_paste_burst = true\n")
	// The provider's hosted web search is billed per call outside the
	// usage an answer reports, so lapd's gateway refuses requests that
	// offer it; Codex offers it unless it is disabled.
	b.WriteString("web_search = \"disabled\"\n")
	if s.cfg.AgentPrompt != "" {
		fmt.Fprintf(&b, "developer_instructions = %s\n", tomlString(s.cfg.AgentPrompt))
	}
	b.WriteString("\n[model_providers.lap]\nname = \"lap gateway\"\n")
	fmt.Fprintf(&b, "base_url = %s\n", tomlString(gatewayRoot(s.cfg.LLMBaseURL)+"/v1"))
	fmt.Fprintf(&b, "env_key = %s\n", tomlString(codexTokenEnv))
	b.WriteString("wire_api = \"responses\"\n")
	fmt.Fprintf(&b, "\n[projects.%s]\ntrust_level = \"trusted\"\n", tomlString(s.repo))
	b.WriteString("\n[analytics]\nenabled = false\n")
	b.WriteString("\n[notice]\nhide_full_access_warning = true\n")
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// tomlString quotes s as a TOML basic string: JSON's string escapes are
// TOML's.
func tomlString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// codexCommand runs Codex with approvals and its own sandbox bypassed,
// resuming the last conversation once one exists.
func codexCommand(s *Server) (argv, env []string) {
	codexHome := filepath.Join(s.home, ".codex")
	argv = []string{s.cfg.ToolBin}
	if hasFile(filepath.Join(codexHome, "sessions"), ".jsonl") {
		argv = append(argv, "resume", "--last")
	}
	argv = append(argv, "--dangerously-bypass-approvals-and-sandbox")
	drop := []string{"OPENAI_API_KEY", "OPENAI_BASE_URL", "CODEX_HOME", codexTokenEnv}
	return argv, s.toolEnv(drop, "CODEX_HOME="+codexHome, codexTokenEnv+"="+s.cfg.LLMAPIKey)
}

// hasFile reports whether dir holds, at any depth, a file whose name ends
// in suffix.
func hasFile(dir, suffix string) bool {
	found := false
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || found {
			return filepath.SkipAll
		}
		if !d.IsDir() && strings.HasSuffix(d.Name(), suffix) {
			found = true
			return filepath.SkipAll
		}
		return nil
	})
	return found
}
