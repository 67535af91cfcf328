package gateway_test

import (
	"bufio"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/tidwall/gjson"

	"lap.dev/lap/control/gateway"
)

// streamUpstream answers with a stream in two parts: first, then — once
// the test has closed release, i.e. once the client has seen first
// through the gateway — rest. A gateway that buffered the answer would
// never let the client see first, and the test would fail.
func streamUpstream(t *testing.T, release <-chan struct{}, first string, rest ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Request-Id", "req-stream-1")
		writeEvents(w, first)
		select {
		case <-release:
		case <-r.Context().Done():
			return
		case <-time.After(time.Minute):
			t.Error("the client never saw the first event: the gateway buffers streams")
			return
		}
		writeEvents(w, rest...)
	}
}

func TestStreamOpenAI(t *testing.T) {
	t.Parallel()
	const (
		first = `data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}],"usage":null}` + "\n\n"
		last  = `data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}],"usage":null}` + "\n\n"
		usage = `data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}` + "\n\n"
		done  = "data: [DONE]\n\n"
	)
	tests := []struct {
		name, body string
		want       string // what the client gets after the first event
	}{
		{"client did not ask for usage",
			`{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}`,
			last + done},
		{"client asked for usage",
			`{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`,
			last + usage + done},
		{"client said no to usage",
			`{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":false,"include_obfuscation":false},"messages":[]}`,
			last + done},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			release := make(chan struct{})
			up := newFakeUpstream(t, streamUpstream(t, release, first, last, usage, done))
			e := newEnv(t, up.URL)
			resp := e.post(t, "/v1/chat/completions", tt.body, "Authorization", "Bearer "+e.token)
			defer resp.Body.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
			assert.Equal(t, "req-stream-1", resp.Header.Get("Request-Id"))

			br := bufio.NewReader(resp.Body)
			assert.Equal(t, first, readEvent(t, br))
			close(release)
			rest, err := io.ReadAll(br)
			require.NoError(t, err)
			assert.Equal(t, tt.want, string(rest))

			got := up.Requests()[0]
			assert.Equal(t, "Bearer "+secret, got.Header.Get("Authorization"))
			assert.True(t, gjson.GetBytes(got.Body, "stream_options.include_usage").Bool(),
				"the gateway asks for usage: %s", got.Body)
			assert.Equal(t, gjson.Get(tt.body, "messages").Raw, gjson.GetBytes(got.Body, "messages").Raw)
			if so := gjson.Get(tt.body, "stream_options.include_obfuscation"); so.Exists() {
				assert.Equal(t, so.Raw, gjson.GetBytes(got.Body, "stream_options.include_obfuscation").Raw,
					"other stream options are kept")
			}

			recs := e.store.waitRecords(t, 1)
			assert.Equal(t, gateway.Usage{InputTokens: 10, OutputTokens: 5, CostUSD: recs[0].Usage.CostUSD}, recs[0].Usage)
			assert.InDelta(t, 10*2.5e-6+5*10e-6, recs[0].Usage.CostUSD, 1e-12)
		})
	}
}

func TestStreamAnthropic(t *testing.T) {
	t.Parallel()
	first := "event: message_start\r\n" +
		`data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-haiku-4-5-20251001","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":100,"output_tokens":1}}}` + "\r\n\r\n"
	rest := []string{
		"event: ping\ndata: {\"type\": \"ping\"}\n\n",
		"event: content_block_start\n" + `data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}` + "\n\n",
		"event: content_block_delta\n" + `data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}` + "\n\n",
		"event: content_block_stop\n" + `data: {"type":"content_block_stop","index":0}` + "\n\n",
		"event: message_delta\n" + `data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":12}}` + "\n\n",
		"event: message_stop\n" + `data: {"type":"message_stop"}` + "\n\n",
	}
	release := make(chan struct{})
	up := newFakeUpstream(t, streamUpstream(t, release, first, rest...))
	e := newEnv(t, up.URL)
	resp := e.post(t, "/v1/messages",
		`{"model":"claude-haiku-4-5","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"hi"}]}`,
		"X-Api-Key", e.token, "Anthropic-Version", "2023-06-01")
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	br := bufio.NewReader(resp.Body)
	assert.Equal(t, first, readEvent(t, br))
	close(release)
	got, err := io.ReadAll(br)
	require.NoError(t, err)
	want := ""
	for _, ev := range rest {
		want += ev
	}
	assert.Equal(t, want, string(got), "events are relayed byte for byte")
	assert.Equal(t, secret, up.Requests()[0].Header.Get("X-Api-Key"))

	recs := e.store.waitRecords(t, 1)
	assert.Equal(t, "claude-haiku-4-5", recs[0].Model)
	assert.Equal(t, gateway.Usage{InputTokens: 125, OutputTokens: 12, CacheReadTokens: 100, CostUSD: recs[0].Usage.CostUSD},
		recs[0].Usage)
	assert.InDelta(t, 25*1e-6+100*0.1e-6+12*5e-6, recs[0].Usage.CostUSD, 1e-12)
}

