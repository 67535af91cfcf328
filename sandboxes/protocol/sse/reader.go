// Package sse reads and writes server-sent events, the text/event-stream
// format of the WHATWG HTML standard ("Server-sent events"). Every SSE
// stream of lap goes through it: a harness's GET /event (written by the
// harness, read by lapd), lapd's message_stream and events endpoints
// (written by lapd, read by the CLI and tests), and the LLM gateway's relay
// of an upstream's stream.
//
// The Reader parses as the standard's event-stream interpretation does:
// lines end with CRLF, LF or CR; a leading byte order mark is skipped;
// comments (lines starting with ':') are ignored; "data" lines are joined
// with "\n"; "id" sets the last event id, which later events keep; "retry"
// sets the reconnection time; an event is dispatched at a blank line only
// if it has data, and one cut off by the end of the stream is not.
//
// Like its parent package it depends on nothing but the standard library,
// so every part of lap can use it.
package sse

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"
)

// Event is one server-sent event.
type Event struct {
	// Type is the "event" field; "message" when the event had none, as the
	// standard says. A Writer omits the field when Type is "".
	Type string
	// Data is the event's "data" lines joined with "\n". From a Reader it
	// is valid until the next call on that Reader.
	Data []byte
	// ID is the stream's last event id when the event was dispatched: its
	// own "id" field or the latest earlier one. A Writer omits it when "".
	ID string
}

// DefaultMaxEventSize bounds the bytes of one event a Reader buffers, so a
// broken server cannot make its client buffer without end; a whole tool
// output fits easily.
const DefaultMaxEventSize = 16 << 20

// ErrTooLarge is returned by a Reader for an event or frame longer than its
// maximum size.
var ErrTooLarge = errors.New("server-sent event too large")

// bom is the UTF-8 byte order mark a stream may start with.
var bom = []byte{0xEF, 0xBB, 0xBF}

// initialBuffer is a Reader's first buffer size; it grows for longer
// lines, up to the maximum event size.
const initialBuffer = 16 << 10

// Reader reads server-sent events from a stream. Its buffers are reused
// from event to event, so reading allocates only when an event is longer
// than any before it; what it returns is valid until its next call. It is
// not safe for concurrent use.
type Reader struct {
	rd  io.Reader
	max int
	// buf[r:w] is read but not yet consumed; err ended reading rd.
	buf  []byte
	r, w int
	err  error
	// empty counts reads in a row that returned nothing.
	empty int
	// started is set once a leading byte order mark was looked for.
	started bool
	// skipLF is set when the last line ended with a CR that was the last
	// byte read: an LF read next ends that same line (CRLF). Waiting for
	// it would hold back a CR-terminated event until more bytes came.
	skipLF bool
	// frame assembles the raw bytes of one frame for NextFrame.
	frame []byte
	p     parser
	retry time.Duration
}

// NewReader returns a Reader of rd that buffers at most
// DefaultMaxEventSize bytes of one event.
func NewReader(rd io.Reader) *Reader {
	return &Reader{rd: rd, max: DefaultMaxEventSize}
}

// SetMaxEventSize sets how many bytes of one event (or frame) the Reader
// buffers before it fails with ErrTooLarge; n ≤ 0 sets no bound, for a
// caller that relays a trusted upstream and must not cut it short.
func (r *Reader) SetMaxEventSize(n int) { r.max = n }

// LastEventID returns the stream's last event id so far: what a client
// sends as Last-Event-ID when it reconnects.
func (r *Reader) LastEventID() string { return r.p.id }

// Retry returns the reconnection time the stream last set with a "retry"
// field, 0 if it set none.
func (r *Reader) Retry() time.Duration { return r.retry }

// Next returns the next event. It returns io.EOF when the stream ends
// between events, io.ErrUnexpectedEOF when it ends within one (the standard
// discards such an event; the error lets a client tell a cut stream from a
// finished one), ErrTooLarge, or the error that ended reading.
func (r *Reader) Next() (Event, error) {
	size := 0
	for {
		line, raw, err := r.readLine()
		if err != nil {
			pending := r.p.pending || len(line) > 0 && line[0] != ':'
			r.p.reset()
			if errors.Is(err, io.EOF) && pending {
				return Event{}, io.ErrUnexpectedEOF
			}
			return Event{}, err
		}
		if size += len(raw); r.max > 0 && size > r.max {
			r.p.reset()
			return Event{}, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, r.max)
		}
		if len(line) == 0 {
			if ev, ok := r.p.dispatch(); ok {
				return ev, nil
			}
			continue
		}
		if retry, ok := r.p.field(line); ok {
			r.retry = retry
		}
	}
}

