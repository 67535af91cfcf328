package harness

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"lap.dev/lap/sandboxes/protocol"
	"lap.dev/lap/sandboxes/protocol/sse"
)

// subscriberBuffer is how many events a slow GET /event client may lag
// behind before it is cut off; a turn never waits for a subscriber.
const subscriberBuffer = 1024

// bus fans events out to every GET /event subscriber.
type bus struct {
	mu     sync.Mutex
	subs   map[*subscriber]struct{}
	closed bool
}

type subscriber struct {
	ch   chan protocol.Event
	gone chan struct{} // closed when the bus drops or closes it
}

func newBus() *bus { return &bus{subs: map[*subscriber]struct{}{}} }

// publish sends ev to every subscriber without blocking; one that cannot
// keep up is dropped (its stream ends and the client reconnects).
func (b *bus) publish(ev protocol.Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for sub := range b.subs {
		select {
		case sub.ch <- ev:
		default:
			delete(b.subs, sub)
			close(sub.gone)
		}
	}
}

// subscribe adds a subscriber; the returned func removes it.
func (b *bus) subscribe() (*subscriber, func()) {
	sub := &subscriber{ch: make(chan protocol.Event, subscriberBuffer), gone: make(chan struct{})}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		close(sub.gone)
		return sub, func() {}
	}
	b.subs[sub] = struct{}{}
	return sub, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if _, ok := b.subs[sub]; ok {
			delete(b.subs, sub)
			close(sub.gone)
		}
	}
}

// close ends every subscription and refuses new ones.
func (b *bus) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for sub := range b.subs {
		delete(b.subs, sub)
		close(sub.gone)
	}
}

// emit publishes an event of typ with props.
func (s *Server) emit(typ string, props protocol.EventProperties) {
	s.bus.publish(protocol.Event{Type: typ, Properties: props})
}

// serveEvents is GET /event: server.connected first, the workspace's
// progress while it is being prepared, then every event of every session
// and a server.heartbeat every HeartbeatInterval.
func (s *Server) serveEvents(w http.ResponseWriter, r *http.Request) {
	sub, unsubscribe := s.bus.subscribe()
	defer unsubscribe()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	sw := sse.NewWriter(w)
	write := func(ev protocol.Event) bool {
		b, err := json.Marshal(ev)
		if err != nil {
			s.log.Error("marshal event", "type", ev.Type, "err", err)
			return true
		}
		return sw.Event(sse.Event{Data: b}) == nil
	}
	if !write(protocol.Event{Type: protocol.EventServerConnected}) {
		return
	}
	if msg, preparing := s.ws.progress(); preparing && msg != "" {
		write(protocol.Event{Type: protocol.EventWorkspaceProgress, Properties: protocol.EventProperties{Message: msg}})
	}
	heartbeat := time.NewTicker(s.cfg.HeartbeatInterval)
	defer heartbeat.Stop()
	for {
		select {
		case ev := <-sub.ch:
			if !write(ev) {
				return
			}
		case <-heartbeat.C:
			if !write(protocol.Event{Type: protocol.EventServerHeartbeat}) {
				return
			}
		case <-sub.gone:
			// Deliver what was queued before the bus let go.
			for {
				select {
				case ev := <-sub.ch:
					if !write(ev) {
						return
					}
				default:
					return
				}
			}
		case <-r.Context().Done():
			return
		}
	}
}
