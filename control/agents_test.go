package control

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/api"
	"lap.dev/lap/control/sandboxtoken"
	"lap.dev/lap/store"
)

// quickstart is the agent-create body of the LiteLLM Agent Platform docs,
// word for word.
const quickstart = `{
"name": "my-sdk-agent",
"harness_id": "claude-agent-sdk",
"model": "anthropic/claude-sonnet-4-5",
"prompt": "You are a helpful assistant.",
"repo_url": "https://github.com/your-org/your-repo"
}`

func TestAuth(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{groups: []RouteGroup{pingGroup}})
	tests := []struct {
		name, method, path string
		auth               bool
		want               int
	}{
		{"healthz is open", http.MethodGet, "/healthz", false, http.StatusOK},
		{"readyz is open", http.MethodGet, "/readyz", false, http.StatusOK},
		{"gateway group does its own auth", http.MethodGet, "/llm/ping", false, http.StatusOK},
		{"agents need the key", http.MethodGet, api.BasePath + "/agents", false, http.StatusUnauthorized},
		{"metrics need the key", http.MethodGet, "/metrics", false, http.StatusUnauthorized},
		{"unknown routes need the key", http.MethodGet, "/nope", false, http.StatusUnauthorized},
		{"with the key", http.MethodGet, api.BasePath + "/agents", true, http.StatusOK},
		{"unknown route with the key", http.MethodGet, "/nope", true, http.StatusNotFound},
	}
	for _, tt := range tests {
		status, body := e.raw(tt.method, tt.path, "", nil, tt.auth)
		assert.Equal(t, tt.want, status, "%s: %s", tt.name, body)
		if status == http.StatusUnauthorized {
			assert.Equal(t, api.CodeUnauthorized, errorOf(t, body).Code)
		}
	}
	for _, bearer := range []string{"Bearer wrong", "Bearer " + testKey + "x", "Basic " + testKey, testKey} {
		req, _ := http.NewRequest(http.MethodGet, e.url+api.BasePath+"/agents", nil)
		req.Header.Set("Authorization", bearer)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "Authorization: %s", bearer)
	}
	sandboxToken := e.tokens.Mint(sandboxtoken.Claims{SandboxID: "sb", AgentID: "a"})
	req, _ := http.NewRequest(http.MethodGet, e.url+api.BasePath+"/agents", nil)
	req.Header.Set("Authorization", "Bearer "+sandboxToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "a sandbox token is no key to the management API")
}

func TestQuickstartAgentCreate(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	status, body := e.raw(http.MethodPost, api.BasePath+"/agents", "application/json", []byte(quickstart), true)
	require.Equal(t, http.StatusCreated, status, "%s", body)
	var a api.Agent
	require.NoError(t, json.Unmarshal(body, &a))
	assert.Equal(t, "my-sdk-agent", a.Name)
	assert.Equal(t, "claude-agent-sdk", a.HarnessID)
	assert.Equal(t, "anthropic/claude-sonnet-4-5", a.Model)
	assert.Equal(t, "main", a.Branch)
	assert.Equal(t, []string{}, a.EnvVars)
	assert.EqualValues(t, 1, a.Generation)
	assert.Len(t, a.ID, 36)

	status, body = e.raw(http.MethodPost, api.BasePath+"/agents", "application/json", []byte(quickstart), true)
	assert.Equal(t, http.StatusConflict, status)
	assert.Equal(t, api.CodeConflict, errorOf(t, body).Code)
	assert.Contains(t, errorOf(t, body).Message, "my-sdk-agent")

	for _, ref := range []string{a.ID, a.Name, a.ID[:8]} {
		var got api.Agent
		require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/agents/"+ref, nil, &got), ref)
		assert.Equal(t, a.ID, got.ID)
	}
	var list api.List[api.Agent]
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/agents", nil, &list))
	require.Len(t, list.Data, 1)
	assert.Equal(t, "my-sdk-agent", list.Data[0].Name)

	status, body = e.raw(http.MethodGet, api.BasePath+"/sessions/c3970704", "", nil, true)
	assert.Equal(t, http.StatusNotFound, status)
	assert.Equal(t, api.ErrorDetail{Code: api.CodeNotFound, Message: "session c3970704 not found"}, errorOf(t, body))

	var harnesses api.List[api.Harness]
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/harnesses", nil, &harnesses))
	assert.Len(t, harnesses.Data, 5)
	for _, h := range harnesses.Data {
		assert.Equal(t, h.ID == "claude-code" || h.ID == "codex", h.SupportsTUI, "supports_tui of %s", h.ID)
	}
}