// NextFrame returns the next frame of the stream: its exact bytes up to and
// including the blank line that ends it, or up to the end of the stream (or
// a read error, returned at the next call) for a last frame without one.
// A frame may hold only comments. Concatenated, the frames are the stream
// byte for byte (a leading byte order mark included), which is what a
// relay needs; ParseFrame reads one. The bytes are valid until the next
// call. At the end of the stream it returns io.EOF, or the error that
// ended reading.
func (r *Reader) NextFrame() ([]byte, error) {
	r.frame = r.frame[:0]
	for {
		line, raw, err := r.readLine()
		r.frame = append(r.frame, raw...)
		if err != nil {
			if len(r.frame) > 0 && !errors.Is(err, ErrTooLarge) {
				return r.frame, nil // the error comes again at the next call
			}
			return nil, err
		}
		if len(line) == 0 {
			if r.skipLF {
				// A CR ended the frame with nothing after it yet. Unlike
				// Next, wait for the byte after it: an LF completes the
				// CRLF, so the frame ends as the upstream wrote it and a
				// relay never sends a client half a line end (a CR-only
				// stream is then a frame behind, which no server sends).
				r.skipLF = false
				if r.fill(1) && r.buf[r.r] == '\n' {
					r.frame = append(r.frame, '\n')
					r.r++
				}
			}
			return r.frame, nil
		}
		if r.max > 0 && len(r.frame) > r.max {
			return nil, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, r.max)
		}
	}
}

// readLine returns the next line without its line end (line) and with it
// (raw: the stream's exact bytes, including a leading byte order mark, or
// the LF of a CRLF whose CR ended the line before). Both are valid until
// the next call. A last line without a line end is returned with io.EOF;
// an error is returned with the bytes read before it, if any.
func (r *Reader) readLine() (line, raw []byte, err error) {
	start := r.r
	if !r.started {
		r.started = true
		// Read only as far as the bytes can still be a byte order mark.
		for r.w-r.r < len(bom) && bytes.HasPrefix(bom, r.buf[r.r:r.w]) && r.err == nil {
			r.more(r.r)
		}
		if bytes.HasPrefix(r.buf[r.r:r.w], bom) {
			r.r += len(bom)
		}
	}
	if r.skipLF {
		// Everything read was consumed, so filling may move the buffer:
		// the line starts where the reader is after it.
		r.skipLF = false
		r.fill(1)
		start = r.r
		if r.r < r.w && r.buf[r.r] == '\n' {
			r.r++
		}
	}
	lineStart := r.r
	scanned := r.r
	for {
		b := r.buf[scanned:r.w]
		end, next := -1, -1
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			end, next = i, i+1
			if j := bytes.IndexByte(b[:i], '\r'); j >= 0 {
				end, next = j, j+1
				if j+1 == i {
					next = i + 1 // CRLF
				}
			}
		} else if j := bytes.IndexByte(b, '\r'); j >= 0 {
			end, next = j, j+1
			if j+1 == len(b) {
				// Nothing buffered after the CR: do not wait to see
				// whether an LF follows.
				r.skipLF = true
			}
		}
		if end >= 0 {
			r.r = scanned + next
			return r.buf[lineStart : scanned+end], r.buf[start:r.r], nil
		}
		scanned = r.w
		if r.err != nil {
			r.r = r.w
			return r.buf[lineStart:r.w], r.buf[start:r.w], r.err
		}
		if r.max > 0 && r.w-start > r.max {
			return nil, nil, fmt.Errorf("%w: a line of more than %d bytes", ErrTooLarge, r.max)
		}
		// Make room and read more; start and the offsets move along.
		shift := r.more(start)
		start, lineStart, scanned = start-shift, lineStart-shift, scanned-shift
	}
}

// fill reads until n bytes are buffered or reading fails, and reports
// whether they are.
func (r *Reader) fill(n int) bool {
	for r.w-r.r < n && r.err == nil {
		r.more(r.r)
	}
	return r.w-r.r >= n
}

