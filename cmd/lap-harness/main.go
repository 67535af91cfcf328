// Command lap-harness is lap's default harness, the server inside every
// sandbox (package sandboxes/harness). It is configured by the sandbox
// environment of ARCHITECTURE §5: PORT, HARNESS_AUTH_TOKEN, REPO_URL,
// BRANCH, GIT_TOKEN, AGENT_PROMPT, LAP_MODEL, LITELLM_API_BASE,
// LITELLM_API_KEY and WORKSPACE (default: the working directory), and for
// local development REPO_DIR, a checkout to work in instead of a clone.
// PORT defaults to 4096, the port LOCAL_SANDBOX_URL examples use.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"lap.dev/lap/sandboxes/harness"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.LookupEnv, os.Environ(), os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "lap-harness:", err)
		os.Exit(1)
	}
}

// run starts the harness from the environment and serves until ctx ends.
func run(ctx context.Context, lookup func(string) (string, bool), environ []string, stderr io.Writer) error {
	get := func(k string) string { v, _ := lookup(k); return v }
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
	srv, err := harness.New(harness.Config{
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
