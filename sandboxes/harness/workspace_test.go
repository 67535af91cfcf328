package harness_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"log/slog"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/sandboxes/harness"
	"lap.dev/lap/sandboxes/protocol"
)

// gitHTTPServer serves the bare repos under root over git's smart HTTP
// protocol (git http-backend as CGI), requiring the basic credentials
// x-access-token:token.
func gitHTTPServer(t *testing.T, root, token string) *httptest.Server {
	t.Helper()
	out, err := exec.Command("git", "--exec-path").Output()
	require.NoError(t, err)
	backend := &cgi.Handler{
		Path: filepath.Join(strings.TrimSpace(string(out)), "git-http-backend"),
		Env:  []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"},
	}
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte("x-access-token:"+token))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != want {
			w.Header().Set("WWW-Authenticate", `Basic realm="git"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		backend.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestCloneOverHTTPWithToken(t *testing.T) {
	t.Parallel()
	const token = "s3cret-git-token"
	bare := strings.TrimPrefix(gitRepo(t, "# private\n"), "file://")
	git := gitHTTPServer(t, filepath.Dir(bare), token)
	repoURL := git.URL + "/" + filepath.Base(bare)

	tests := []struct {
		name, token, wantErr string
	}{
		{"right token", token, ""},
		{"wrong token", "wrong-token", "terminal prompts disabled (the git server did not accept GIT_TOKEN)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var logs syncBuffer
			ws := t.TempDir()
			srv, err := harness.New(harness.Config{
				AuthToken: testToken, Workspace: ws, LLMBaseURL: "http://127.0.0.1:9",
				RepoURL: repoURL, Branch: "feature", GitToken: tt.token,
				Env:    append(os.Environ(), "GIT_TOKEN="+tt.token),
				Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
			})
			require.NoError(t, err)
			hs := httptest.NewServer(srv.Handler())
			t.Cleanup(hs.Close)
			t.Cleanup(srv.Close)
			e := &env{t: t, url: hs.URL}
			ev := e.subscribe()

			status, _ := e.raw("GET", "/session", nil, "Bearer "+testToken)
			assert.Equal(t, 503, status, "not ready before the clone")

			err = srv.Prepare(context.Background())
			var id protocol.Identity
			require.Equal(t, 200, e.do("GET", "/", nil, &id))
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.Contains(t, id.Error, tt.wantErr)
				assert.False(t, id.Ready)
				assert.NotContains(t, id.Error, tt.token)
			} else {
				require.NoError(t, err)
				assert.True(t, id.Ready)
				b, err := os.ReadFile(filepath.Join(ws, harness.RepoDir, "README.md"))
				require.NoError(t, err)
				assert.Equal(t, "# private\n", string(b))
				cfg, err := os.ReadFile(filepath.Join(ws, harness.RepoDir, ".git", "config"))
				require.NoError(t, err)
				assert.NotContains(t, string(cfg), tt.token)
				assert.NotContains(t, string(cfg), base64.StdEncoding.EncodeToString([]byte("x-access-token:"+tt.token)))
				status, _ = e.raw("GET", "/session", nil, "Bearer "+testToken)
				assert.Equal(t, 200, status)
			}
			assert.NotContains(t, logs.String(), tt.token)

			all := ev.waitFor(t, func(x protocol.Event) bool {
				return x.Type == protocol.EventWorkspaceProgress && (x.Properties.Message == "workspace ready" || strings.HasPrefix(x.Properties.Message, "workspace failed"))
			})
			var progress []string
			for _, x := range all {
				if x.Type == protocol.EventWorkspaceProgress {
					progress = append(progress, x.Properties.Message)
					assert.NotContains(t, x.Properties.Message, tt.token)
				}
			}
			assert.Equal(t, "cloning "+repoURL+" (branch feature)", progress[0])
		})
	}
}