func TestAgentValidation(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{settings: map[string]string{"LITELLM_API_BASE": "http://127.0.0.1:9"}})
	manyEnv := map[string]string{}
	for i := range 51 {
		manyEnv[fmt.Sprint("V", i)] = "x"
	}
	tests := []struct {
		name        string
		contentType string
		body        string
		status      int
		code        string
		message     string
	}{
		{"malformed JSON", "application/json", `{"name": "a",`, 400, api.CodeBadRequest, "malformed JSON"},
		{"unknown field", "application/json", `{"name": "a", "model": "m", "colour": "red"}`, 400, api.CodeBadRequest, `unknown field "colour"`},
		{"wrong type", "application/json", `{"name": 7}`, 400, api.CodeBadRequest, `field "name"`},
		{"trailing data", "application/json", `{"name": "a", "model": "m"} {}`, 400, api.CodeBadRequest, "after the object"},
		{"empty body", "application/json", ``, 400, api.CodeBadRequest, "body required"},
		{"wrong content type", "text/plain", `{"name": "a", "model": "m"}`, 415, api.CodeUnsupportedMedia, "application/json"},
		{"no content type", "", `{"name": "a", "model": "m"}`, 415, api.CodeUnsupportedMedia, "application/json"},
		{"json with charset", "application/json; charset=utf-8", `{"name": "ok-charset", "model": "m"}`, 201, "", ""},
		{"name missing", "application/json", `{"model": "m"}`, 400, api.CodeBadRequest, "name is required"},
		{"name upper case", "application/json", `{"name": "My-Agent", "model": "m"}`, 400, api.CodeBadRequest, "DNS-1123"},
		{"name 41 chars", "application/json", `{"name": "` + strings.Repeat("a", 41) + `", "model": "m"}`, 400, api.CodeBadRequest, "1 to 40"},
		{"name 40 chars", "application/json", `{"name": "` + strings.Repeat("a", 40) + `", "model": "m"}`, 201, "", ""},
		{"name trailing dash", "application/json", `{"name": "a-", "model": "m"}`, 400, api.CodeBadRequest, "DNS-1123"},
		{"name leading digit", "application/json", `{"name": "1agent", "model": "m"}`, 400, api.CodeBadRequest, "starting with a letter"},
		{"model missing", "application/json", `{"name": "no-model"}`, 400, api.CodeBadRequest, "model is required"},
		{"unknown harness", "application/json", `{"name": "h", "model": "m", "harness_id": "cursor"}`, 400, api.CodeBadRequest, "lap, claude-agent-sdk, opencode"},
		{"ftp repo", "application/json", `{"name": "r", "model": "m", "repo_url": "ftp://x/y"}`, 400, api.CodeBadRequest, "repo_url"},
		{"ssh repo", "application/json", `{"name": "ssh-repo", "model": "m", "repo_url": "git@github.com:org/repo.git"}`, 201, "", ""},
		{"file repo", "application/json", `{"name": "file-repo", "model": "m", "repo_url": "file:///srv/repo"}`, 201, "", ""},
		{"bad branch", "application/json", `{"name": "b", "model": "m", "branch": "a..b"}`, 400, api.CodeBadRequest, "branch"},
		{"reserved env", "application/json", `{"name": "e", "model": "m", "env_vars": {"LITELLM_API_KEY": "x"}}`, 400, api.CodeBadRequest, "reserved"},
		{"LAP_ env", "application/json", `{"name": "e", "model": "m", "env_vars": {"LAP_THING": "x"}}`, 400, api.CodeBadRequest, "reserved"},
		{"bad env name", "application/json", `{"name": "e", "model": "m", "env_vars": {"1X": "x"}}`, 400, api.CodeBadRequest, "[A-Za-z_]"},
		{"too many env", "application/json", mustJSON(map[string]any{"name": "e", "model": "m", "env_vars": manyEnv}), 400, api.CodeBadRequest, "at most 50"},
		{"env too big", "application/json", mustJSON(map[string]any{"name": "e", "model": "m", "env_vars": map[string]string{"BIG": strings.Repeat("x", 17<<10)}}), 400, api.CodeBadRequest, "16384"},
		{"negative pool", "application/json", `{"name": "p", "model": "m", "warm_pool_size": -1}`, 400, api.CodeBadRequest, "warm_pool_size"},
		{"negative budget", "application/json", `{"name": "p", "model": "m", "max_budget_usd": -1}`, 400, api.CodeBadRequest, "max_budget_usd"},
		{"several problems at once", "application/json", `{"name": "X", "harness_id": "nope"}`, 400, api.CodeBadRequest, "harness_id"},
		{"prompt of 64 KiB", "application/json", `{"name": "long-prompt", "model": "m", "prompt": "` + strings.Repeat("x", 64<<10) + `"}`, 201, "", ""},
		{"prompt over 64 KiB", "application/json", `{"name": "p", "model": "m", "prompt": "` + strings.Repeat("x", 64<<10+1) + `"}`, 400, api.CodeBadRequest, "at most 65536"},
		{"body over 1 MiB", "application/json", `{"name": "big", "model": "m", "prompt": "` + strings.Repeat("x", 1<<20) + `"}`, 413, api.CodeTooLarge, "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := e.raw(http.MethodPost, api.BasePath+"/agents", tt.contentType, []byte(tt.body), true)
			require.Equal(t, tt.status, status, "%s", body)
			if tt.code != "" {
				d := errorOf(t, body)
				assert.Equal(t, tt.code, d.Code)
				assert.Contains(t, d.Message, tt.message)
			}
		})
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func TestDefaultModelWithoutUpstream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	var a api.Agent
	require.Equal(t, http.StatusCreated, e.do(http.MethodPost, "/agents", map[string]any{"name": "offline"}, &a))
	assert.Equal(t, "mock/tools", a.Model)
	assert.Equal(t, "lap", a.HarnessID)
}

