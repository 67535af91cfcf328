package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
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
	return PrepareRepo(ctx, RepoSpec{
		Workspace: s.cfg.Workspace,
		Dir:       s.repo,
		Existing:  s.cfg.RepoDir != "",
		URL:       s.cfg.RepoURL,
		Branch:    s.cfg.Branch,
		GitToken:  s.cfg.GitToken,
		Env:       s.cfg.Env,
		Progress:  s.progress,
		Logger:    s.log,
	})
}

// RepoSpec says where an agent's repository comes from and where it goes.
// Every Go harness prepares its repo with PrepareRepo, so a terminal
// harness (sandboxes/ttyharness) clones exactly as this one does.
type RepoSpec struct {
	// Workspace is the sandbox's WORKSPACE (absolute); clones are staged
	// under <Workspace>/.lap.
	Workspace string
	// Dir is the repo's final place (absolute), usually <Workspace>/repo.
	Dir string
	// Existing says Dir is a given checkout (REPO_DIR): nothing is cloned,
	// it only has to be a directory.
	Existing bool
	// URL, Branch and GitToken say what to clone (see Config).
	URL      string
	Branch   string
	GitToken string
	// Env is the environment git starts from; the secrets are removed.
	Env []string
	// Progress receives progress messages, git's included (may be nil).
	Progress func(msg string)
	// Logger receives diagnostics (may be nil).
	Logger *slog.Logger
}

// PrepareRepo makes spec.Dir ready: cloned from spec.URL (or created empty
// without one) unless it is already there from an earlier run. It returns
// git's error, redacted, when the clone fails.
func PrepareRepo(ctx context.Context, spec RepoSpec) error {
	if spec.Progress == nil {
		spec.Progress = func(string) {}
	}
	if spec.Logger == nil {
		spec.Logger = slog.New(slog.DiscardHandler)
	}
	if spec.Existing {
		info, err := os.Stat(spec.Dir)
		if err != nil {
			return fmt.Errorf("repo directory: %w", err)
		}
		if !info.IsDir() {
			return fmt.Errorf("repo directory %s is not a directory", spec.Dir)
		}
		return nil
	}
	if _, err := os.Stat(spec.Dir); err == nil {
		// A restart on a kept workspace: the clone was finished (it is
		// renamed into place only when complete), keep the agent's work.
		return nil
	}
	if spec.URL == "" {
		if err := os.MkdirAll(spec.Dir, 0o755); err != nil {
			return fmt.Errorf("create workspace: %w", err)
		}
		return nil
	}
	// Clone beside the final place and rename, so a crash mid-clone never
	// leaves a half repo that a restart would take as finished; remove what
	// such a crash left.
	state := filepath.Join(spec.Workspace, StateDir)
	if err := os.MkdirAll(state, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	stale, _ := filepath.Glob(filepath.Join(state, "clone-*"))
	for _, dir := range stale {
		_ = os.RemoveAll(dir)
	}
	tmp, err := os.MkdirTemp(state, "clone-")
	if err != nil {
		return fmt.Errorf("create clone directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	dest := filepath.Join(tmp, RepoDir)
	if err := spec.clone(ctx, dest); err != nil {
		return err
	}
	if err := os.Rename(dest, spec.Dir); err != nil {
		return fmt.Errorf("move clone into place: %w", err)
	}
	return nil
}

// clone runs git clone --depth 1 into dest, streaming git's progress to
// spec.Progress.
func (spec RepoSpec) clone(ctx context.Context, dest string) error {
	repo := redactURL(spec.URL)
	args := []string{"clone", "--progress", "--depth", "1"}
	if spec.Branch != "" {
		args = append(args, "--branch", spec.Branch)
	}
	args = append(args, "--", spec.URL, dest)
	what := repo
	if spec.Branch != "" {
		what += " (branch " + spec.Branch + ")"
	}
	spec.Progress("cloning " + what)
	spec.Logger.Info("cloning", "repo", repo, "branch", spec.Branch)

	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Env = gitEnv(spec.Env, spec.GitToken)
	cmd.Dir = filepath.Dir(dest)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return fmt.Errorf("clone %s: %w", repo, err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("clone %s: start git: %w", repo, err)
	}
	tail := readGitProgress(stderr, spec.GitToken, spec.Progress)
	if err := cmd.Wait(); err != nil {
		msg := strings.TrimSpace(redactSecret(tail, spec.GitToken))
		if msg == "" {
			msg = err.Error()
		}
		if strings.Contains(msg, "could not read Username") {
			if spec.GitToken != "" {
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
func readGitProgress(r io.Reader, token string, progress func(string)) string {
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
			progress(redactSecret(line, token))
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

// ScrubSecrets returns env without the sandbox's secrets
// (HARNESS_AUTH_TOKEN, LITELLM_API_KEY, GIT_TOKEN), which no tool an agent
// runs may see.
func ScrubSecrets(env []string) []string { return scrubEnv(env, secretEnv...) }

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
