package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"lap.dev/lap/control/api"
	"lap.dev/lap/sandboxes/protocol"
)

func TestSSEStream(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		want []sseEvent
		end  error
	}{
		{"named events", "event: ready\ndata: {\"a\":1}\n\nevent: done\ndata: {}\n\n", []sseEvent{{"ready", []byte(`{"a":1}`)}, {"done", []byte(`{}`)}}, io.EOF},
		{"comments and CRLF", ": ping\r\n\r\nevent: x\r\ndata: 1\r\n\r\n", []sseEvent{{"x", []byte("1")}}, io.EOF},
		{"multi-line data, no name", "data: a\ndata: b\nid: 7\n\n", []sseEvent{{"message", []byte("a\nb")}}, io.EOF},
		{"no space after colon", "event:e\ndata:{}\n\n", []sseEvent{{"e", []byte("{}")}}, io.EOF},
		{"cut mid-event", "event: done\ndata: {", nil, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newSSEStream(io.NopCloser(strings.NewReader(tt.in)))
			var got []sseEvent
			var err error
			for range 10 {
				var ev sseEvent
				if ev, err = s.Next(); err != nil {
					break
				}
				got = append(got, ev)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
			if !errors.Is(err, tt.end) {
				t.Errorf("end = %v, want %v", err, tt.end)
			}
		})
	}
}

func TestClosest(t *testing.T) {
	t.Parallel()
	names := []string{"my-sdk-agent", "my-other-agent", "reviewer", "agents", "sessions"}
	tests := []struct {
		word string
		want []string
	}{
		{"my-sdk-agnet", []string{"my-sdk-agent"}},
		{"my-sdk-agent", []string{"my-sdk-agent"}},
		{"reviwer", []string{"reviewer"}},
		{"agnts", []string{"agents"}},
		{"sdk", []string{"my-sdk-agent"}},
		{"zzzzzz", nil},
		{"REVIEWER", []string{"reviewer"}},
	}
	for _, tt := range tests {
		if got := closest(tt.word, names, 3); !cmp.Equal(got, tt.want) {
			t.Errorf("closest(%q) = %q, want %q", tt.word, got, tt.want)
		}
	}
}

func TestEditDistance(t *testing.T) {
	t.Parallel()
	tests := []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"a", "", 1}, {"kitten", "sitting", 3}, {"agnet", "agent", 1}, {"ab", "ba", 1}, {"✓x", "✓y", 1},
	}
	for _, tt := range tests {
		if got := editDistance(tt.a, tt.b); got != tt.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestFormatting(t *testing.T) {
	t.Parallel()
	tests := []struct{ got, want string }{
		{thousands(0), "0"}, {thousands(999), "999"}, {thousands(1234), "1,234"}, {thousands(-1234567), "-1,234,567"},
		{dollars(0), "$0"}, {dollars(0.0012), "$0.0012"}, {dollars(1.5), "$1.50"},
		{seconds(800 * time.Millisecond), "0.8s"}, {seconds(125 * time.Second), "2m05s"},
		{shortID("0190a3b2-7c1d-7e00-8000-000000000000"), "0190a3b2"},
		{maskKey(""), "(none)"}, {maskKey("short"), "*****"}, {maskKey("lap_0123456789abcdef"), "lap_********cdef"},
		{truncate("abcdef", 4), "abc…"}, {truncate("abc", 4), "abc"},
		{fitTitle("edit: /tmp/lap/data/sandboxes/4a2e8070/workspace/repo/README.md", 30), "edit: …/repo/README.md"},
		{fitTitle("edit: /repo/README.md", 30), "edit: /repo/README.md"},
		{fitTitle("bash: ls -la /tmp/lap/data/sandboxes/4a2e8070", 20), "bash: ls -la /tmp/l…"},
		{fitTitle("edit: /a/b", 9), "edit: /a…"},
	}
	for i, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("case %d: got %q, want %q", i, tt.got, tt.want)
		}
	}
}