func TestEnvVarsAreSecret(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	const secret = "ghp_verysecretvalue123"
	a := e.createAgent("secretive", map[string]any{"env_vars": map[string]string{"GITHUB_TOKEN": secret, "OTHER": "v"}})
	assert.Equal(t, []string{"GITHUB_TOKEN", "OTHER"}, a.EnvVars, "names only")
	status, body := e.raw(http.MethodGet, api.BasePath+"/agents/secretive", "", nil, true)
	require.Equal(t, http.StatusOK, status)
	assert.NotContains(t, string(body), secret)

	sess := e.readySession("secretive")
	env, err := e.backend.Env(sess.SandboxID)
	require.NoError(t, err)
	assert.Equal(t, secret, env["GITHUB_TOKEN"], "the value reaches the sandbox's environment")
	claims, err := e.tokens.Verify(env["LITELLM_API_KEY"])
	require.NoError(t, err, "the sandbox's LITELLM_API_KEY is its gateway token")
	assert.Equal(t, sandboxtoken.Claims{SandboxID: sess.SandboxID, AgentID: a.ID}, claims)
	assert.NotEmpty(t, env["HARNESS_AUTH_TOKEN"])
	assert.Equal(t, "http://127.0.0.1:0/llm", env["LITELLM_API_BASE"])
	assert.Equal(t, "anthropic/claude-sonnet-4-5", env["LAP_MODEL"])
	assert.NotContains(t, env, "MASTER_KEY")

	e.stop()
	raw, err := os.ReadFile(filepath.Join(e.dir, store.FileName))
	require.NoError(t, err)
	assert.NotContains(t, string(raw), secret, "env_vars are encrypted at rest")
	assert.Contains(t, string(raw), "GITHUB_TOKEN")
}

