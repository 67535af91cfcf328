package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// newTestToolbox returns a toolbox on a fresh repo holding a few files and
// a symlink inside and one outside the workspace.
func newTestToolbox(t *testing.T, limit int) *toolbox {
	t.Helper()
	ws := t.TempDir()
	root := filepath.Join(ws, RepoDir)
	outside := t.TempDir()
	files := map[string]string{
		"README.md":         "line 1\nline 2\nline 3\n",
		"src/main.go":       "package main\n\nfunc main() {}\n",
		"src/util/x.go":     "package util\n// TODO: x\n",
		".git/HEAD":         "ref: refs/heads/main\n",
		"docs/guide.md":     "guide\n",
		"dup.txt":           "a a\n",
		"../.lap/state.txt": "harness state\n",
	}
	for name, content := range files {
		p := filepath.Join(root, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	}
	require.NoError(t, os.Symlink(outside, filepath.Join(root, "out")))
	require.NoError(t, os.Symlink("src", filepath.Join(root, "in")))
	require.NoError(t, os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o644))
	cfg := Config{BashTimeout: time.Minute, MaxBashTimeout: time.Hour, OutputLimit: limit}
	return newToolbox(root, toolEnv(os.Environ()), cfg)
}

func TestResolve(t *testing.T) {
	t.Parallel()
	tb := newTestToolbox(t, 1000)
	real, err := filepath.EvalSymlinks(tb.root)
	require.NoError(t, err)
	tests := []struct {
		path    string
		want    string // relative to the repo; "" when refused
		outside bool
	}{
		{"README.md", "README.md", false},
		{"./src/../README.md", "README.md", false},
		{filepath.Join(tb.root, "src/main.go"), "src/main.go", false},
		{"new/dir/file.txt", "new/dir/file.txt", false},
		{"in/main.go", "src/main.go", false},
		{"in/new.go", "src/new.go", false},
		{".", ".", false},
		{"../.lap/state.txt", "", true},
		{"../../etc/passwd", "", true},
		{"/etc/passwd", "", true},
		{"out/secret", "", true},
		{"out/new/file", "", true},
		{"out", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			got, err := tb.resolve(tt.path)
			if tt.outside {
				require.Error(t, err)
				assert.ErrorIs(t, err, errOutside)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, filepath.Join(real, tt.want), got)
		})
	}
	_, err = tb.resolve("  ")
	assert.EqualError(t, err, "path is empty")
}

func TestMatchGlob(t *testing.T) {
	t.Parallel()
	tests := []struct {
		pattern, name string
		want          bool
	}{
		{"**", "a/b/c.go", true},
		{"**/*.go", "main.go", true},
		{"**/*.go", "a/b/c.go", true},
		{"**/*.go", "a/b/c.md", false},
		{"src/**/*.go", "src/x.go", true},
		{"src/**/*.go", "src/a/b/x.go", true},
		{"src/**/*.go", "lib/x.go", false},
		{"src/*.go", "src/a/x.go", false},
		{"docs/?uide.md", "docs/guide.md", true},
		{"a/**/b/**", "a/x/b/y/z", true},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, matchGlob(tt.pattern, tt.name), "matchGlob(%q, %q)", tt.pattern, tt.name)
	}
}

func TestListFiles(t *testing.T) {
	t.Parallel()
	tb := newTestToolbox(t, 10000)
	ctx := context.Background()
	tests := []struct {
		pattern string
		want    string
	}{
		{"", "README.md\ndocs/guide.md\ndup.txt\nin\nout\nsrc/main.go\nsrc/util/x.go"}, // symlinks listed, not followed
		{"*.go", "src/main.go\nsrc/util/x.go"},
		{"src/*.go", "src/main.go"},
		{"**/*.md", "README.md\ndocs/guide.md"},
		{"*.rs", "no files match **/*.rs"},
	}
	for _, tt := range tests {
		got, err := tb.listFiles(ctx, tt.pattern)
		require.NoError(t, err)
		assert.Equal(t, tt.want, got, "pattern %q", tt.pattern)
	}
	_, err := tb.listFiles(ctx, "../*")
	assert.Error(t, err)
	_, err = tb.listFiles(ctx, "[")
	assert.Error(t, err)
}

