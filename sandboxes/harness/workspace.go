package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"lap.dev/lap/sandboxes/protocol"
)

// secretEnv are the variables no tool and no git process ever sees: the
// harness's own token, the LLM key and the git token.
var secretEnv = []string{"HARNESS_AUTH_TOKEN", "LITELLM_API_KEY", "GIT_TOKEN"}

// workspaceState is the preparation state of the workspace.
type workspaceState struct {
	mu    sync.Mutex
	ready bool
	err   string // the failed preparation, e.g. git's error
	last  string // the latest progress message
}

// status reports whether the workspace is ready and, if preparing it
// failed, why.
func (w *workspaceState) status() (ready bool, errText string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ready, w.err
}

// progress returns the latest progress message and whether preparation
// is still going on.
func (w *workspaceState) progress() (msg string, preparing bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last, !w.ready && w.err == ""
}

func (s *Server) progress(msg string) {
	s.ws.mu.Lock()
	s.ws.last = msg
	s.ws.mu.Unlock()
	s.emit(protocol.EventWorkspaceProgress, protocol.EventProperties{Message: msg})
}

// Prepare makes the workspace ready: <Workspace>/repo is cloned from
// RepoURL (or created empty without one) unless it is already there from
// an earlier run. Until it returns, GET /session answers 503; a failure is
// reported at GET / and on GET /session. Serve calls it.
func (s *Server) Prepare(ctx context.Context) error {
	err := s.prepare(ctx)
	s.ws.mu.Lock()
	if err != nil {
		s.ws.err = err.Error()
	} else {
		s.ws.ready = true
	}
	s.ws.mu.Unlock()
	if err != nil {
		s.progress("workspace failed: " + err.Error())
		return err
	}
	s.progress("workspace ready")
	s.log.Info("workspace ready", "repo", s.repo, "after", time.Since(s.started).Round(time.Millisecond))
	return nil
}

