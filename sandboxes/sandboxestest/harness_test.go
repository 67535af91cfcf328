package sandboxestest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/harnessclient"
	"lap.dev/lap/sandboxes/protocol"
)

type client struct {
	t     *testing.T
	url   string
	token string
}

func (c client) do(method, path string, body any) (int, []byte) {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(c.t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.url+path, rd)
	require.NoError(c.t, err)
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(c.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(c.t, err)
	return resp.StatusCode, b
}

func (c client) session(history ...protocol.Message) string {
	c.t.Helper()
	status, body := c.do(http.MethodPost, "/session", protocol.CreateSessionRequest{Title: "t", History: history})
	require.Equal(c.t, http.StatusOK, status, "%s", body)
	var info protocol.SessionInfo
	require.NoError(c.t, json.Unmarshal(body, &info))
	return info.ID
}

func (c client) send(sid, text string) (int, protocol.Message) {
	c.t.Helper()
	status, body := c.do(http.MethodPost, "/session/"+sid+"/message", protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: text}}})
	var m protocol.Message
	if status == http.StatusOK {
		require.NoError(c.t, json.Unmarshal(body, &m))
	}
	return status, m
}

// subscribe opens GET /event and returns the events as they come, after
// server.connected.
func (c client) subscribe(ctx context.Context) <-chan protocol.Event {
	c.t.Helper()
	es, err := harnessclient.New().Events(ctx, harnessclient.Target{Endpoint: sandboxes.Endpoint{URL: c.url}, Token: c.token})
	require.NoError(c.t, err, "the first event says the subscriber is attached")
	ch := make(chan protocol.Event, 100)
	go func() {
		defer es.Close()
		defer close(ch)
		for {
			ev, err := es.Next()
			if err != nil {
				return
			}
			ch <- ev
		}
	}()
	return ch
}

// until collects events up to and including session.idle of sid.
func until(t *testing.T, ch <-chan protocol.Event, sid string) []string {
	t.Helper()
	var types []string
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev := <-ch:
			if ev.Properties.SessionID != sid {
				continue
			}
			types = append(types, ev.Type)
			if ev.Type == protocol.EventSessionIdle {
				return types
			}
		case <-deadline:
			t.Fatalf("no session.idle; saw %v", types)
		}
	}
}

func newHarness(t *testing.T) client {
	h := NewHarness("secret", map[string]string{"GREETING": "hello"})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return client{t: t, url: srv.URL, token: "secret"}
}

