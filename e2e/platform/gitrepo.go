package platform

import (
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// GitRepo serves a repository whose main branch holds files (path →
// content) over git's smart HTTP protocol (git http-backend) on loopback,
// as a hosted repo would be, and returns its clone URL. Served by the test
// process, it is readable by sandboxes running as users of their own
// without any git ownership exception. It ends with the test.
func GitRepo(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	git := func(dir string, args ...string) string {
		t.Helper()
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@t", "GIT_COMMITTER_NAME=t",
			"GIT_COMMITTER_EMAIL=t@t", "GIT_CONFIG_NOSYSTEM=1", "HOME="+dir)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "git %v: %s", args, out)
		return strings.TrimSpace(string(out))
	}
	require.NoError(t, os.MkdirAll(src, 0o755))
	git(src, "init", "-q", "-b", "main")
	for path, content := range files {
		full := filepath.Join(src, filepath.FromSlash(path))
		require.NoError(t, os.MkdirAll(filepath.Dir(full), 0o755))
		require.NoError(t, os.WriteFile(full, []byte(content), 0o644))
	}
	git(src, "add", "-A")
	git(src, "commit", "-q", "--allow-empty", "-m", "init")
	git(dir, "clone", "-q", "--bare", src, "repos/repo.git")
	srv := httptest.NewServer(&cgi.Handler{
		Path: filepath.Join(git(dir, "--exec-path"), "git-http-backend"),
		Env:  []string{"GIT_PROJECT_ROOT=" + filepath.Join(dir, "repos"), "GIT_HTTP_EXPORT_ALL=1"},
	})
	t.Cleanup(srv.Close)
	return srv.URL + "/repo.git"
}
