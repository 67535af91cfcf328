package harnessclient

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"lap.dev/lap/sandboxes/protocol"
	"lap.dev/lap/sandboxes/protocol/sse"
)

// Events is a subscription to a harness's GET /event. It is not safe for
// concurrent use; Close may be called from another goroutine to end a
// Next that waits.
type Events struct {
	body io.ReadCloser
	r    *sse.Reader
}

// Events subscribes to the harness's events and returns once the harness
// confirmed the subscription (server.connected), so no event of a turn
// started afterwards can be missed. The subscription ends with ctx or
// Close.
func (c *Client) Events(ctx context.Context, t Target) (*Events, error) {
	req, err := request(ctx, t, http.MethodGet, "/event", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := c.pooled.Do(req)
	if err != nil {
		return nil, fmt.Errorf("subscribe to harness events: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		err := statusOf(resp)
		if err == nil {
			err = &StatusError{Status: resp.StatusCode}
		}
		resp.Body.Close()
		return nil, fmt.Errorf("subscribe to harness events: %w", err)
	}
	es := &Events{body: resp.Body, r: sse.NewReader(resp.Body)}
	first, err := es.Next()
	if err != nil {
		es.Close()
		return nil, fmt.Errorf("subscribe to harness events: %w", err)
	}
	if first.Type != protocol.EventServerConnected {
		es.Close()
		return nil, fmt.Errorf("subscribe to harness events: first event is %q, want %q", first.Type, protocol.EventServerConnected)
	}
	return es, nil
}

// Next returns the next event (heartbeats included); io.EOF when the
// harness ended the stream, io.ErrUnexpectedEOF when it was cut within an
// event.
func (es *Events) Next() (protocol.Event, error) {
	var ev protocol.Event
	e, err := es.r.Next()
	if err != nil {
		return ev, err
	}
	if err := json.Unmarshal(e.Data, &ev); err != nil {
		return ev, fmt.Errorf("decode harness event: %w", err)
	}
	return ev, nil
}

// Close ends the subscription.
func (es *Events) Close() error { return es.body.Close() }