func TestUpdateAgent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	a := e.createAgent("patchy", nil)
	var got api.Agent
	require.Equal(t, http.StatusOK, e.do(http.MethodPatch, "/agents/patchy", map[string]any{"warm_pool_size": 3}, &got))
	assert.EqualValues(t, 1, got.Generation, "warm_pool_size does not change the sandbox spec")
	assert.Equal(t, 3, *got.WarmPoolSize)
	require.Equal(t, http.StatusOK, e.do(http.MethodPatch, "/agents/patchy", map[string]any{"model": "openai/gpt-5", "env_vars": map[string]string{"K": "v"}}, &got))
	assert.EqualValues(t, 2, got.Generation)
	assert.Equal(t, "openai/gpt-5", got.Model)
	assert.Equal(t, []string{"K"}, got.EnvVars)
	assert.Equal(t, "You are a helpful assistant.", got.Prompt, "unset fields are kept")
	require.Equal(t, http.StatusOK, e.do(http.MethodPatch, "/agents/"+a.ID, map[string]any{"env_vars": map[string]string{"K": "v"}}, &got))
	assert.EqualValues(t, 2, got.Generation, "the same env_vars change nothing")

	var d api.ErrorBody
	assert.Equal(t, http.StatusUnprocessableEntity, e.do(http.MethodPatch, "/agents/patchy", map[string]any{"name": "renamed"}, &d))
	assert.Equal(t, http.StatusBadRequest, e.do(http.MethodPatch, "/agents/patchy", map[string]any{"harness_id": "x"}, &d))
	assert.Equal(t, http.StatusNotFound, e.do(http.MethodPatch, "/agents/nobody", map[string]any{"model": "m"}, &d))
}

func TestDeleteAgentEndsEverything(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.createAgent("doomed", nil)
	sess := e.readySession("doomed")
	require.NotEmpty(t, e.backend.Running())

	require.Equal(t, http.StatusNoContent, e.do(http.MethodDelete, "/agents/doomed", nil, nil))
	assert.Empty(t, e.backend.Running(), "its sandboxes are destroyed")
	assert.Equal(t, api.SessionDead, e.session(sess.ID).Status)
	sb, err := e.store.GetSandbox(t.Context(), sess.SandboxID)
	require.NoError(t, err)
	assert.False(t, sb.Live(), "its gateway tokens die with it")
	assert.Equal(t, http.StatusNotFound, e.do(http.MethodGet, "/agents/doomed", nil, nil))
	assert.Equal(t, http.StatusNotFound, e.do(http.MethodDelete, "/agents/doomed", nil, nil))
	e.createAgent("doomed", nil) // the name is free again
}

func TestListAgentsPaging(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	for i := range 5 {
		e.createAgent(fmt.Sprint("agent-", i), nil)
	}
	var names []string
	cursor := ""
	for range 5 {
		var page api.List[api.Agent]
		require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/agents?limit=2&cursor="+cursor, nil, &page))
		for _, a := range page.Data {
			names = append(names, a.Name)
		}
		if cursor = page.NextCursor; cursor == "" {
			break
		}
	}
	assert.Equal(t, []string{"agent-4", "agent-3", "agent-2", "agent-1", "agent-0"}, names)
	var page api.List[api.Agent]
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/agents?search=nt-3", nil, &page))
	require.Len(t, page.Data, 1)
	assert.Equal(t, http.StatusBadRequest, e.do(http.MethodGet, "/agents?cursor=bogus", nil, nil))
	assert.Equal(t, http.StatusBadRequest, e.do(http.MethodGet, "/agents?limit=0", nil, nil))
}
