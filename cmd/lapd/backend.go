package main

import (
	"context"
	"fmt"
	"log/slog"

	"lap.dev/lap/config"
	"lap.dev/lap/knative"
	"lap.dev/lap/sandboxes"
)

// backendFactory builds the sandbox backend lapd drives.
type backendFactory func(ctx context.Context, cfg config.Config, log *slog.Logger) (sandboxes.Backend, error)

// newBackend returns the backend LAP_BACKEND names. Only cmd/ wires
// backends in (ARCHITECTURE §2): sandboxes/local for "local" (which also
// serves LOCAL_SANDBOX_URL) and knative/ for "knative" plug in here.
func newBackend(ctx context.Context, cfg config.Config, log *slog.Logger) (sandboxes.Backend, error) {
	switch cfg.Backend {
	case "local":
		return nil, fmt.Errorf("LAP_BACKEND=local: this lapd was built without the local sandbox backend (sandboxes/local)")
	case "knative":
		return knative.New(ctx, cfg, log)
	}
	return nil, fmt.Errorf("LAP_BACKEND=%q: unknown backend; use local or knative", cfg.Backend)
}
