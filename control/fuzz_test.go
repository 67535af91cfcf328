package control

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"lap.dev/lap/control/api"
	"lap.dev/lap/sandboxes/sandboxestest"
)

// Fuzz targets for every JSON body the API accepts, run against the real
// Fiber app served in-process on loopback (App().Test cannot show what a
// client gets when fasthttp refuses a request before the app sees it), over
// a real store and the test backend. Whatever the body, lapd must answer — no panic (the
// recover middleware would make it a 500) — with a status below 500 and,
// for an error, the ARCHITECTURE §4 error shape. `make test` runs each for
// a bounded time (go test -fuzz); plain `go test` runs the seeds.

// bodySeeds are inputs every body target starts from: valid and broken
// JSON of many shapes.
var bodySeeds = []string{
	``,
	`{}`,
	`null`,
	`[]`,
	`"text"`,
	`12`,
	`{"name": 1}`,
	`{"name": null, "model": null}`,
	`{"unknown": true}`,
	`{"text": "hi"} {"text": "again"}`,
	`{"text": "hi"`,
	`{"text": "\ud800"}`,
	`{"text": "` + strings.Repeat("a", 4096) + `"}`,
	`{"parts": [{"type": "text", "text": "hi"}, {"type": "file"}]}`,
	`{"parts": null, "text": ""}`,
	`{"env_vars": {"": "x", "PATH": "y", "A": 1}}`,
	`{"warm_pool_size": -1, "max_budget_usd": -0.5}`,
	`{"warm_pool_size": 1e400}`,
	`{"name": "a", "name": "b"}`,
	`{"title": "` + strings.Repeat("é", 600) + `"}`,
	`{"repo_url": "javascript:alert(1)", "branch": "../../etc"}`,
	`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]`,
	"{\"name\": \"nul\x00byte\"}",
	"\xff\xfe{}",
}

// fuzzEnv is one control plane shared by a fuzz target's inputs, with
// an agent and a ready session to aim at.
type fuzzEnv struct {
	*env
	agent   api.Agent
	session api.Session
}

func newFuzzEnv(f *testing.F) *fuzzEnv {
	// Echo only: the test harness takes text such as "/block" as a
	// command of its script, and lapd must take any text.
	e := newEnv(f, envOptions{backend: sandboxestest.Options{EchoOnly: true}})
	fe := &fuzzEnv{env: e, agent: e.createAgent("fuzz-target", nil)}
	fe.session = e.readySession("fuzz-target")
	return fe
}

// call sends one request to the app and checks the answer: no 5xx, and an
// error body in the §4 shape.
func (fe *fuzzEnv) call(t *testing.T, method, path, contentType string, body []byte) (int, []byte) {
	req, err := http.NewRequest(method, fe.url+api.BasePath+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testKey)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := fe.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s %q: %v", method, path, body, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s %q: read answer: %v", method, path, body, err)
	}
	if resp.StatusCode >= 500 {
		t.Fatalf("%s %s %q = %d %s, want a status below 500", method, path, body, resp.StatusCode, out)
	}
	if resp.StatusCode >= 400 {
		var eb api.ErrorBody
		if err := json.Unmarshal(out, &eb); err != nil || eb.Error.Code == "" || eb.Error.Message == "" {
			t.Fatalf("%s %s %q = %d %s, want {\"error\":{\"code\",\"message\"}}", method, path, body, resp.StatusCode, out)
		}
	}
	return resp.StatusCode, out
}

func addSeeds(f *testing.F, valid ...string) {
	for _, s := range append(valid, bodySeeds...) {
		f.Add([]byte(s))
	}
}

