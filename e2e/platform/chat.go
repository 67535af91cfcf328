package platform

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/cli/clitest"
)

// ReadmeCurl returns the README's agent-create command, as a user copies
// it: from its `curl -X POST …/agents` line to the line that closes the
// JSON body.
func ReadmeCurl(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(RepoRoot(t), "README.md"))
	require.NoError(t, err)
	lines := strings.Split(string(b), "\n")
	for i, l := range lines {
		if !strings.HasPrefix(l, "curl -X POST $LAP_URL/api/v1/managed_agents/agents ") {
			continue
		}
		for j := i; j < len(lines); j++ {
			if lines[j] == "}'" {
				return strings.Join(lines[i:j+1], "\n")
			}
		}
	}
	t.Fatal("README.md has no agent-create curl (curl -X POST $LAP_URL/api/v1/managed_agents/agents … }')")
	return ""
}

// footerRE matches the line chat mode prints after each turn.
var footerRE = regexp.MustCompile(`^\[\d+(\.\d)?s · [\d,]+ in / [\d,]+ out tokens · \$[\d.]+\]$`)

// TurnEnd waits until the chat turn whose prompt line is at start has
// ended — its footer shown and the next prompt up — and returns the screen.
func TurnEnd(tm *clitest.Term, start int) []string {
	return tm.WaitFor("the footer and the next prompt", func(l []string) bool {
		if len(l) == 0 || l[len(l)-1] != ">" {
			return false
		}
		for _, line := range l[start+1:] {
			if footerRE.MatchString(line) {
				return true
			}
		}
		return false
	})
}

// AssertFile checks that the file at path holds want.
func AssertFile(t testing.TB, path, want string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if assert.NoError(t, err) {
		assert.Equal(t, want, string(b), path)
	}
}
