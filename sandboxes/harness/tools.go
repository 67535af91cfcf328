package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Tool names, as the model calls them.
const (
	ToolBash      = "bash"
	ToolReadFile  = "read_file"
	ToolWriteFile = "write_file"
	ToolEditFile  = "edit_file"
	ToolListFiles = "list_files"
	ToolGrep      = "grep"
)

// Limits of the file tools beside Config.OutputLimit.
const (
	maxListed      = 2000    // list_files entries
	maxGrepMatches = 500     // grep matching lines
	maxGrepFile    = 8 << 20 // grep skips files larger than this
	maxLineLen     = 2000    // grep cuts longer lines
)

// toolSpec declares one tool to the model.
type toolSpec struct {
	Name        string
	Description string
	Parameters  map[string]any // JSON schema
}

// toolbox runs the tools in one workspace.
type toolbox struct {
	root    string // the repo directory, as configured
	env     []string
	shell   string
	timeout time.Duration
	maxTime time.Duration
	limit   int
}

func newToolbox(root string, env []string, cfg Config) *toolbox {
	shell := "/bin/bash"
	if _, err := os.Stat(shell); err != nil {
		shell = "/bin/sh"
	}
	return &toolbox{root: root, env: env, shell: shell, timeout: cfg.BashTimeout, maxTime: cfg.MaxBashTimeout, limit: cfg.OutputLimit}
}

func object(required []string, props map[string]any) map[string]any {
	o := map[string]any{"type": "object", "properties": props}
	if len(required) > 0 {
		o["required"] = required // null is not a valid JSON schema here
	}
	return o
}

func prop(typ, desc string) map[string]any { return map[string]any{"type": typ, "description": desc} }

// specs lists the tools offered to the model.
func (tb *toolbox) specs() []toolSpec {
	return []toolSpec{
		{ToolBash, "Run a bash command in the repository directory and return its combined stdout and stderr (cut to the first and last part when long) and its exit code. Background processes are stopped when the command ends.",
			object([]string{"command"}, map[string]any{
				"command":   prop("string", "the command line, run with bash -c"),
				"timeout_s": prop("integer", fmt.Sprintf("seconds before the command is killed (default %d, at most %d)", int(tb.timeout.Seconds()), int(tb.maxTime.Seconds()))),
			})},
		{ToolReadFile, "Read a text file of the workspace. Lines are numbered from 1; start_line and end_line (inclusive) select a range.",
			object([]string{"path"}, map[string]any{
				"path":       prop("string", "file path, relative to the repository root"),
				"start_line": prop("integer", "first line to read (default 1)"),
				"end_line":   prop("integer", "last line to read (default: the end)"),
			})},
		{ToolWriteFile, "Create or overwrite a file with the given content; missing parent directories are created.",
			object([]string{"path", "content"}, map[string]any{
				"path":    prop("string", "file path, relative to the repository root"),
				"content": prop("string", "the whole new content of the file"),
			})},
		{ToolEditFile, "Replace one exact occurrence of old_string in a file by new_string. old_string must occur exactly once; include surrounding lines to make it unique.",
			object([]string{"path", "old_string", "new_string"}, map[string]any{
				"path":       prop("string", "file path, relative to the repository root"),
				"old_string": prop("string", "the exact text to replace"),
				"new_string": prop("string", "the text to put in its place"),
			})},
		{ToolListFiles, "List the files of the repository (not .git), optionally matching a glob: * and ? within a path segment, ** across segments; a pattern without / matches file names at any depth (e.g. *.go).",
			object(nil, map[string]any{
				"pattern": prop("string", "glob pattern, e.g. **/*.go or docs/*.md (default: every file)"),
			})},
		{ToolGrep, "Search file contents with a regular expression (RE2 syntax) and return matching lines as path:line: text.",
			object([]string{"pattern"}, map[string]any{
				"pattern": prop("string", "regular expression"),
				"path":    prop("string", "file or directory to search (default: the repository root)"),
			})},
	}
}