// TestStreamClientDisconnectCancelsUpstream: an upstream that keeps
// generating sees its request cancelled once the client has gone.
func TestStreamClientDisconnectCancelsUpstream(t *testing.T) {
	t.Parallel()
	events := map[string]string{
		"openai":    `data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"token "},"finish_reason":null}]}` + "\n\n",
		"anthropic": "event: content_block_delta\n" + `data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"token "}}` + "\n\n",
		"responses": "event: response.output_text.delta\n" + `data: {"type":"response.output_text.delta","sequence_number":1,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"token "}` + "\n\n",
	}
	for _, d := range dialects {
		t.Run(d.name, func(t *testing.T) {
			t.Parallel()
			cancelled := make(chan bool, 1)
			up := newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				// Bounded: generating this many tokens without the
				// gateway cancelling fails the test.
				for range 1_000_000 {
					if _, err := io.WriteString(w, events[d.name]); err != nil {
						break
					}
					w.(http.Flusher).Flush()
					if r.Context().Err() != nil {
						break
					}
				}
				<-r.Context().Done()
				cancelled <- true
			})
			e := newEnv(t, up.URL)
			body := `{"model":"gpt-4o","stream":true,"max_tokens":64,"messages":[]}`
			resp := e.post(t, d.path, body, d.keyHeader, d.key(e.token))
			require.Equal(t, http.StatusOK, resp.StatusCode)
			readEvent(t, bufio.NewReader(resp.Body))
			require.NoError(t, resp.Body.Close())

			select {
			case <-cancelled:
			case <-time.After(time.Minute):
				t.Fatal("the upstream request was not cancelled after the client went away")
			}
			e.store.waitRecords(t, 1) // what was reported before the cut is still recorded
		})
	}
}

// TestStreamClientDisconnectCancelsSilentUpstream: an upstream that has
// gone quiet in the middle of a stream (a model thinking, a stalled
// provider) sees its request cancelled once the client has gone — the
// gateway's keep-alive comments find out — and a client that stays reads
// the comments between the events and the rest of the answer.
func TestStreamClientDisconnectCancelsSilentUpstream(t *testing.T) {
	t.Parallel()
	const first = `data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"token "},"finish_reason":null}]}` + "\n\n"
	const last = "data: [DONE]\n\n"
	for _, stay := range []bool{false, true} {
		t.Run(map[bool]string{false: "client leaves", true: "client stays"}[stay], func(t *testing.T) {
			t.Parallel()
			cancelled := make(chan bool, 1)
			release, ended := make(chan struct{}), make(chan struct{})
			up := newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				writeEvents(w, first)
				select {
				case <-r.Context().Done():
					cancelled <- true
				case <-release:
					writeEvents(w, last)
				case <-ended: // the test failed: let the server close
				}
			})
			t.Cleanup(func() { close(ended) })
			e := newEnv(t, up.URL, func(o *gateway.Options) { o.KeepAlive = 10 * time.Millisecond })
			resp := e.post(t, "/v1/chat/completions", `{"model":"gpt-4o","stream":true,"messages":[]}`, "Authorization", "Bearer "+e.token)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			br := bufio.NewReader(resp.Body)
			assert.Equal(t, first, readEvent(t, br))
			if !stay {
				require.NoError(t, resp.Body.Close())
				select {
				case <-cancelled:
				case <-time.After(time.Minute):
					t.Fatal("the silent upstream's request was not cancelled after the client went away")
				}
				return
			}
			assert.Equal(t, ": keep-alive\n\n", readEvent(t, br), "a comment while the upstream is silent")
			close(release)
			rest, err := io.ReadAll(br)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Regexp(t, `^(: keep-alive\n\n)*data: \[DONE\]\n\n$`, string(rest))
		})
	}
}
