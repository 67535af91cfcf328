// Package lapdlocal tests the built lapd with its default backend, local
// harness processes (bin/lap-harness), end to end over its REST API: warm
// pools, idle scale-to-zero with transparent resume, harness crashes and
// lapd restarts. The LLM is the scripted fake (e2e/fakellm), reached by
// the harnesses directly (LAP_SANDBOX_GATEWAY_URL), so these tests need no
// gateway and no network. e2e/platform builds and runs the binaries.
package lapdlocal

import (
	"os"
	"testing"

	"lap.dev/lap/e2e/platform"
)

func TestMain(m *testing.M) {
	os.Exit(platform.Main(m))
}