// toolResult is the outcome of one tool call: its output for the model,
// and an error when the call failed (the model is shown both).
type toolResult struct {
	output string
	err    error
}

// forModel is the tool message content the model receives.
func (r toolResult) forModel() string {
	if r.err == nil {
		return r.output
	}
	if r.output == "" {
		return "Error: " + r.err.Error()
	}
	return "Error: " + r.err.Error() + "\n" + r.output
}

// run executes the tool name with the JSON arguments args.
func (tb *toolbox) run(ctx context.Context, name, args string) toolResult {
	var out string
	var err error
	switch name {
	case ToolBash:
		var a struct {
			Command  string   `json:"command"`
			TimeoutS *float64 `json:"timeout_s"`
		}
		if err = decodeArgs(args, &a); err == nil {
			return tb.bash(ctx, a.Command, a.TimeoutS)
		}
	case ToolReadFile:
		var a struct {
			Path      string `json:"path"`
			StartLine int    `json:"start_line"`
			EndLine   int    `json:"end_line"`
		}
		if err = decodeArgs(args, &a); err == nil {
			out, err = tb.readFile(a.Path, a.StartLine, a.EndLine)
		}
	case ToolWriteFile:
		var a struct {
			Path    string  `json:"path"`
			Content *string `json:"content"`
		}
		if err = decodeArgs(args, &a); err == nil {
			out, err = tb.writeFile(a.Path, a.Content)
		}
	case ToolEditFile:
		var a struct {
			Path      string `json:"path"`
			OldString string `json:"old_string"`
			NewString string `json:"new_string"`
		}
		if err = decodeArgs(args, &a); err == nil {
			out, err = tb.editFile(a.Path, a.OldString, a.NewString)
		}
	case ToolListFiles:
		var a struct {
			Pattern string `json:"pattern"`
		}
		if err = decodeArgs(args, &a); err == nil {
			out, err = tb.listFiles(ctx, a.Pattern)
		}
	case ToolGrep:
		var a struct {
			Pattern string `json:"pattern"`
			Path    string `json:"path"`
		}
		if err = decodeArgs(args, &a); err == nil {
			out, err = tb.grep(ctx, a.Pattern, a.Path)
		}
	default:
		names := make([]string, 0, 6)
		for _, s := range tb.specs() {
			names = append(names, s.Name)
		}
		err = fmt.Errorf("unknown tool %q; the tools are %s", name, strings.Join(names, ", "))
	}
	return toolResult{output: out, err: err}
}

// decodeArgs parses a tool's arguments; empty arguments mean none.
func decodeArgs(args string, v any) error {
	if strings.TrimSpace(args) == "" {
		return nil
	}
	if err := json.Unmarshal([]byte(args), v); err != nil {
		return fmt.Errorf("arguments are not valid JSON for this tool: %v", err)
	}
	return nil
}

// errOutside is wrapped by every path refusal.
var errOutside = errors.New("outside the workspace")

// resolve maps a path the model gave to a real path inside the workspace.
// Relative paths are relative to the repo. The path is refused when it
// leaves the workspace lexically (.., an absolute path elsewhere) or
// through a symlink: the deepest part of it that exists is resolved with
// EvalSymlinks, and the rest cannot contain links yet.
func (tb *toolbox) resolve(p string) (string, error) {
	if strings.TrimSpace(p) == "" {
		return "", errors.New("path is empty")
	}
	root, err := filepath.EvalSymlinks(tb.root)
	if err != nil {
		return "", fmt.Errorf("resolve workspace: %w", err)
	}
	abs := p
	if !filepath.IsAbs(abs) {
		abs = filepath.Join(tb.root, abs)
	}
	abs = filepath.Clean(abs)
	if !within(tb.root, abs) && !within(root, abs) {
		return "", fmt.Errorf("path %q is %w %s", p, errOutside, tb.root)
	}
	// Find the deepest existing ancestor and resolve its links.
	existing, rest := abs, ""
	for {
		if _, err := os.Lstat(existing); err == nil {
			break
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			break
		}
		rest = filepath.Join(filepath.Base(existing), rest)
		existing = parent
	}
	real, err := filepath.EvalSymlinks(existing)
	if err != nil {
		return "", fmt.Errorf("resolve %q: %w", p, err)
	}
	real = filepath.Join(real, rest)
	if !within(root, real) {
		return "", fmt.Errorf("path %q leads %w %s through a symbolic link", p, errOutside, tb.root)
	}
	return real, nil
}

