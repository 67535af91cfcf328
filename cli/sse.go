package cli

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
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
	r    *bufio.Reader
}

func newSSEStream(body io.ReadCloser) *sseStream {
	return &sseStream{body: body, r: bufio.NewReaderSize(body, 64<<10)}
}

// maxSSELine bounds one line so a broken server cannot make the CLI buffer
// without end; a whole tool output fits easily.
const maxSSELine = 16 << 20

// Next returns the next event. Comments (keep-alive pings) are skipped. It
// returns io.EOF when the server ended the stream cleanly between events.
func (s *sseStream) Next() (sseEvent, error) {
	var ev sseEvent
	var data [][]byte
	seen := false
	for {
		line, err := s.readLine()
		if err != nil {
			if errors.Is(err, io.EOF) && seen {
				return sseEvent{}, io.ErrUnexpectedEOF
			}
			return sseEvent{}, err
		}
		if len(line) == 0 {
			if !seen {
				continue
			}
			if ev.Name == "" {
				ev.Name = "message"
			}
			ev.Data = bytes.Join(data, []byte("\n"))
			return ev, nil
		}
		if line[0] == ':' {
			continue
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "event":
			ev.Name = string(value)
			seen = true
		case "data":
			data = append(data, bytes.Clone(value))
			seen = true
		default:
			// id, retry and unknown fields carry nothing the CLI uses.
		}
	}
}

func (s *sseStream) readLine() ([]byte, error) {
	var line []byte
	for {
		chunk, isPrefix, err := s.r.ReadLine()
		if err != nil {
			return nil, err
		}
		line = append(line, chunk...)
		if len(line) > maxSSELine {
			return nil, fmt.Errorf("server-sent event line longer than %d bytes", maxSSELine)
		}
		if !isPrefix {
			return bytes.TrimSuffix(line, []byte("\r")), nil
		}
	}
}

// Close ends the stream.
func (s *sseStream) Close() error { return s.body.Close() }