// FuzzCreateAgent: POST /agents. Agents it creates are deleted again.
func FuzzCreateAgent(f *testing.F) {
	fe := newFuzzEnv(f)
	addSeeds(f,
		`{"name": "my-sdk-agent", "harness_id": "claude-agent-sdk", "model": "anthropic/claude-sonnet-4-5", "prompt": "You are a helpful assistant.", "repo_url": "https://github.com/your-org/your-repo"}`,
		`{"name": "x", "model": "m", "env_vars": {"TOKEN": "s3cret"}, "warm_pool_size": 0, "max_budget_usd": 1.5, "branch": "dev"}`,
		`{"name": "Bad_Name", "harness_id": "nope"}`,
	)
	f.Fuzz(func(t *testing.T, body []byte) {
		status, out := fe.call(t, http.MethodPost, "/agents", "application/json", body)
		if status == http.StatusCreated {
			var a api.Agent
			if err := json.Unmarshal(out, &a); err != nil || a.ID == "" {
				t.Fatalf("201 without an agent: %s", out)
			}
			fe.call(t, http.MethodDelete, "/agents/"+a.ID, "", nil)
		}
	})
}

// FuzzUpdateAgent: PATCH /agents/:id of an existing agent.
func FuzzUpdateAgent(f *testing.F) {
	fe := newFuzzEnv(f)
	addSeeds(f,
		`{"prompt": "Be brief."}`,
		`{"model": "mock/echo", "env_vars": {"A": "b"}, "warm_pool_size": 0}`,
		`{"name": "fuzz-target", "branch": "main", "max_budget_usd": 0}`,
		`{"env_vars": null}`,
		`{"harness_id": "opencode"}`,
	)
	f.Fuzz(func(t *testing.T, body []byte) {
		fe.call(t, http.MethodPatch, "/agents/"+fe.agent.ID, "application/json", body)
	})
}

// FuzzCreateSession: POST /agents/:id/session. Sessions it opens are
// deleted again, so their sandboxes do not pile up.
func FuzzCreateSession(f *testing.F) {
	fe := newFuzzEnv(f)
	addSeeds(f, `{"title": "t"}`, `{"title": "t", "initial_prompt": "hello", "max_budget_usd": 2}`, `{"initial_prompt": "/block"}`)
	f.Fuzz(func(t *testing.T, body []byte) {
		status, out := fe.call(t, http.MethodPost, "/agents/"+fe.agent.ID+"/session", "application/json", body)
		if status == http.StatusCreated {
			var s api.Session
			if err := json.Unmarshal(out, &s); err != nil || s.ID == "" {
				t.Fatalf("201 without a session: %s", out)
			}
			fe.call(t, http.MethodDelete, "/sessions/"+s.ID, "", nil)
		}
	})
}

// FuzzSendMessage: POST /sessions/:id/message and /message_stream (the
// same body), on a ready session of the scripted test harness.
func FuzzSendMessage(f *testing.F) {
	fe := newFuzzEnv(f)
	for _, stream := range []bool{false, true} {
		for _, s := range append([]string{`{"text": "hello"}`, `{"parts": [{"type": "text", "text": "hi"}], "model": "mock/echo"}`,
			`{"text": "hi", "model": "a b"}`, `{"text": "/block"}`}, bodySeeds...) {
			f.Add(stream, []byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, stream bool, body []byte) {
		path := "/sessions/" + fe.session.ID + "/message"
		if stream {
			path += "_stream"
		}
		fe.call(t, http.MethodPost, path, "application/json", body)
	})
}

// FuzzContentType: any body under any Content-Type on the agent create
// route: 415 for what is not JSON, never a 5xx.
func FuzzContentType(f *testing.F) {
	fe := newFuzzEnv(f)
	for _, ct := range []string{"application/json", "application/json; charset=utf-8", "text/plain", "", "application/json;;", "multipart/form-data; boundary=x", "APPLICATION/JSON"} {
		f.Add(ct, []byte(`{"name": "ct-agent", "model": "m"}`))
	}
	f.Fuzz(func(t *testing.T, contentType string, body []byte) {
		if strings.ContainsFunc(contentType, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }) {
			return // no HTTP client can send it
		}
		status, out := fe.call(t, http.MethodPost, "/agents", contentType, body)
		if status == http.StatusCreated {
			var a api.Agent
			if err := json.Unmarshal(out, &a); err == nil && a.ID != "" {
				fe.call(t, http.MethodDelete, "/agents/"+a.ID, "", nil)
			}
		}
	})
}
