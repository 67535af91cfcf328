package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"lap.dev/lap/config"
	"lap.dev/lap/knative"
	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/local"
)

// backendFactory builds the sandbox backend lapd drives.
type backendFactory func(ctx context.Context, cfg config.Config, log *slog.Logger) (sandboxes.Backend, error)

// newBackend returns the backend LAP_BACKEND names. Only cmd/ wires
// backends in (ARCHITECTURE §2): sandboxes/local for "local" (which also
// serves LOCAL_SANDBOX_URL) and knative/ for "knative" plug in here.
func newBackend(ctx context.Context, cfg config.Config, log *slog.Logger) (sandboxes.Backend, error) {
	switch cfg.Backend {
	case "local":
		return newLocalBackend(cfg, log)
	case "knative":
		return knative.New(ctx, cfg, log)
	}
	return nil, fmt.Errorf("LAP_BACKEND=%q: unknown backend; use local or knative", cfg.Backend)
}

// newLocalBackend is the local backend: harness processes under
// <LAP_DATA_DIR>/sandboxes, or with LOCAL_SANDBOX_URL the one external
// harness every session lives in.
func newLocalBackend(cfg config.Config, log *slog.Logger) (sandboxes.Backend, error) {
	if cfg.LocalSandboxURL != "" {
		log.Info("every session runs in the harness at LOCAL_SANDBOX_URL", "url", cfg.LocalSandboxURL)
		return local.NewExternal(cfg.LocalSandboxURL, cfg.Local.ReadyTimeout), nil
	}
	// Harness binaries are looked up next to lapd first (make build puts
	// them all in bin/), then on lapd's PATH.
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find lapd's own executable: %w", err)
	}
	if resolved, err := filepath.EvalSymlinks(exe); err == nil {
		exe = resolved
	}
	// The data dir is lapd's and private (the backend then allows
	// search, not reading, to harnesses running as other users).
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	return local.New(local.Options{
		Dir:        filepath.Join(cfg.DataDir, "sandboxes"),
		Config:     cfg.Local,
		ExecDir:    filepath.Dir(exe),
		SearchPath: os.Getenv("PATH"),
		Logger:     log.With("backend", "local"),
	})
}
