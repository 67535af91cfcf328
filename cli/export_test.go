package cli

import (
	"encoding/json"
	"errors"
	"io"
	"time"

	"lap.dev/lap/control/api"
)

// RenderStream reads a /message_stream body and renders it piped, as a
// turn does, for the benchmarks.
func RenderStream(r io.Reader, out, status io.Writer) error {
	s := newSSEStream(io.NopCloser(r))
	tr := newTurnRenderer(out, status, false, 80, 0, nil, style{})
	for {
		ev, err := s.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		switch ev.Name {
		case api.EventHarness:
			he, err := api.DecodeHarnessEvent(ev.Data)
			if err != nil {
				return err
			}
			tr.event(he)
		case api.EventDone:
			var m api.Message
			if err := json.Unmarshal(ev.Data, &m); err != nil {
				return err
			}
			tr.finish(m, time.Second)
		}
	}
}
