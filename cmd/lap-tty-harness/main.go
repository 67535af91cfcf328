// Command lap-tty-harness is lap's terminal harness (package
// sandboxes/ttyharness): it runs Claude Code or Codex under tmux in the
// sandbox and serves its terminal over a WebSocket at GET /tty. It is
// configured by the sandbox environment of ARCHITECTURE §5 (PORT,
// HARNESS_AUTH_TOKEN, REPO_URL, BRANCH, GIT_TOKEN, AGENT_PROMPT,
// LAP_MODEL, LITELLM_API_BASE, LITELLM_API_KEY, WORKSPACE, REPO_DIR,
// HARNESS_HOST) plus the tool to run: --tool or LAP_TTY_TOOL
// (claude-code or codex), and --tool-bin or LAP_TTY_TOOL_BIN, its
// executable (default: claude or codex on PATH). The launchers
// bin/lap-harness-claude-code and bin/lap-harness-codex that make build
// writes set both.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"lap.dev/lap/sandboxes/harness"
	"lap.dev/lap/sandboxes/ttyharness"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.LookupEnv, os.Environ(), os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "lap-tty-harness:", err)
		os.Exit(1)
	}
}

// run starts the terminal harness from flags and the environment and
// serves until ctx ends.
func run(ctx context.Context, args []string, lookup func(string) (string, bool), environ []string, stderr io.Writer) error {
	get := func(k string) string { v, _ := lookup(k); return v }
	fs := flag.NewFlagSet("lap-tty-harness", flag.ContinueOnError)
	fs.SetOutput(stderr)
	tool := fs.String("tool", get("LAP_TTY_TOOL"), "the terminal agent to run: claude-code or codex (LAP_TTY_TOOL)")
	toolBin := fs.String("tool-bin", get("LAP_TTY_TOOL_BIN"), "the tool's executable (LAP_TTY_TOOL_BIN; default claude or codex on PATH)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *tool == "" {
		return errors.New("no tool: set --tool or LAP_TTY_TOOL to claude-code or codex")
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	port := get("PORT")
	if port == "" {
		port = "4096"
	}
	workspace := get("WORKSPACE")
	if workspace == "" {
		wd, err := os.Getwd()
		if err != nil {
			return fmt.Errorf("WORKSPACE is not set and the working directory is unknown: %w", err)
		}
		workspace = wd
	}
	srv, err := ttyharness.New(ttyharness.Config{
		Tool:        *tool,
		ToolBin:     *toolBin,
		AuthToken:   get("HARNESS_AUTH_TOKEN"),
		Workspace:   workspace,
		RepoURL:     get("REPO_URL"),
		Branch:      get("BRANCH"),
		GitToken:    get("GIT_TOKEN"),
		RepoDir:     get("REPO_DIR"),
		AgentPrompt: get("AGENT_PROMPT"),
		Model:       get("LAP_MODEL"),
		LLMBaseURL:  get("LITELLM_API_BASE"),
		LLMAPIKey:   get("LITELLM_API_KEY"),
		Env:         environ,
		Logger:      log,
		Version:     version(),
	})
	if err != nil {
		return err
	}
	addr := harness.ListenAddr(get("HARNESS_HOST"), port, get("HARNESS_AUTH_TOKEN"))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	return srv.Serve(ctx, ln)
}

// version is the module version the binary was built from, or "dev".
func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
