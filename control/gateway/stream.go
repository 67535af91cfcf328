package gateway

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/tidwall/gjson"

	"lap.dev/lap/sandboxes/protocol/sse"
)

// errClientGone reports that the client stopped reading the stream.
var errClientGone = errors.New("client went away")

// keepAliveComment is what relayEvents writes to a client while the
// upstream is silent: an SSE comment, which every SSE parser skips.
const keepAliveComment = ": keep-alive\n\n"

// relayEvents copies server-sent events from r to w one event at a time,
// byte for byte as the upstream sent them, flushing after each so the
// client sees it at once; keep decides which to forward. It returns
// errClientGone if writing to the client fails, or the error that ended
// reading r (nil at a clean EOF).
//
// Writing is the only way to learn that a client has gone (fasthttp does
// not report a closed connection), so with keepAlive > 0 a comment is
// written whenever the upstream has been silent that long: the write
// fails once the client's end is closed, and the caller cancels an
// upstream call that would otherwise run on for nobody until
// LAP_LLM_TIMEOUT — holding a connection, and lapd's shutdown, with it.
func relayEvents(w *bufio.Writer, r io.Reader, keep func(ev []byte) bool, keepAlive time.Duration) error {
	sw := sse.NewWriter(w)
	forward := func(ev []byte) error {
		if !keep(ev) {
			return nil
		}
		if sw.Raw(ev) != nil {
			return errClientGone
		}
		return nil
	}
	if keepAlive <= 0 {
		return splitEvents(r, forward)
	}

	// The upstream is read on its own goroutine so that its silence can
	// be timed; events are handed over one by one, in order.
	type read struct {
		ev   []byte
		err  error
		done bool
	}
	reads := make(chan read, 16)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		err := splitEvents(r, func(ev []byte) error {
			select {
			case reads <- read{ev: bytes.Clone(ev)}:
				return nil
			case <-stop:
				return errClientGone
			}
		})
		select {
		case reads <- read{err: err, done: true}:
		case <-stop:
		}
	}()
	timer := time.NewTimer(keepAlive)
	defer timer.Stop()
	for {
		select {
		case rd := <-reads:
			if rd.done {
				return rd.err
			}
			if err := forward(rd.ev); err != nil {
				return err
			}
		case <-timer.C:
			if sw.Comment("keep-alive") != nil { // writes keepAliveComment
				return errClientGone
			}
		}
		timer.Reset(keepAlive)
	}
}

// splitEvents reads server-sent events from r and calls emit with each
// one's exact bytes (see sse.Reader.NextFrame), valid only during the
// call; a last event without its blank line is emitted at the end. It
// returns emit's first error, or the error that ended reading r (nil at a
// clean EOF). Events are not bounded in size: the upstream is trusted.
func splitEvents(r io.Reader, emit func(ev []byte) error) error {
	sr := sse.NewReader(r)
	sr.SetMaxEventSize(0)
	for {
		ev, err := sr.NextFrame()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := emit(ev); err != nil {
			return err
		}
	}
}

// eventFields returns an event's name (its "event:" line, "" if none) and
// its data (the "data:" lines, joined by newlines as the SSE spec says);
// both empty for an event without data, such as a comment.
func eventFields(ev []byte) (name string, data []byte) {
	e, ok := sse.ParseFrame(ev)
	if !ok {
		return "", nil
	}
	if e.Type == "message" { // the spec's name for an unnamed event
		e.Type = ""
	}
	return e.Type, e.Data
}

// openAIStream reads usage from the chunk that carries it (the last one,
// when stream_options.include_usage is set) and drops the usage-only
// chunk if the gateway asked for it on the client's behalf.
type openAIStream struct {
	dropUsageChunk bool
	u              Usage
	seen           bool
}

func (s *openAIStream) event(ev []byte) bool {
	_, data := eventFields(ev)
	// Most chunks carry "usage":null or no usage at all: skip parsing them.
	if !bytes.Contains(data, []byte(`"usage"`)) {
		return true
	}
	u := gjson.GetBytes(data, "usage")
	usage, ok := openAIUsage(u)
	if !ok {
		return true
	}
	s.u, s.seen = usage, true
	choices := gjson.GetBytes(data, "choices")
	return !(s.dropUsageChunk && (!choices.Exists() || (choices.IsArray() && len(choices.Array()) == 0)))
}

func (s *openAIStream) usage() (Usage, bool) { return s.u, s.seen }

// anthropicStream reads usage from message_start (input and cache
// counters) and message_delta (cumulative output, and input counters when
// the upstream sends them there).
type anthropicStream struct {
	input, cacheWrite, cacheRead, output int64
	seen                                 bool
}

func (s *anthropicStream) event(ev []byte) bool {
	name, data := eventFields(ev)
	if name == "" && len(data) > 0 {
		name = gjson.GetBytes(data, "type").Str
	}
	switch name {
	case "message_start":
		var start struct {
			Message struct {
				Usage anthropic.Usage `json:"usage"`
			} `json:"message"`
		}
		if json.Unmarshal(data, &start) == nil {
			u := start.Message.Usage
			s.input, s.cacheWrite, s.cacheRead, s.output = u.InputTokens, u.CacheCreationInputTokens, u.CacheReadInputTokens, u.OutputTokens
			s.seen = true
		}
	case "message_delta":
		var delta struct {
			Usage anthropic.MessageDeltaUsage `json:"usage"`
		}
		if json.Unmarshal(data, &delta) == nil {
			u := delta.Usage
			if u.JSON.OutputTokens.Valid() {
				s.output = u.OutputTokens
			}
			if u.JSON.InputTokens.Valid() && u.InputTokens > 0 {
				s.input = u.InputTokens
			}
			if u.JSON.CacheCreationInputTokens.Valid() && u.CacheCreationInputTokens > 0 {
				s.cacheWrite = u.CacheCreationInputTokens
			}
			if u.JSON.CacheReadInputTokens.Valid() && u.CacheReadInputTokens > 0 {
				s.cacheRead = u.CacheReadInputTokens
			}
			s.seen = true
		}
	}
	return true
}

func (s *anthropicStream) usage() (Usage, bool) {
	return anthropicUsage(s.input, s.cacheWrite, s.cacheRead, s.output), s.seen
}

// responsesStream reads usage from the event that ends a Responses
// stream: response.completed, or response.incomplete (output cut at
// max_output_tokens) or response.failed, which carry it too once tokens
// were spent. Other events are not parsed.
type responsesStream struct {
	u    Usage
	seen bool
}

func (s *responsesStream) event(ev []byte) bool {
	name, data := eventFields(ev)
	if name == "" && len(data) > 0 {
		name = gjson.GetBytes(data, "type").Str
	}
	switch name {
	case "response.completed", "response.incomplete", "response.failed":
		if u, ok := responsesUsage(gjson.GetBytes(data, "response.usage")); ok {
			s.u, s.seen = u, true
		}
	}
	return true
}

func (s *responsesStream) usage() (Usage, bool) { return s.u, s.seen }