func TestHarnessScript(t *testing.T) {
	t.Parallel()
	tests := []struct {
		text      string
		wantText  string
		wantError string
		wantTool  bool
		events    []string
	}{
		{"hi there", "echo: hi there", "", false,
			[]string{"message.updated", "message.part.updated", "message.part.updated", "message.updated", "session.idle"}},
		{"/fail", "", "APIError", false,
			[]string{"message.updated", "session.error", "session.idle"}},
		{"/tool", "I see README.md and go.mod.", "", true,
			[]string{"message.updated", "message.part.updated", "message.part.updated", "message.part.updated", "message.part.updated", "message.part.updated", "message.updated", "session.idle"}},
		{"/env GREETING", "hello", "", false,
			[]string{"message.updated", "message.part.updated", "message.part.updated", "message.updated", "session.idle"}},
		{"/slow 1ms", "echo: /slow 1ms", "", false,
			[]string{"message.updated", "message.part.updated", "message.part.updated", "message.updated", "session.idle"}},
	}
	for _, tt := range tests {
		t.Run(tt.text, func(t *testing.T) {
			t.Parallel()
			c := newHarness(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			events := c.subscribe(ctx)
			sid := c.session()
			status, m := c.send(sid, tt.text)
			require.Equal(t, http.StatusOK, status)
			assert.Equal(t, tt.wantText, m.Text())
			assert.Equal(t, protocol.RoleAssistant, m.Info.Role)
			assert.NotZero(t, m.Info.Time.Completed)
			if tt.wantError != "" {
				require.NotNil(t, m.Info.Error)
				assert.Equal(t, tt.wantError, m.Info.Error.Name)
			} else {
				assert.Nil(t, m.Info.Error)
			}
			if tt.wantTool {
				require.Equal(t, protocol.PartTool, m.Parts[0].Type)
				assert.Equal(t, protocol.ToolCompleted, m.Parts[0].State.Status)
			}
			assert.Equal(t, tt.events, until(t, events, sid))

			status, body := c.do(http.MethodGet, "/session/"+sid+"/message", nil)
			require.Equal(t, http.StatusOK, status)
			var log []protocol.Message
			require.NoError(t, json.Unmarshal(body, &log))
			require.Len(t, log, 2)
			assert.Equal(t, tt.text, log[0].Text())
		})
	}
}

func TestHarnessAbortAndBusy(t *testing.T) {
	t.Parallel()
	c := newHarness(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := c.subscribe(ctx)
	sid := c.session()

	done := make(chan protocol.Message)
	go func() {
		_, m := c.send(sid, "/block")
		done <- m
	}()
	// The turn has started once its first event arrives.
	for ev := range events {
		if ev.Type == protocol.EventMessageUpdated {
			break
		}
	}
	status, _ := c.send(sid, "second")
	assert.Equal(t, http.StatusConflict, status, "a second concurrent turn is refused")

	status, body := c.do(http.MethodPost, "/session/"+sid+"/abort", nil)
	require.Equal(t, http.StatusOK, status)
	assert.Equal(t, "true", strings.TrimSpace(string(body)))
	m := <-done
	require.NotNil(t, m.Info.Error)
	assert.Equal(t, "Aborted", m.Info.Error.Name)

	status, m = c.send(sid, "after")
	require.Equal(t, http.StatusOK, status)
	assert.Equal(t, "echo: after", m.Text())
}

func TestHarnessHistoryAndAuth(t *testing.T) {
	t.Parallel()
	c := newHarness(t)
	sid := c.session(
		protocol.Message{Info: protocol.MessageInfo{Role: "user"}, Parts: []protocol.Part{{Type: "text", Text: "first"}}},
		protocol.Message{Info: protocol.MessageInfo{Role: "assistant"}, Parts: []protocol.Part{{Type: "text", Text: "echo: first"}}},
	)
	_, m := c.send(sid, "/history")
	assert.Equal(t, "history: 2 messages; last: echo: first", m.Text())

	status, _ := c.send("ses_missing", "hi")
	assert.Equal(t, http.StatusNotFound, status)

	bad := c
	bad.token = "wrong"
	status, _ = bad.do(http.MethodGet, "/session", nil)
	assert.Equal(t, http.StatusUnauthorized, status)
	resp, err := http.Get(c.url + "/")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode, "GET / needs no token")
}

func TestCrashKillsSandboxAndResumeRestoresIt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := New(Options{})
	t.Cleanup(b.Close)
	sb, err := b.Provision(ctx, sandboxes.Spec{ID: "sb-1", Agent: sandboxes.AgentSpec{ID: "a"}, Env: map[string]string{"HARNESS_AUTH_TOKEN": "tok"}})
	require.NoError(t, err)
	c := client{t: t, url: sb.Endpoint.URL, token: "tok"}
	sid := c.session()

	req, err := http.NewRequest(http.MethodPost, c.url+"/session/"+sid+"/message", strings.NewReader(`{"parts":[{"type":"text","text":"/crash"}]}`))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer tok")
	_, err = http.DefaultClient.Do(req)
	require.Error(t, err, "a crash drops the connection")
	assert.Empty(t, b.Running())

	sb, err = b.Resume(ctx, sb)
	require.NoError(t, err)
	c.url = sb.Endpoint.URL
	status, m := c.send(sid, "back")
	require.Equal(t, http.StatusOK, status, "the session survives the crash")
	assert.Equal(t, "echo: back", m.Text())

	require.NoError(t, b.Forget(sb.ID))
	_, err = b.Resume(ctx, sb)
	require.ErrorIs(t, err, sandboxes.ErrGone)
}
