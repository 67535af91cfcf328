package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// flushCounter counts the flushes that reach the client.
type flushCounter struct {
	bytes.Buffer
	writes int
}

func (f *flushCounter) Write(p []byte) (int, error) {
	f.writes++
	return f.Buffer.Write(p)
}

func TestRelayEvents(t *testing.T) {
	t.Parallel()
	long := "data: " + strings.Repeat("x", 100<<10) + "\n\n"
	tests := []struct {
		name, in   string
		drop       string // events containing this are not forwarded
		want       string
		wantEvents int
	}{
		{"events one by one", "data: a\n\ndata: b\n\n", "", "data: a\n\ndata: b\n\n", 2},
		{"CRLF kept", "event: x\r\ndata: a\r\n\r\ndata: b\r\n\r\n", "", "event: x\r\ndata: a\r\n\r\ndata: b\r\n\r\n", 2},
		{"a line longer than the buffer", long + "data: end\n\n", "", long + "data: end\n\n", 2},
		{"last event without blank line", "data: a\n\ndata: tail", "", "data: a\n\ndata: tail", 2},
		{"dropped event", "data: a\n\ndata: usage\n\ndata: [DONE]\n\n", "usage", "data: a\n\ndata: [DONE]\n\n", 2},
		{"empty", "", "", "", 0},
	}
	for _, tt := range tests {
		// Without keep-alives, and with the upstream read on its own
		// goroutine (a keep-alive too long to fire here).
		for _, keepAlive := range []time.Duration{0, time.Hour} {
			t.Run(fmt.Sprintf("%s/keepAlive=%s", tt.name, keepAlive), func(t *testing.T) {
				t.Parallel()
				var out flushCounter
				w := bufio.NewWriterSize(&out, 1<<20) // only flushes reach out
				err := relayEvents(w, iotest.OneByteReader(strings.NewReader(tt.in)), func(ev []byte) bool {
					return tt.drop == "" || !bytes.Contains(ev, []byte(tt.drop))
				}, keepAlive)
				require.NoError(t, err)
				assert.Equal(t, tt.want, out.String())
				assert.Equal(t, tt.wantEvents, out.writes, "one flush per forwarded event")
			})
		}
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }

func TestRelayEventsErrors(t *testing.T) {
	t.Parallel()
	for _, keepAlive := range []time.Duration{0, time.Hour} {
		err := relayEvents(bufio.NewWriter(failingWriter{}), strings.NewReader("data: a\n\n"), func([]byte) bool { return true }, keepAlive)
		assert.ErrorIs(t, err, errClientGone)

		var out bytes.Buffer
		upstreamErr := errors.New("connection reset")
		err = relayEvents(bufio.NewWriter(&out), io.MultiReader(strings.NewReader("data: a\n\n"), iotest.ErrReader(upstreamErr)),
			func([]byte) bool { return true }, keepAlive)
		assert.ErrorIs(t, err, upstreamErr)
		assert.Equal(t, "data: a\n\n", out.String(), "events before the break are relayed")
	}
}

// notifyingWriter records what reaches the client and reports each write.
type notifyingWriter struct {
	mu     sync.Mutex
	b      bytes.Buffer
	fail   bool // writes fail: the client has gone
	writes chan string
}

func (n *notifyingWriter) Write(p []byte) (int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.fail {
		return 0, errors.New("broken pipe")
	}
	n.b.Write(p)
	select {
	case n.writes <- string(p):
	default:
	}
	return len(p), nil
}

func (n *notifyingWriter) gone() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.fail = true
}

// waitWrite waits for a write equal to want.
func (n *notifyingWriter) waitWrite(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(time.Minute)
	for {
		select {
		case got := <-n.writes:
			if got == want {
				return
			}
		case <-deadline:
			t.Fatalf("no write of %q reached the client", want)
		}
	}
}

// startRelay runs relayEvents, keeping every event and sending a
// keep-alive after 5ms of silence, from a pipe (its writer returned, closed
// at the end of the test) to a notifyingWriter; done gets relayEvents's
// result. The keep-alive tests share this setup.
func startRelay(t *testing.T) (upw *io.PipeWriter, out *notifyingWriter, done <-chan error) {
	up, upw := io.Pipe()
	t.Cleanup(func() { upw.Close() })
	out = &notifyingWriter{writes: make(chan string, 64)}
	result := make(chan error, 1)
	go func() {
		result <- relayEvents(bufio.NewWriter(out), up, func([]byte) bool { return true }, 5*time.Millisecond)
	}()
	return upw, out, result
}