func TestNormalizeURL(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want, err string }{
		{"http://localhost:3000/", "http://localhost:3000", ""},
		{"localhost:3000", "http://localhost:3000", ""},
		{" https://lap.example.com/base/ ", "https://lap.example.com/base", ""},
		{"ftp://x", "", "want http or https"},
		{"http://", "", "no host"},
		{"", "", "empty URL"},
	}
	for _, tt := range tests {
		got, err := normalizeURL(tt.in)
		if got != tt.want || (err == nil) != (tt.err == "") || (err != nil && !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("normalizeURL(%q) = %q, %v; want %q, %q", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestSaveProfileIsPrivateAndAtomic(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), ".lap")
	for _, key := range []string{"first-key-0123456789", "second-key-0123456789"} {
		if err := saveProfile(dir, Profile{URL: "http://x:1", MasterKey: key}); err != nil {
			t.Fatal(err)
		}
		p, err := loadProfile(dir)
		if err != nil || p.MasterKey != key {
			t.Fatalf("loadProfile = %+v, %v; want key %q", p, err, key)
		}
	}
	info, err := os.Stat(profilePath(dir))
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", info.Mode().Perm())
	}
	if d, _ := os.Stat(dir); d.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, want 0700", d.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}

func TestResolveTargetPrecedence(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	if err := saveProfile(filepath.Join(home, ".lap"), Profile{URL: "http://saved:1", MasterKey: "saved-key"}); err != nil {
		t.Fatal(err)
	}
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	tests := []struct {
		env  map[string]string
		want target
	}{
		{map[string]string{}, target{URL: DefaultURL, URLFrom: "default"}},
		{map[string]string{"HOME": home}, target{URL: "http://saved:1", Key: "saved-key", URLFrom: "~/.lap/config.json", KeyFrom: "~/.lap/config.json"}},
		{map[string]string{"HOME": home, EnvURL: "http://env:2", EnvKey: "env-key"}, target{URL: "http://env:2", Key: "env-key", URLFrom: EnvURL, KeyFrom: EnvKey}},
	}
	for _, tt := range tests {
		got, err := resolveTarget(env(tt.env))
		if err != nil || got != tt.want {
			t.Errorf("resolveTarget(%v) = %+v, %v; want %+v", tt.env, got, err, tt.want)
		}
	}
}

// partEvent builds a message.part.updated event.
func partEvent(p protocol.Part, delta string) protocol.Event {
	return protocol.Event{Type: protocol.EventPartUpdated, Properties: protocol.EventProperties{Part: &p, Delta: delta}}
}

func tool(id, status string) protocol.Part {
	in, _ := json.Marshal(map[string]string{"command": "go test ./..."})
	return protocol.Part{ID: "p" + id, MessageID: "m1", Type: protocol.PartTool, Tool: "bash", CallID: id, State: &protocol.ToolState{Status: status, Input: in}}
}

func TestTurnRendererPiped(t *testing.T) {
	t.Parallel()
	var out, status bytes.Buffer
	r := newTurnRenderer(&out, &status, false, 80, 0, nil, style{})
	user := protocol.MessageInfo{ID: "u1", Role: protocol.RoleUser}
	r.event(protocol.Event{Type: protocol.EventMessageUpdated, Properties: protocol.EventProperties{Info: &user}})
	r.event(partEvent(protocol.Part{ID: "pu", MessageID: "u1", Type: protocol.PartText, Text: "the user's words"}, ""))
	r.event(partEvent(protocol.Part{ID: "t1", MessageID: "m1", Type: protocol.PartText, Text: "Hel"}, "Hel"))
	r.event(partEvent(protocol.Part{ID: "t1", MessageID: "m1", Type: protocol.PartText, Text: "Hello"}, "lo"))
	// No delta: the rest of the text is taken from the whole part.
	r.event(partEvent(protocol.Part{ID: "t1", MessageID: "m1", Type: protocol.PartText, Text: "Hello, world"}, ""))
	for _, st := range []string{protocol.ToolPending, protocol.ToolRunning, protocol.ToolCompleted, protocol.ToolCompleted} {
		r.event(partEvent(tool("c1", st), ""))
	}
	r.event(partEvent(protocol.Part{ID: "t2", MessageID: "m1", Type: protocol.PartText, Text: "Done."}, "Done."))
	r.finish(api.Message{Info: protocol.MessageInfo{Tokens: protocol.Tokens{Input: 1234, Output: 56}, Cost: 0.0031}}, 3200*time.Millisecond)

	if want := "Hello, world\nDone.\n"; out.String() != want {
		t.Errorf("out = %q, want %q", out.String(), want)
	}
	if want := "✓ bash: go test ./...\n[3.2s · 1,234 in / 56 out tokens · $0.0031]\n"; status.String() != want {
		t.Errorf("status = %q, want %q", status.String(), want)
	}
}

func TestTurnRendererTerminalRewritesToolLineInPlace(t *testing.T) {
	t.Parallel()
	var w bytes.Buffer
	r := newTurnRenderer(&w, &w, true, 80, 0, nil, style{})
	r.event(partEvent(tool("c1", protocol.ToolPending), ""))
	r.event(partEvent(tool("c1", protocol.ToolRunning), ""))
	r.event(partEvent(tool("c1", protocol.ToolError), ""))
	want := "· bash: go test ./...\r\x1b[K… bash: go test ./...\r\x1b[K✗ bash: go test ./...\n"
	if w.String() != want {
		t.Errorf("output = %q, want %q", w.String(), want)
	}
}

func TestTurnRendererFinalMessageWithoutEvents(t *testing.T) {
	t.Parallel()
	var out, status bytes.Buffer
	r := newTurnRenderer(&out, &status, false, 80, 0, nil, style{})
	done := tool("c9", protocol.ToolCompleted)
	r.finish(api.Message{
		Info:  protocol.MessageInfo{Error: &protocol.MessageError{Name: "Aborted", Message: "x"}},
		Parts: []protocol.Part{{ID: "a", Type: protocol.PartText, Text: "partial answer"}, done},
	}, time.Second)
	if out.String() != "partial answer\n" {
		t.Errorf("out = %q", out.String())
	}
	if want := "✓ bash: go test ./...\n⏹ aborted\n[1.0s · 0 in / 0 out tokens · $0]\n"; status.String() != want {
		t.Errorf("status = %q, want %q", status.String(), want)
	}
}

func TestMarkdownReRenderReplacesRawText(t *testing.T) {
	t.Parallel()
	var w bytes.Buffer
	md := newMarkdown(func(k string) string { return map[string]string{"NO_COLOR": "1"}[k] }, 80)
	r := newTurnRenderer(&w, &w, true, 80, 40, md, style{})
	r.event(partEvent(protocol.Part{ID: "t", Type: protocol.PartText}, "- **one**\n- two"))
	r.finish(api.Message{}, 0)
	// After the raw text: back up one row, clear, print the rendering.
	if !strings.Contains(w.String(), "- **one**\n- two\r\x1b[1A\x1b[J") {
		t.Fatalf("no in-place re-render: %q", w.String())
	}
	if visible := regexp.MustCompile(`\x1b\[[0-9;]*m`).ReplaceAllString(w.String(), ""); !strings.Contains(visible, "\x1b[J  • one\n  • two\n[") {
		t.Fatalf("not rendered as markdown: %q", w.String())
	}
}

func TestToolTitle(t *testing.T) {
	t.Parallel()
	in := func(v any) json.RawMessage { b, _ := json.Marshal(v); return b }
	tests := []struct {
		p    protocol.Part
		want string
	}{
		{protocol.Part{Tool: "bash", State: &protocol.ToolState{Title: "bash: ls -la"}}, "bash: ls -la"},
		{protocol.Part{Tool: "read", State: &protocol.ToolState{Input: in(map[string]any{"file_path": "a.go", "limit": 3})}}, "read: a.go"},
		{protocol.Part{Tool: "bash", State: &protocol.ToolState{Input: in(map[string]any{"command": "echo a\necho b"})}}, "bash: echo a …"},
		{protocol.Part{Tool: "x", State: &protocol.ToolState{Input: in(map[string]any{"zeta": "z", "alpha": "a"})}}, "x: a"},
		{protocol.Part{Tool: "noop"}, "noop"},
	}
	for _, tt := range tests {
		if got := toolTitle(tt.p); got != tt.want {
			t.Errorf("toolTitle(%+v) = %q, want %q", tt.p, got, tt.want)
		}
	}
}

// A resumed session's recap keeps the text parts of a message apart: a
// turn's tool calls separated them on screen.
func TestParagraphs(t *testing.T) {
	t.Parallel()
	m := api.Message{Parts: []protocol.Part{
		{Type: protocol.PartText, Text: "Let me read it first."},
		{Type: protocol.PartTool, Tool: "read"},
		{Type: protocol.PartText, Text: "  "},
		{Type: protocol.PartText, Text: "I updated README.md.\n"},
	}}
	if got, want := paragraphs(m), "Let me read it first.\n\nI updated README.md."; got != want {
		t.Errorf("paragraphs = %q, want %q", got, want)
	}
}
