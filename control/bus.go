package control

import (
	"bufio"
	"encoding/json"
	"sync"

	"lap.dev/lap/sandboxes/protocol/sse"
)

// sseEvent is one server-sent event, its data already encoded once for
// every subscriber.
type sseEvent struct {
	name string
	data []byte
	// last ends the stream after this event (the session ended).
	last bool
}

func newEvent(name string, v any) sseEvent {
	data, err := json.Marshal(v)
	if err != nil {
		data, _ = json.Marshal(map[string]string{"error": err.Error()})
	}
	return sseEvent{name: name, data: data}
}

// writeSSE writes ev in the text/event-stream format and flushes it, so a
// gone client shows up as an error here: fasthttp does not cancel a
// request when its client disconnects. The event is encoded into w's
// free buffer, so writing it allocates nothing.
func writeSSE(w *bufio.Writer, ev sseEvent) error {
	b, err := sse.AppendEvent(w.AvailableBuffer(), sse.Event{Type: ev.name, Data: ev.data})
	if err != nil {
		return err
	}
	if _, err := w.Write(b); err != nil {
		return err
	}
	return w.Flush()
}

// writePing writes a keep-alive comment and flushes it.
func writePing(w *bufio.Writer) error {
	if _, err := w.Write(sse.AppendComment(w.AvailableBuffer(), "ping")); err != nil {
		return err
	}
	return w.Flush()
}

// bus fans a session's live events (status and phase changes, messages,
// harness events) out to its GET /events subscribers.
type bus struct {
	mu     sync.Mutex
	subs   map[string]map[*subscriber]struct{}
	closed bool
}

// subscriber receives one session's events. ch is closed when the bus
// closes or when the subscriber falls too far behind (it then misses
// events, so it is better told by the end of its stream).
type subscriber struct {
	ch chan sseEvent
}

const subscriberBuffer = 256

func newBus() *bus { return &bus{subs: map[string]map[*subscriber]struct{}{}} }

// subscribe registers a subscriber for sessionID. After close it returns a
// subscriber whose channel is already closed.
func (b *bus) subscribe(sessionID string) *subscriber {
	sub := &subscriber{ch: make(chan sseEvent, subscriberBuffer)}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		close(sub.ch)
		return sub
	}
	if b.subs[sessionID] == nil {
		b.subs[sessionID] = map[*subscriber]struct{}{}
	}
	b.subs[sessionID][sub] = struct{}{}
	return sub
}

// unsubscribe removes sub; its channel is closed if it was not already.
func (b *bus) unsubscribe(sessionID string, sub *subscriber) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.subs[sessionID][sub]; ok {
		delete(b.subs[sessionID], sub)
		if len(b.subs[sessionID]) == 0 {
			delete(b.subs, sessionID)
		}
		close(sub.ch)
	}
}

// has reports whether anyone listens to sessionID, so publishers can skip
// building events nobody reads.
func (b *bus) has(sessionID string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.subs[sessionID]) > 0
}

// publish sends ev to sessionID's subscribers without blocking.
func (b *bus) publish(sessionID string, ev sseEvent) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for sub := range b.subs[sessionID] {
		select {
		case sub.ch <- ev:
		default:
			delete(b.subs[sessionID], sub)
			close(sub.ch)
		}
	}
	if len(b.subs[sessionID]) == 0 {
		delete(b.subs, sessionID)
	}
}

// close ends every subscription (at shutdown) and refuses new ones.
func (b *bus) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for id, subs := range b.subs {
		for sub := range subs {
			close(sub.ch)
		}
		delete(b.subs, id)
	}
}