func TestReadFile(t *testing.T) {
	t.Parallel()
	tb := newTestToolbox(t, 10000)
	tests := []struct {
		start, end int
		want, err  string
	}{
		{0, 0, "line 1\nline 2\nline 3\n", ""},
		{2, 0, "line 2\nline 3\n", ""},
		{2, 2, "line 2\n", ""},
		{0, 1, "line 1\n", ""},
		{1, 99, "line 1\nline 2\nline 3\n", ""},
		{4, 0, "", "start_line 4 is past the end of README.md (3 lines)"},
		{3, 2, "", "start_line 3 is after end_line 2"},
	}
	for _, tt := range tests {
		got, err := tb.readFile("README.md", tt.start, tt.end)
		if tt.err != "" {
			assert.EqualError(t, err, tt.err)
			continue
		}
		require.NoError(t, err)
		assert.Equal(t, tt.want, got, "lines %d-%d", tt.start, tt.end)
	}
	_, err := tb.readFile("missing.txt", 0, 0)
	assert.EqualError(t, err, "read missing.txt: no such file or directory")

	require.NoError(t, os.WriteFile(filepath.Join(tb.root, "bin"), []byte{0, 1, 2}, 0o644))
	got, err := tb.readFile("bin", 0, 0)
	require.NoError(t, err)
	assert.Equal(t, "bin is a binary file of 3 bytes; not shown", got)

	small := newTestToolbox(t, 10)
	got, err = small.readFile("README.md", 0, 0)
	require.NoError(t, err)
	assert.Equal(t, "line 1\nlin\n[output cut: showing the first 10 of 21 bytes; use start_line and end_line to read the rest of README.md]", got)
}

