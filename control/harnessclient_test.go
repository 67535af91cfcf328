package control

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/protocol"
)

// A harness whose server never answers "Expect: 100-continue" still gets
// its turns: the first after continueTimeout, the later ones on new
// connections without the wait.
func TestHarnessWithoutContinueGetsItsTurns(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	var expects atomic.Int32
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				br := bufio.NewReader(conn)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				if req.Header.Get("Expect") != "" {
					expects.Add(1)
				}
				// A bare HTTP/1.1 server: it reads the body without
				// sending "100 Continue" first.
				if _, err := io.Copy(io.Discard, io.LimitReader(br, req.ContentLength)); err != nil {
					return
				}
				body := `{"info":{"id":"m1","role":"assistant","time":{"created":1}},"parts":[{"type":"text","text":"ok"}]}`
				fmt.Fprintf(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
			}()
		}
	}()
	h := newHarnessClient()
	tgt := target{endpoint: sandboxes.Endpoint{URL: "http://" + ln.Addr().String()}, sessionID: "s1"}
	for i := range 3 {
		m, err := h.sendMessage(context.Background(), tgt, protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: "hi"}}})
		require.NoError(t, err, "turn %d", i)
		assert.Equal(t, "ok", strings.TrimSpace(m.Text()))
	}
	assert.EqualValues(t, 1, expects.Load(), "only the first turn waited for a 100 Continue")
}

// A turn whose connection the harness closes before asking for the body
// (as a pooled connection of a harness that died while idle is closed)
// fails as not delivered: lapd may send it again.
func TestTurnOnAConnectionTheHarnessClosedIsNotDelivered(t *testing.T) {
	t.Parallel()
	// Read the headers, then go away without asking for the body.
	tgt := serveOnce(t, func(net.Conn, *bufio.Reader, *http.Request) {})
	h := newHarnessClient()
	_, err := h.sendMessage(context.Background(), tgt, protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: "hi"}}})
	require.Error(t, err)
	assert.True(t, notSent(err), "%v", err)
}

// A harness that took the message and then died mid-turn may have run
// it: the failure is not "not delivered", so the turn is not sent again.
func TestTurnTheHarnessTookThenDiedIsNotResent(t *testing.T) {
	t.Parallel()
	tgt := serveOnce(t, func(conn net.Conn, br *bufio.Reader, req *http.Request) {
		fmt.Fprint(conn, "HTTP/1.1 100 Continue\r\n\r\n")
		_, _ = io.Copy(io.Discard, io.LimitReader(br, req.ContentLength))
	})
	h := newHarnessClient()
	_, err := h.sendMessage(context.Background(), tgt, protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: "hi"}}})
	require.Error(t, err)
	assert.False(t, notSent(err), "%v", err)
}

// A turn to a harness behind proxies carries no "Expect: 100-continue"
// (Knative's proxies answer it themselves and, once a harness's own
// "100 Continue" passed through them, report its 404 as a 200), so the
// harness's status reaches lapd as it was sent.
func TestTurnThroughProxiesSendsNoExpect(t *testing.T) {
	t.Parallel()
	var expects atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Expect") != "" {
			expects.Add(1)
		}
		_, _ = io.Copy(io.Discard, r.Body)
		http.Error(w, `{"error":{"code":"not_found","message":"session s1 not found"}}`, http.StatusNotFound)
	}))
	defer srv.Close()
	h := newHarnessClient()
	tgt := target{endpoint: sandboxes.Endpoint{URL: srv.URL, Proxied: true}, sessionID: "s1"}
	_, err := h.sendMessage(context.Background(), tgt, protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: "hi"}}})
	assert.True(t, isStatus(err, http.StatusNotFound), "err: %v", err)
	assert.Zero(t, expects.Load())
}

// serveOnce is a raw TCP harness for tests that need what an HTTP server
// would not do (die mid-request, answer 100 Continue by hand): it takes one
// connection, reads the request's headers, hands them to handle and then
// closes the connection. It returns the target to send turns to.
func serveOnce(t *testing.T, handle func(conn net.Conn, br *bufio.Reader, req *http.Request)) target {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		br := bufio.NewReader(conn)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		handle(conn, br, req)
	}()
	return target{endpoint: sandboxes.Endpoint{URL: "http://" + ln.Addr().String()}, sessionID: "s1"}
}