func (s *Server) prepare(ctx context.Context) error {
	if s.cfg.RepoDir != "" {
		info, err := os.Stat(s.repo)
		if err != nil {
			return fmt.Errorf("repo directory: %w", err)
		}
		if !info.IsDir() {
			return fmt.Errorf("repo directory %s is not a directory", s.repo)
		}
		return nil
	}
	if _, err := os.Stat(s.repo); err == nil {
		// A restart on a kept workspace: the clone was finished (it is
		// renamed into place only when complete), keep the agent's work.
		return nil
	}
	if s.cfg.RepoURL == "" {
		if err := os.MkdirAll(s.repo, 0o755); err != nil {
			return fmt.Errorf("create workspace: %w", err)
		}
		return nil
	}
	// Clone beside the final place and rename, so a crash mid-clone never
	// leaves a half repo that a restart would take as finished; remove what
	// such a crash left.
	stale, _ := filepath.Glob(filepath.Join(s.cfg.Workspace, StateDir, "clone-*"))
	for _, dir := range stale {
		_ = os.RemoveAll(dir)
	}
	tmp, err := os.MkdirTemp(filepath.Join(s.cfg.Workspace, StateDir), "clone-")
	if err != nil {
		return fmt.Errorf("create clone directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	dest := filepath.Join(tmp, RepoDir)
	if err := s.clone(ctx, dest); err != nil {
		return err
	}
	if err := os.Rename(dest, s.repo); err != nil {
		return fmt.Errorf("move clone into place: %w", err)
	}
	return nil
}

// clone runs git clone --depth 1 into dest, streaming git's progress as
// workspace.progress events.
func (s *Server) clone(ctx context.Context, dest string) error {
	repo := redactURL(s.cfg.RepoURL)
	args := []string{"clone", "--progress", "--depth", "1"}
	if s.cfg.Branch != "" {
		args = append(args, "--branch", s.cfg.Branch)
	}
	args = append(args, "--", s.cfg.RepoURL, dest)
	what := repo
	if s.cfg.Branch != "" {
		what += " (branch " + s.cfg.Branch + ")"
	}
	s.progress("cloning " + what)
	s.log.Info("cloning", "repo", repo, "branch", s.cfg.Branch)

	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Env = gitEnv(s.cfg.Env, s.cfg.GitToken)
	cmd.Dir = filepath.Dir(dest)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return fmt.Errorf("clone %s: %w", repo, err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("clone %s: start git: %w", repo, err)
	}
	tail := s.readGitProgress(stderr)
	if err := cmd.Wait(); err != nil {
		msg := strings.TrimSpace(redactSecret(tail, s.cfg.GitToken))
		if msg == "" {
			msg = err.Error()
		}
		if strings.Contains(msg, "could not read Username") {
			if s.cfg.GitToken != "" {
				msg += " (the git server did not accept GIT_TOKEN)"
			} else {
				msg += " (the repository needs credentials: set GIT_TOKEN)"
			}
		}
		return fmt.Errorf("git clone %s: %s", what, msg)
	}
	return nil
}

// readGitProgress reads git's stderr until it closes. Progress lines end
// in \r; they are published at most every 200ms and whenever the phase
// changes. It returns the last lines, which hold git's error, if any.
func (s *Server) readGitProgress(r io.Reader) string {
	sc := bufio.NewScanner(r)
	sc.Split(scanLinesOrCR)
	var tail []string
	var lastPhase string
	var lastSent time.Time
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		phase, _, _ := strings.Cut(line, ":")
		if strings.HasPrefix(line, "fatal:") || strings.HasPrefix(line, "error:") || strings.HasPrefix(line, "warning:") || !strings.Contains(line, "%") {
			tail = append(tail, line)
			if len(tail) > 10 {
				tail = tail[1:]
			}
		}
		if phase != lastPhase || time.Since(lastSent) >= 200*time.Millisecond || strings.Contains(line, "done") {
			s.progress(redactSecret(line, s.cfg.GitToken))
			lastPhase, lastSent = phase, time.Now()
		}
	}
	return strings.Join(tail, "\n")
}

// scanLinesOrCR splits on \n or \r, as git redraws progress lines with \r.
func scanLinesOrCR(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

// gitEnv is the environment of the clone: the scrubbed environment, never
// prompting for credentials, and the token, when given, as an HTTP
// Authorization header set through GIT_CONFIG_* variables of this one
// process, so it is not on the command line (which any process may read),
// not written to the clone's .git/config and not in any later process.
func gitEnv(env []string, token string) []string {
	out := scrubEnv(env, secretEnv...)
	out = append(out, "GIT_TERMINAL_PROMPT=0")
	if token == "" {
		return out
	}
	n := 0
	for _, kv := range out {
		if v, ok := strings.CutPrefix(kv, "GIT_CONFIG_COUNT="); ok {
			n, _ = strconv.Atoi(v)
		}
	}
	out = scrubEnv(out, "GIT_CONFIG_COUNT")
	basic := base64.StdEncoding.EncodeToString([]byte("x-access-token:" + token))
	return append(out,
		fmt.Sprintf("GIT_CONFIG_KEY_%d=http.extraHeader", n),
		fmt.Sprintf("GIT_CONFIG_VALUE_%d=Authorization: Basic %s", n, basic),
		fmt.Sprintf("GIT_CONFIG_COUNT=%d", n+1),
	)
}

// toolEnv is the environment of the tools: env without the secrets, with
// what a non-interactive agent needs (no pagers, no prompts, an identity
// for commits) unless env says otherwise.
func toolEnv(env []string) []string {
	out := scrubEnv(env, secretEnv...)
	has := map[string]bool{}
	for _, kv := range out {
		k, _, _ := strings.Cut(kv, "=")
		has[k] = true
	}
	for _, kv := range []string{
		"PAGER=cat", "GIT_PAGER=cat", "GIT_TERMINAL_PROMPT=0", "TERM=dumb",
		"GIT_AUTHOR_NAME=lap agent", "GIT_AUTHOR_EMAIL=agent@lap.invalid",
		"GIT_COMMITTER_NAME=lap agent", "GIT_COMMITTER_EMAIL=agent@lap.invalid",
	} {
		if k, _, _ := strings.Cut(kv, "="); !has[k] {
			out = append(out, kv)
		}
	}
	return out
}

// scrubEnv returns env without the named variables.
func scrubEnv(env []string, names ...string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		drop := false
		for _, n := range names {
			if k == n {
				drop = true
				break
			}
		}
		if !drop {
			out = append(out, kv)
		}
	}
	return out
}

// redactURL hides a password in a URL's user info.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	return u.Redacted()
}

// redactSecret replaces secret in s.
func redactSecret(s, secret string) string {
	if secret == "" {
		return s
	}
	return strings.ReplaceAll(s, secret, "[redacted]")
}