// within reports whether p is root or below it; both are clean and absolute.
func within(root, p string) bool {
	rel, err := filepath.Rel(root, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// display is the workspace-relative form of a resolved path, for output.
func (tb *toolbox) display(real string) string {
	root, err := filepath.EvalSymlinks(tb.root)
	if err != nil {
		return real
	}
	if rel, err := filepath.Rel(root, real); err == nil {
		return filepath.ToSlash(rel)
	}
	return real
}

func (tb *toolbox) readFile(p string, start, end int) (string, error) {
	real, err := tb.resolve(p)
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(real)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", p, unwrapPathError(err))
	}
	if bytes.IndexByte(b[:min(len(b), 8000)], 0) >= 0 {
		return fmt.Sprintf("%s is a binary file of %d bytes; not shown", p, len(b)), nil
	}
	if start == 0 && end == 0 {
		return tb.cap(string(b), fmt.Sprintf("use start_line and end_line to read the rest of %s", p)), nil
	}
	lines := strings.SplitAfter(string(b), "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	if start <= 0 {
		start = 1
	}
	if end <= 0 || end > len(lines) {
		end = len(lines)
	}
	if start > len(lines) {
		return "", fmt.Errorf("start_line %d is past the end of %s (%d lines)", start, p, len(lines))
	}
	if start > end {
		return "", fmt.Errorf("start_line %d is after end_line %d", start, end)
	}
	return tb.cap(strings.Join(lines[start-1:end], ""), "ask for a smaller range of lines"), nil
}

func (tb *toolbox) writeFile(p string, content *string) (string, error) {
	if content == nil {
		return "", errors.New("content is required (use an empty string for an empty file)")
	}
	real, err := tb.resolve(p)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(real), 0o755); err != nil {
		return "", fmt.Errorf("create directories for %s: %w", p, unwrapPathError(err))
	}
	if err := os.WriteFile(real, []byte(*content), 0o644); err != nil {
		return "", fmt.Errorf("write %s: %w", p, unwrapPathError(err))
	}
	return fmt.Sprintf("wrote %d bytes to %s", len(*content), tb.display(real)), nil
}

func (tb *toolbox) editFile(p, old, new string) (string, error) {
	if old == "" {
		return "", errors.New("old_string is empty; use write_file to create a file")
	}
	if old == new {
		return "", errors.New("old_string and new_string are the same")
	}
	real, err := tb.resolve(p)
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(real)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", p, unwrapPathError(err))
	}
	switch n := strings.Count(string(b), old); n {
	case 0:
		return "", fmt.Errorf("old_string not found in %s; it must match the file exactly, whitespace included", p)
	case 1:
	default:
		return "", fmt.Errorf("old_string occurs %d times in %s; include more surrounding text so it occurs exactly once", n, p)
	}
	info, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("stat %s: %w", p, unwrapPathError(err))
	}
	if err := os.WriteFile(real, []byte(strings.Replace(string(b), old, new, 1)), info.Mode().Perm()); err != nil {
		return "", fmt.Errorf("write %s: %w", p, unwrapPathError(err))
	}
	return fmt.Sprintf("edited %s: replaced 1 occurrence", tb.display(real)), nil
}