func TestWriteAndEditFile(t *testing.T) {
	t.Parallel()
	tb := newTestToolbox(t, 10000)
	content := "a\nb\n"
	out, err := tb.writeFile("new/deep/f.txt", &content)
	require.NoError(t, err)
	assert.Equal(t, "wrote 4 bytes to new/deep/f.txt", out)
	_, err = tb.writeFile("x", nil)
	assert.Error(t, err)

	require.NoError(t, os.Chmod(filepath.Join(tb.root, "src/main.go"), 0o755))
	tests := []struct {
		name, path, old, new, want, err string
	}{
		{"unique", "src/main.go", "func main() {}", "func main() { println() }", "edited src/main.go: replaced 1 occurrence", ""},
		{"missing", "src/main.go", "nope", "x", "", "old_string not found in src/main.go; it must match the file exactly, whitespace included"},
		{"ambiguous", "dup.txt", "a", "b", "", "old_string occurs 2 times in dup.txt; include more surrounding text so it occurs exactly once"},
		{"empty old", "dup.txt", "", "b", "", "old_string is empty; use write_file to create a file"},
		{"same", "dup.txt", "a", "a", "", "old_string and new_string are the same"},
		{"no file", "none.txt", "a", "b", "", "read none.txt: no such file or directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tb.editFile(tt.path, tt.old, tt.new)
			if tt.err != "" {
				assert.EqualError(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
	b, _ := os.ReadFile(filepath.Join(tb.root, "src/main.go"))
	assert.Equal(t, "package main\n\nfunc main() { println() }\n", string(b))
	info, _ := os.Stat(filepath.Join(tb.root, "src/main.go"))
	assert.Equal(t, os.FileMode(0o755), info.Mode().Perm(), "edit keeps the mode")
}

func TestGrep(t *testing.T) {
	t.Parallel()
	tb := newTestToolbox(t, 10000)
	ctx := context.Background()
	got, err := tb.grep(ctx, `^package \w+`, "")
	require.NoError(t, err)
	assert.Equal(t, "src/main.go:1: package main\nsrc/util/x.go:1: package util", got)
	got, err = tb.grep(ctx, "TODO", "src/util")
	require.NoError(t, err)
	assert.Equal(t, "src/util/x.go:2: // TODO: x", got)
	got, err = tb.grep(ctx, "refs/heads", "")
	require.NoError(t, err)
	assert.Equal(t, "no matches", got, ".git is not searched")
	_, err = tb.grep(ctx, "(", "")
	assert.ErrorContains(t, err, "bad regular expression")
}

func TestBash(t *testing.T) {
	t.Parallel()
	tb := newTestToolbox(t, 10000)
	ctx := context.Background()
	secs := func(f float64) *float64 { return &f }
	tests := []struct {
		name, command string
		timeout       *float64
		want, err     string
	}{
		{"cwd is the repo", "cat README.md | head -1", nil, "line 1\n", ""},
		{"stderr kept", "echo out; echo err >&2", nil, "out\nerr\n", ""},
		{"exit code", "echo failing; exit 3", nil, "failing\n\n[exit code 3]", ""},
		{"no output", "true", nil, "(no output)", ""},
		{"timeout", "echo started; sleep 30", secs(2), "started\n", "command timed out after 2s and was killed"},
		{"empty", "  ", nil, "", "command is empty"},
		{"bad timeout", "true", secs(-1), "", "timeout_s must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := tb.bash(ctx, tt.command, tt.timeout)
			assert.Equal(t, tt.want, r.output)
			if tt.err == "" {
				assert.NoError(t, r.err)
			} else {
				assert.EqualError(t, r.err, tt.err)
			}
		})
	}
}

func TestBashStopsBackgroundProcesses(t *testing.T) {
	t.Parallel()
	tb := newTestToolbox(t, 10000)
	r := tb.bash(context.Background(), "sleep 60 & echo $!", nil)
	require.NoError(t, r.err)
	var pid int
	_, err := fmt.Sscan(r.output, &pid)
	require.NoError(t, err)
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		require.False(t, time.Now().After(deadline), "background sleep %d still running", pid)
		time.Sleep(5 * time.Millisecond)
	}
}

func TestBashAbort(t *testing.T) {
	t.Parallel()
	tb := newTestToolbox(t, 10000)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan toolResult, 1)
	go func() { done <- tb.bash(ctx, "echo begun; sleep 60", nil) }()
	cancel()
	r := <-done
	assert.EqualError(t, r.err, "command aborted")
}

func TestBashOutputCapped(t *testing.T) {
	t.Parallel()
	tb := newTestToolbox(t, 100)
	r := tb.bash(context.Background(), "seq 1 10000", nil)
	require.NoError(t, r.err)
	assert.True(t, strings.HasPrefix(r.output, "1\n2\n3\n"), r.output)
	assert.True(t, strings.HasSuffix(r.output, "9999\n10000\n"), r.output)
	assert.Contains(t, r.output, "[output cut: 48794 of 48894 bytes not shown; the first 50 and the last 50 bytes are kept]")
}

func TestHeadTail(t *testing.T) {
	t.Parallel()
	tests := []struct {
		writes []string
		want   string
	}{
		{[]string{"abc"}, "abc"},
		{[]string{"abcdefghij"}, "abcdefghij"},
		{[]string{"abcde", "fghij"}, "abcdefghij"},
		{[]string{"abcdefghijkl"}, "abcde\n[output cut: 2 of 12 bytes not shown; the first 5 and the last 5 bytes are kept]\nhijkl"},
		{[]string{"ab", "cd", "ef", "gh", "ij", "kl", "mn"}, "abcde\n[output cut: 4 of 14 bytes not shown; the first 5 and the last 5 bytes are kept]\njklmn"},
		{[]string{"abcdef", "0123456789xyz"}, "abcde\n[output cut: 9 of 19 bytes not shown; the first 5 and the last 5 bytes are kept]\n89xyz"},
	}
	for _, tt := range tests {
		h := newHeadTail(10)
		for _, w := range tt.writes {
			_, _ = h.Write([]byte(w))
		}
		assert.Equal(t, tt.want, h.String(), "writes %q", tt.writes)
	}
}

func TestUnknownToolAndBadArguments(t *testing.T) {
	t.Parallel()
	tb := newTestToolbox(t, 1000)
	r := tb.run(context.Background(), "rm_rf", "{}")
	assert.EqualError(t, r.err, `unknown tool "rm_rf"; the tools are bash, read_file, write_file, edit_file, list_files, grep`)
	r = tb.run(context.Background(), ToolReadFile, `{"path": `)
	require.Error(t, r.err)
	assert.True(t, strings.HasPrefix(r.err.Error(), "arguments are not valid JSON for this tool"), r.err)
	assert.Equal(t, "Error: "+r.err.Error(), r.forModel())
}

func TestRepairTranscript(t *testing.T) {
	t.Parallel()
	tr := transcript{
		LLM: []llmMessage{
			{Role: "user", Content: "go"},
			{Role: "assistant", ToolCalls: []llmToolCall{{ID: "a"}, {ID: "b"}}},
			{Role: "tool", ToolCallID: "a", Content: "done"},
		},
	}
	require.True(t, repairTranscript(&tr, 1))
	assert.Equal(t, []llmMessage{
		{Role: "user", Content: "go"},
		{Role: "assistant", ToolCalls: []llmToolCall{{ID: "a"}, {ID: "b"}}},
		{Role: "tool", ToolCallID: "a", Content: "done"},
		{Role: "tool", ToolCallID: "b", Content: "Error: " + interruptedMessage},
	}, tr.LLM)
	assert.False(t, repairTranscript(&tr, 1), "a repaired transcript needs no more repair")
}

func TestGitEnv(t *testing.T) {
	t.Parallel()
	env := gitEnv([]string{"PATH=/bin", "GIT_TOKEN=t0k", "LITELLM_API_KEY=k", "HARNESS_AUTH_TOKEN=h", "GIT_CONFIG_COUNT=1", "GIT_CONFIG_KEY_0=a.b", "GIT_CONFIG_VALUE_0=c"}, "t0k")
	assert.Equal(t, []string{
		"PATH=/bin", "GIT_CONFIG_KEY_0=a.b", "GIT_CONFIG_VALUE_0=c", "GIT_TERMINAL_PROMPT=0",
		"GIT_CONFIG_KEY_1=http.extraHeader", "GIT_CONFIG_VALUE_1=Authorization: Basic eC1hY2Nlc3MtdG9rZW46dDBr", "GIT_CONFIG_COUNT=2",
	}, env)
	assert.Equal(t, []string{"PATH=/bin", "GIT_TERMINAL_PROMPT=0"}, gitEnv([]string{"PATH=/bin"}, ""))
}

func TestLLMBaseURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"http://lapd:3000/llm":     "http://lapd:3000/llm/v1/",
		"http://lapd:3000/llm/":    "http://lapd:3000/llm/v1/",
		"https://gw.example/v1":    "https://gw.example/v1/",
		"https://gw.example/v1/":   "https://gw.example/v1/",
		"http://127.0.0.1:4000":    "http://127.0.0.1:4000/v1/",
		"http://127.0.0.1:4000/v1": "http://127.0.0.1:4000/v1/",
	} {
		assert.Equal(t, want, llmBaseURL(in), "llmBaseURL(%q)", in)
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	c := &llmClient{baseDelay: 100 * time.Millisecond, maxDelay: time.Second}
	for attempt, want := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		want *= time.Millisecond
		for range 20 {
			d := c.backoff(attempt, errors.New("x"))
			assert.GreaterOrEqual(t, d, min(want-want/4, time.Second), "attempt %d", attempt)
			assert.LessOrEqual(t, d, min(want+want/4, time.Second), "attempt %d", attempt)
		}
	}
}

func TestToolSchemas(t *testing.T) {
	t.Parallel()
	tb := newTestToolbox(t, 1000)
	for _, spec := range tb.specs() {
		b, err := json.Marshal(spec.Parameters)
		require.NoError(t, err)
		assert.NotContains(t, string(b), "null", "%s: %s", spec.Name, b)
		var schema struct {
			Type       string                    `json:"type"`
			Properties map[string]map[string]any `json:"properties"`
			Required   []string                  `json:"required"`
		}
		require.NoError(t, json.Unmarshal(b, &schema))
		assert.Equal(t, "object", schema.Type)
		for _, r := range schema.Required {
			assert.Contains(t, schema.Properties, r, "%s requires an undeclared %s", spec.Name, r)
		}
	}
}