// TestRelayEventsKeepAlive: while the upstream is silent the client gets
// comments, and the events around them unchanged.
func TestRelayEventsKeepAlive(t *testing.T) {
	t.Parallel()
	upw, out, done := startRelay(t)
	_, err := io.WriteString(upw, "data: a\n\n")
	require.NoError(t, err)
	out.waitWrite(t, "data: a\n\n")
	out.waitWrite(t, keepAliveComment)
	_, err = io.WriteString(upw, "data: b\n\n")
	require.NoError(t, err)
	require.NoError(t, upw.Close())
	require.NoError(t, <-done)
	got := out.b.String()
	assert.True(t, strings.HasPrefix(got, "data: a\n\n"+keepAliveComment), "%q", got)
	assert.True(t, strings.HasSuffix(got, keepAliveComment+"data: b\n\n"), "%q", got)
	assert.Equal(t, "data: a\n\ndata: b\n\n", strings.ReplaceAll(got, keepAliveComment, ""), "only comments are added")
}

// TestRelayEventsNoticesAGoneClientWhileTheUpstreamIsSilent: the relay
// ends with errClientGone though the upstream sends nothing more.
func TestRelayEventsNoticesAGoneClientWhileTheUpstreamIsSilent(t *testing.T) {
	t.Parallel()
	upw, out, done := startRelay(t)
	_, err := io.WriteString(upw, "data: a\n\n")
	require.NoError(t, err)
	out.waitWrite(t, "data: a\n\n")
	out.gone()
	select {
	case err := <-done:
		assert.ErrorIs(t, err, errClientGone)
	case <-time.After(time.Minute):
		t.Fatal("the relay did not notice that the client had gone")
	}
}

func TestEventFields(t *testing.T) {
	t.Parallel()
	name, data := eventFields([]byte("event: message_delta\r\ndata: {\"a\":\ndata: 1}\r\nid: 3\r\n\r\n"))
	assert.Equal(t, "message_delta", name)
	assert.Equal(t, "{\"a\":\n1}", string(data))
	name, data = eventFields([]byte(": keep-alive\n\n"))
	assert.Empty(t, name)
	assert.Nil(t, data)
}

func TestWithStreamUsage(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{`{"model":"m","stream":true}`, `{"model":"m","stream":true,"stream_options":{"include_usage":true}}`},
		{`{"model":"m","stream_options":{"include_usage":false,"x":1}}`, `{"model":"m","stream_options":{"include_usage":true,"x":1}}`},
		{`{"model":"m","stream_options":null}`, `{"model":"m","stream_options":{"include_usage":true}}`},
	}
	for _, tt := range tests {
		assert.JSONEq(t, tt.want, string(withStreamUsage([]byte(tt.in))), "withStreamUsage(%s)", tt.in)
	}
}

func TestOpenAIStreamUsage(t *testing.T) {
	t.Parallel()
	usageOnly := []byte(`data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10,` +
		`"prompt_tokens_details":{"cached_tokens":2},"cache_creation_input_tokens":4}}` + "\n\n")
	withChoice := []byte(`data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":3}}` + "\n\n")
	for _, drop := range []bool{false, true} {
		s := &openAIStream{dropUsageChunk: drop}
		assert.True(t, s.event([]byte(`data: {"choices":[{"delta":{"content":"x"}}],"usage":null}`+"\n\n")))
		_, seen := s.usage()
		assert.False(t, seen)
		assert.Equal(t, !drop, s.event(usageOnly), "forward the usage-only chunk (drop=%v)", drop)
		u, seen := s.usage()
		assert.True(t, seen)
		assert.Equal(t, Usage{InputTokens: 7, OutputTokens: 3, CacheReadTokens: 2, CacheWriteTokens: 4}, u)
		assert.True(t, s.event(withChoice), "a chunk with choices is always forwarded")
	}
}

func TestAnthropicStreamUsageFromDeltaInputCounts(t *testing.T) {
	t.Parallel()
	s := &anthropicStream{}
	s.event([]byte(`event: message_start` + "\n" + `data: {"type":"message_start","message":{"usage":{"input_tokens":5,"output_tokens":1}}}` + "\n\n"))
	// Newer API versions repeat cumulative input counts in message_delta.
	s.event([]byte(`data: {"type":"message_delta","delta":{},"usage":{"input_tokens":9,"cache_read_input_tokens":20,"output_tokens":30}}` + "\n\n"))
	u, seen := s.usage()
	assert.True(t, seen)
	assert.Equal(t, Usage{InputTokens: 29, OutputTokens: 30, CacheReadTokens: 20}, u)
}
