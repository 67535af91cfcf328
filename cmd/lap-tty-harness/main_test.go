package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRunRejects(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"no tool", nil, map[string]string{"LITELLM_API_BASE": "http://127.0.0.1:1"}, "no tool: set --tool or LAP_TTY_TOOL"},
		{"unknown tool flag", []string{"--tool", "emacs"}, map[string]string{"LITELLM_API_BASE": "http://127.0.0.1:1"}, `unknown terminal tool "emacs"`},
		{"unknown tool env", nil, map[string]string{"LAP_TTY_TOOL": "vim", "LITELLM_API_BASE": "http://127.0.0.1:1"}, `unknown terminal tool "vim"`},
		{"no gateway", []string{"--tool", "codex"}, nil, "LITELLM_API_BASE"},
		{"bad flag", []string{"--nope"}, nil, "flag provided but not defined"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"WORKSPACE": t.TempDir()}
			for k, v := range tc.env {
				env[k] = v
			}
			lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
			var stderr bytes.Buffer
			err := run(context.Background(), tc.args, lookup, nil, &stderr)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}
