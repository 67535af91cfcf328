package local

import (
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"lap.dev/lap/sandboxes"
)

// envName is a portable environment variable name.
var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// buildEnv is a harness's whole environment (ARCHITECTURE §5) but PORT:
// a minimal PATH, HOME and LANG, then the agent's secrets, the agent's
// environment, the sandbox's own (HARNESS_AUTH_TOKEN, LITELLM_API_KEY) and
// WORKSPACE and HARNESS_HOST, each overriding the ones before. Nothing comes from lapd's
// own environment, so MASTER_KEY and the real LLM key cannot leak into a
// sandbox; the secrets may replace PATH, HOME or LANG, never the
// variables lap sets.
func buildEnv(spec sandboxes.Spec, workspace, path string) (map[string]string, error) {
	env := map[string]string{
		"PATH": path,
		"HOME": filepath.Join(workspace, homeDir),
		"LANG": "C.UTF-8",
	}
	for _, part := range []map[string]string{spec.Agent.Secrets, spec.Agent.Env, spec.Env} {
		for k, v := range part {
			if !envName.MatchString(k) {
				return nil, fmt.Errorf("environment variable name %q: want letters, digits and '_', not starting with a digit", k)
			}
			if strings.ContainsRune(v, 0) {
				return nil, fmt.Errorf("environment variable %s: value holds a NUL byte", k)
			}
			env[k] = v
		}
	}
	env["WORKSPACE"] = workspace
	// Local harnesses serve lapd alone: loopback only (the Node harnesses
	// and lap-harness honour it).
	env["HARNESS_HOST"] = "127.0.0.1"
	delete(env, "PORT")
	return env, nil
}

// environ renders env plus PORT as KEY=VALUE, sorted for stable output.
func environ(env map[string]string, port int) []string {
	out := make([]string, 0, len(env)+1)
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	out = append(out, "PORT="+strconv.Itoa(port))
	slices.Sort(out)
	return out
}