func (tb *toolbox) listFiles(ctx context.Context, pattern string) (string, error) {
	pattern = strings.TrimPrefix(filepath.ToSlash(strings.TrimSpace(pattern)), "./")
	if pattern == "" {
		pattern = "**"
	}
	if path.IsAbs(pattern) || slices.Contains(strings.Split(pattern, "/"), "..") {
		return "", fmt.Errorf("pattern %q must be relative to the repository and not contain ..", pattern)
	}
	if !strings.Contains(pattern, "/") && pattern != "**" {
		pattern = "**/" + pattern
	}
	if _, err := path.Match(strings.ReplaceAll(pattern, "**", "*"), ""); err != nil {
		return "", fmt.Errorf("bad pattern %q: %w", pattern, err)
	}
	root, err := filepath.EvalSymlinks(tb.root)
	if err != nil {
		return "", fmt.Errorf("resolve workspace: %w", err)
	}
	var files []string
	more := 0
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // unreadable entries are skipped
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if d.IsDir() {
			if d.Name() == ".git" {
				return filepath.SkipDir
			}
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if matchGlob(pattern, rel) {
			if len(files) < maxListed {
				files = append(files, rel)
			} else {
				more++
			}
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	if len(files) == 0 {
		return "no files match " + pattern, nil
	}
	out := strings.Join(files, "\n")
	if more > 0 {
		out += fmt.Sprintf("\n[%d more files not listed; use a narrower pattern]", more)
	}
	return tb.cap(out, "use a narrower pattern"), nil
}

// matchGlob matches a slash-separated path against a pattern in which **
// stands for any number of whole segments.
func matchGlob(pattern, name string) bool {
	return matchSegments(strings.Split(pattern, "/"), strings.Split(name, "/"))
}

func matchSegments(pat, name []string) bool {
	for len(pat) > 0 {
		if pat[0] == "**" {
			for i := 0; i <= len(name); i++ {
				if matchSegments(pat[1:], name[i:]) {
					return true
				}
			}
			return false
		}
		if len(name) == 0 {
			return false
		}
		if ok, _ := path.Match(pat[0], name[0]); !ok {
			return false
		}
		pat, name = pat[1:], name[1:]
	}
	return len(name) == 0
}

func (tb *toolbox) grep(ctx context.Context, pattern, p string) (string, error) {
	re, err := regexp.Compile(pattern)
	if err != nil {
		return "", fmt.Errorf("bad regular expression: %w", err)
	}
	if p == "" {
		p = "."
	}
	start, err := tb.resolve(p)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(start); err != nil {
		return "", fmt.Errorf("search %s: %w", p, unwrapPathError(err))
	}
	var out strings.Builder
	matches := 0
	err = filepath.WalkDir(start, func(fp string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if d.IsDir() {
			if d.Name() == ".git" && fp != start {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		if info, err := d.Info(); err != nil || info.Size() > maxGrepFile {
			return nil
		}
		b, err := os.ReadFile(fp)
		if err != nil || bytes.IndexByte(b[:min(len(b), 8000)], 0) >= 0 {
			return nil // unreadable or binary
		}
		name := tb.display(fp)
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(nil, len(b)+1)
		for n := 1; sc.Scan(); n++ {
			line := sc.Text()
			if !re.MatchString(line) {
				continue
			}
			matches++
			if matches > maxGrepMatches {
				return filepath.SkipAll
			}
			if len(line) > maxLineLen {
				line = line[:maxLineLen] + "…"
			}
			fmt.Fprintf(&out, "%s:%d: %s\n", name, n, line)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	if matches == 0 {
		return "no matches", nil
	}
	s := strings.TrimSuffix(out.String(), "\n")
	if matches > maxGrepMatches {
		s += fmt.Sprintf("\n[stopped after %d matching lines; narrow the pattern or the path]", maxGrepMatches)
	}
	return tb.cap(s, "narrow the pattern or the path"), nil
}

// cap cuts s to the output limit, saying so and what to do instead.
func (tb *toolbox) cap(s, hint string) string {
	if len(s) <= tb.limit {
		return s
	}
	return fmt.Sprintf("%s\n[output cut: showing the first %d of %d bytes; %s]", truncateUTF8(s, tb.limit), tb.limit, len(s), hint)
}

// truncateUTF8 cuts s to at most n bytes without splitting a rune.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && n < len(s) && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}

// unwrapPathError drops the *PathError wrapper, whose path is the real
// one; callers name the path as the model gave it.
func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
