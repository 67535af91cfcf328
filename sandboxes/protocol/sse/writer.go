package sse

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// ErrBadField is returned for an event whose Type or ID would break the
// stream's framing: a line end in either, or a NUL in the ID (readers
// ignore such an id).
var ErrBadField = errors.New("server-sent event field holds a line end")

// Writer writes server-sent events to a stream, each in one write followed
// by a flush, so a client sees every event at once and a client that has
// gone shows up as an error of the write that follows (fasthttp and
// net/http report a closed connection no other way). It is not safe for
// concurrent use.
type Writer struct {
	w     io.Writer
	flush func() error
	buf   []byte
}

// NewWriter returns a Writer on w. After every event or comment it flushes
// w when w can be flushed: a *bufio.Writer (its Flush method) or an
// http.ResponseWriter (through http.ResponseController).
func NewWriter(w io.Writer) *Writer {
	sw := &Writer{w: w}
	switch f := w.(type) {
	case interface{ Flush() error }:
		sw.flush = f.Flush
	case http.ResponseWriter:
		sw.flush = http.NewResponseController(f).Flush
	}
	return sw
}

// Event writes ev and flushes. Data with line ends is written as one data
// line per line (a reader joins them with "\n"; a CR or CRLF comes back as
// "\n"); an event always has at least one data line, so it is dispatched
// even when Data is empty.
func (w *Writer) Event(ev Event) error {
	var err error
	if w.buf, err = AppendEvent(w.buf[:0], ev); err != nil {
		return err
	}
	return w.send()
}

// Comment writes a comment, which every reader skips: a keep-alive that
// also detects a gone client. Line ends in text start new comment lines.
func (w *Writer) Comment(text string) error {
	w.buf = AppendComment(w.buf[:0], text)
	return w.send()
}

// Retry tells readers how long to wait before reconnecting.
func (w *Writer) Retry(d time.Duration) error {
	w.buf = append(strconv.AppendInt(append(w.buf[:0], "retry: "...), d.Milliseconds(), 10), "\n\n"...)
	return w.send()
}

// Raw writes bytes that already are server-sent events (a relayed frame,
// see Reader.NextFrame) unchanged, and flushes.
func (w *Writer) Raw(frame []byte) error {
	if _, err := w.w.Write(frame); err != nil {
		return err
	}
	return w.doFlush()
}

func (w *Writer) send() error {
	if _, err := w.w.Write(w.buf); err != nil {
		return err
	}
	return w.doFlush()
}

func (w *Writer) doFlush() error {
	if w.flush == nil {
		return nil
	}
	return w.flush()
}

// AppendEvent appends ev in the text/event-stream format to dst: its
// "event" and "id" lines when set, its data lines, and the blank line that
// dispatches it. It fails with ErrBadField, appending nothing, when Type or
// ID would break the framing.
func AppendEvent(dst []byte, ev Event) ([]byte, error) {
	if strings.ContainsAny(ev.Type, "\r\n") || strings.ContainsAny(ev.ID, "\r\n\x00") {
		return dst, ErrBadField
	}
	if ev.Type != "" {
		dst = append(append(append(dst, "event: "...), ev.Type...), '\n')
	}
	if ev.ID != "" {
		dst = append(append(append(dst, "id: "...), ev.ID...), '\n')
	}
	dst = appendLines(dst, "data: ", ev.Data)
	return append(dst, '\n'), nil
}

// AppendComment appends a comment (one ": " line per line of text) and a
// blank line to dst.
func AppendComment(dst []byte, text string) []byte {
	return append(appendLines(dst, ": ", []byte(text)), '\n')
}

// lineEnd returns the index of the first CR or LF in b, or -1. Two
// IndexByte scans are much faster than one IndexAny on long data.
func lineEnd(b []byte) int {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return bytes.IndexByte(b, '\r')
	}
	if j := bytes.IndexByte(b[:i], '\r'); j >= 0 {
		return j
	}
	return i
}

// appendLines appends value as lines that each start with prefix, split
// at CRLF, CR and LF.
func appendLines(dst []byte, prefix string, value []byte) []byte {
	for {
		i := lineEnd(value)
		if i < 0 {
			return append(append(append(dst, prefix...), value...), '\n')
		}
		dst = append(append(append(dst, prefix...), value[:i]...), '\n')
		if value[i] == '\r' && i+1 < len(value) && value[i+1] == '\n' {
			i++
		}
		value = value[i+1:]
	}
}