// more reads once from rd into buf, first moving buf[keep:w] to the front
// (or growing buf when it is full), and returns by how much it moved
// the kept bytes.
func (r *Reader) more(keep int) (shift int) {
	if r.buf == nil {
		r.buf = make([]byte, initialBuffer)
	}
	if r.w == len(r.buf) {
		if keep > 0 {
			copy(r.buf, r.buf[keep:r.w])
		} else {
			grown := make([]byte, 2*len(r.buf))
			copy(grown, r.buf[:r.w])
			r.buf = grown
		}
		shift = keep
		r.r -= shift
		r.w -= shift
	}
	n, err := r.rd.Read(r.buf[r.w:])
	r.w += n
	if err != nil {
		r.err = err
	} else if n == 0 {
		// A reader that returns nothing: try again, as bufio does a few
		// times, without spinning for ever.
		r.empty++
		if r.empty > 100 {
			r.err = io.ErrNoProgress
		}
	} else {
		r.empty = 0
	}
	return shift
}

// parser turns field lines into events: the standard's "interpret an event
// stream" steps, shared by Reader.Next and ParseFrame.
type parser struct {
	data    []byte
	hasData bool
	// alias lets data point into the parsed bytes (ParseFrame): a single
	// data line is then returned without a copy.
	alias bool
	typ   string
	id    string
	// pending is set by any field line since the last blank line.
	pending bool
	// lastType is the last type string made, so a stream repeating one
	// type does not allocate a string per event.
	lastType string
}

// field applies one non-blank line; for a valid "retry" it returns the
// reconnection time and true.
func (p *parser) field(line []byte) (time.Duration, bool) {
	if line[0] == ':' {
		return 0, false // a comment
	}
	p.pending = true
	name, value, found := bytes.Cut(line, []byte(":"))
	if found && len(value) > 0 && value[0] == ' ' {
		value = value[1:]
	}
	switch string(name) {
	case "data":
		switch {
		case !p.hasData && p.alias:
			p.data = value[:len(value):len(value)] // an append copies
		case !p.hasData:
			p.data = append(p.data[:0], value...)
		default:
			p.data = append(append(p.data, '\n'), value...)
		}
		p.hasData = true
	case "event":
		if string(value) != p.lastType {
			p.lastType = string(value)
		}
		p.typ = p.lastType
	case "id":
		if bytes.IndexByte(value, 0) < 0 && string(value) != p.id {
			p.id = string(value)
		}
	case "retry":
		if len(value) == 0 || bytes.IndexFunc(value, func(r rune) bool { return r < '0' || r > '9' }) >= 0 {
			return 0, false
		}
		ms, err := strconv.ParseInt(string(value), 10, 64)
		if err != nil {
			return 0, false
		}
		return time.Duration(ms) * time.Millisecond, true
	}
	return 0, false
}

// dispatch ends an event at a blank line: it returns it if it has data
// (else a zero Event and false) and resets the buffers for the next one.
func (p *parser) dispatch() (Event, bool) {
	if !p.hasData {
		p.reset()
		return Event{}, false
	}
	ev := Event{Type: p.typ, Data: p.data, ID: p.id}
	p.reset()
	if ev.Type == "" {
		ev.Type = "message"
	}
	return ev, true
}

// reset drops a partly read event; the last event id stays.
func (p *parser) reset() {
	p.data, p.hasData, p.typ, p.pending = p.data[:0], false, "", false
}

// ParseFrame returns the event a frame holds (see Reader.NextFrame), read
// as if the frame ended with a blank line, and whether it holds one: a
// frame of comments only, or without data, holds none. A leading byte
// order mark and leading line ends are skipped. Data points into frame when it had one data line
// and is a new slice otherwise; ID is the frame's own "id", if any.
func ParseFrame(frame []byte) (Event, bool) {
	p := parser{alias: true}
	frame = bytes.TrimPrefix(frame, bom)
	for len(frame) > 0 {
		i := lineEnd(frame)
		line, next := frame, len(frame)
		if i >= 0 {
			line, next = frame[:i], i+1
			if frame[i] == '\r' && i+1 < len(frame) && frame[i+1] == '\n' {
				next++
			}
		}
		frame = frame[next:]
		if len(line) == 0 {
			if !p.pending && !p.hasData {
				// The LF of a CRLF whose CR ended the last frame.
				continue
			}
			break // the blank line that ends the frame
		}
		p.field(line)
	}
	return p.dispatch()
}
