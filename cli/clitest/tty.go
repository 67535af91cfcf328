package clitest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"lap.dev/lap/config"
	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/local"
)

// FakeTool stands in for Claude Code behind the real terminal harness: it
// shows how often it was started and echoes each line typed.
const FakeTool = `#!/bin/sh
run=$(( $(cat "$HOME/runs" 2>/dev/null || echo 0) + 1 )); echo $run > "$HOME/runs"
echo "fake tool ready run=$run"
while IFS= read -r line; do
  echo "echo:$line"
done
`

// BuildTTYHarness builds cmd/lap-tty-harness into dir and returns the
// binary's path.
func BuildTTYHarness(dir string) (string, error) {
	bin := filepath.Join(dir, "lap-tty-harness")
	cmd := exec.Command("go", "build", "-o", bin, "lap.dev/lap/cmd/lap-tty-harness")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build lap-tty-harness: %w\n%s", err, out)
	}
	return bin, nil
}

// TTYBackend is the local backend running the claude-code harness as the
// real terminal harness harnessBin (lap-tty-harness) with FakeTool in
// place of Claude Code; its sandboxes are stopped when the test ends.
// Pass it as Options.Backend.
func TTYBackend(t testing.TB, harnessBin string) sandboxes.Backend {
	t.Helper()
	tool := filepath.Join(t.TempDir(), "fake-claude")
	if err := os.WriteFile(tool, []byte(FakeTool), 0o755); err != nil {
		t.Fatal(err)
	}
	// tmux's socket lives in the workspace: the path must be short.
	dir, err := os.MkdirTemp("", "lapcli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	vars := map[string]string{"MASTER_KEY": TestKey, "LAP_DATA_DIR": t.TempDir(),
		"LOCAL_SANDBOX_USER": "root", "LOCAL_STOP_ON_EXIT": "true"}
	cfg, err := config.Load(func(k string) (string, bool) { v, ok := vars[k]; return v, ok }, "")
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	b, err := local.New(local.Options{Dir: dir, Config: cfg.Local, Lookup: func(id string) (sandboxes.Harness, bool) {
		h, ok := sandboxes.LookupHarness(id)
		if ok && id == "claude-code" {
			h.Command = []string{harnessBin, "--tool", "claude-code", "--tool-bin", tool}
		}
		return h, ok
	}})
	if err != nil {
		t.Fatalf("local backend: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := b.Close(ctx); err != nil {
			t.Errorf("close the local backend: %v", err)
		}
	})
	return b
}
