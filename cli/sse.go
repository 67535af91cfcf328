package cli

import (
	"bytes"
	"io"

	"lap.dev/lap/sandboxes/protocol/sse"
)

// sseEvent is one server-sent event: its name (`event:`, "message" when
// absent, as the SSE spec says) and its data lines joined by "\n".
type sseEvent struct {
	Name string
	Data []byte
}

// sseStream reads server-sent events from a response body.
type sseStream struct {
	body io.ReadCloser
	r    *sse.Reader
}

func newSSEStream(body io.ReadCloser) *sseStream {
	return &sseStream{body: body, r: sse.NewReader(body)}
}

// Next returns the next event. Comments (keep-alive pings) are skipped. It
// returns io.EOF when the server ended the stream cleanly between events,
// io.ErrUnexpectedEOF when it ended within one.
func (s *sseStream) Next() (sseEvent, error) {
	ev, err := s.r.Next()
	if err != nil {
		return sseEvent{}, err
	}
	// A copy: callers keep events past the next one.
	return sseEvent{Name: ev.Type, Data: bytes.Clone(ev.Data)}, nil
}

// Close ends the stream.
func (s *sseStream) Close() error { return s.body.Close() }
