package harnessclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"lap.dev/lap/sandboxes"
)

// Ready asks the harness once whether it is ready: GET /session answering
// 2xx (ARCHITECTURE §5). It returns nil then; else a *StatusError for
// another answer, or the transport's error.
func (c *Client) Ready(ctx context.Context, t Target) error {
	req, err := request(ctx, t, http.MethodGet, "/session", nil)
	if err != nil {
		return err
	}
	resp, err := c.pooled.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := statusOf(resp); err != nil {
		return err
	}
	// Read the (short) list to its end so the connection is reused.
	_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	return err
}

// Poll says how WaitReady asks.
type Poll struct {
	// Timeout bounds the wait: when it passes, WaitReady fails with an
	// error wrapping sandboxes.ErrNotReady. Zero: only ctx bounds it.
	Timeout time.Duration
	// Interval is the first pause between two attempts, Factor how much
	// each pause grows on the last, MaxInterval the longest pause.
	// Defaults: 10ms, 2, 1s. A backend whose probes are cheap (a refused
	// loopback dial) keeps them short: the pause is added to every cold
	// start.
	Interval, MaxInterval time.Duration
	Factor                float64
	// Check, when set, is called with each failed attempt's error; an
	// error from it ends the wait with that error. A backend gives up
	// early with it: its harness process exited, or reported a workspace
	// it could not prepare.
	Check func(ctx context.Context, attempt error) error
	// Wake, when set, cuts a pause short when it is closed (the harness
	// process exited), so the next attempt and Check come at once.
	Wake <-chan struct{}
	// ReadyStatus, when set, says which non-2xx answers to GET /session
	// also count as ready. A harness lapd did not start may have no list
	// route (the LiteLLM Agent Platform's answers 404; its platform takes
	// any status below 500 as ready).
	ReadyStatus func(status int) bool
}

// attemptTimeout bounds one readiness request, so a harness that accepted
// a connection but does not answer is asked again.
const attemptTimeout = 10 * time.Second

// WaitReady asks Ready until the harness is ready, p.Check gives up,
// p.Timeout passes (an error wrapping sandboxes.ErrNotReady and the last
// attempt's error) or ctx ends (an error wrapping ctx's error).
func (c *Client) WaitReady(ctx context.Context, t Target, p Poll) error {
	if p.Interval <= 0 {
		p.Interval = 10 * time.Millisecond
	}
	if p.MaxInterval <= 0 {
		p.MaxInterval = time.Second
	}
	if p.Factor < 1 {
		p.Factor = 2
	}
	wait := ctx
	if p.Timeout > 0 {
		var cancel context.CancelFunc
		wait, cancel = context.WithTimeout(ctx, p.Timeout)
		defer cancel()
	}
	delay := p.Interval
	var last error
	// Since Go 1.23 a stopped or reset timer delivers no stale tick.
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		actx, cancel := context.WithTimeout(wait, attemptTimeout)
		err := c.Ready(actx, t)
		cancel()
		var se *StatusError
		if err == nil || p.ReadyStatus != nil && errors.As(err, &se) && p.ReadyStatus(se.Status) {
			return nil
		}
		// An attempt the end of the wait cut short says nothing about
		// the harness: report the one before it.
		if last == nil || wait.Err() == nil {
			last = err
			if p.Check != nil {
				if err := p.Check(wait, last); err != nil {
					return err
				}
			}
		}
		timer.Reset(delay)
		select {
		case <-wait.Done():
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("harness at %s did not answer GET /session (last: %v): %w", t.Endpoint.URL, last, err)
			}
			return fmt.Errorf("%w: no answer to GET /session within %s (last: %v)", sandboxes.ErrNotReady, p.Timeout, last)
		case <-p.Wake:
			timer.Stop()
			p.Wake = nil // closed, it would stay ready to receive
		case <-timer.C:
		}
		delay = min(time.Duration(float64(delay)*p.Factor), p.MaxInterval)
	}
}
