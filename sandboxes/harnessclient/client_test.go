package harnessclient

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/protocol"
)

var hi = protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: "hi"}}}

const answer = `{"info":{"id":"m1","role":"assistant","time":{"created":1}},"parts":[{"type":"text","text":"ok"}]}`

// serve runs handler as a harness and returns the target to call it.
func serve(t *testing.T, handler http.HandlerFunc) Target {
	t.Helper()
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	return Target{Endpoint: sandboxes.Endpoint{URL: srv.URL}, Token: "tok", Session: "s1"}
}

// Every call sends the token, the endpoint's Host and headers, and asks
// for the right method and path (the session id escaped); 2xx answers
// decode, other statuses come back as *StatusError with the body.
func TestCalls(t *testing.T) {
	t.Parallel()
	type seen struct{ method, path, auth, host, tag, body string }
	tests := []struct {
		name   string
		status int
		reply  string
		call   func(c *Client, t Target) (any, error)
		want   seen
		result any
		err    string
	}{
		{"identity", 200, `{"harness":"lap","ready":true}`,
			func(c *Client, t Target) (any, error) { return c.Identity(context.Background(), t) },
			seen{"GET", "/", "Bearer tok", "h.example", "s-1", ""}, protocol.Identity{Harness: "lap", Ready: true}, ""},
		{"create session", 200, `{"id":"h1","title":"t"}`,
			func(c *Client, t Target) (any, error) {
				return c.CreateSession(context.Background(), t, protocol.CreateSessionRequest{Title: "t"})
			},
			seen{"POST", "/session", "Bearer tok", "h.example", "s-1", `{"title":"t"}`}, protocol.SessionInfo{ID: "h1", Title: "t"}, ""},
		{"create session without an id", 200, `{}`,
			func(c *Client, t Target) (any, error) {
				return c.CreateSession(context.Background(), t, protocol.CreateSessionRequest{})
			},
			seen{"POST", "/session", "Bearer tok", "h.example", "s-1", `{}`}, protocol.SessionInfo{}, "the harness returned no session id"},
		{"create session refused", 500, "  boom \n",
			func(c *Client, t Target) (any, error) {
				return c.CreateSession(context.Background(), t, protocol.CreateSessionRequest{})
			},
			seen{"POST", "/session", "Bearer tok", "h.example", "s-1", `{}`}, protocol.SessionInfo{}, "create harness session: harness answered 500: boom"},
		{"get session", 200, `{"id":"a b/c"}`,
			func(c *Client, t Target) (any, error) { return c.GetSession(context.Background(), t) },
			seen{"GET", "/session/a%20b%2Fc", "Bearer tok", "h.example", "s-1", ""}, protocol.SessionInfo{ID: "a b/c"}, ""},
		{"get session of another id", 200, `{"id":"other"}`,
			func(c *Client, t Target) (any, error) { return c.GetSession(context.Background(), t) },
			seen{"GET", "/session/a%20b%2Fc", "Bearer tok", "h.example", "s-1", ""}, protocol.SessionInfo{ID: "other"}, `returned session "other" for "a b/c"`},
		{"get session not found", 404, `{"error":"no"}`,
			func(c *Client, t Target) (any, error) { return c.GetSession(context.Background(), t) },
			seen{"GET", "/session/a%20b%2Fc", "Bearer tok", "h.example", "s-1", ""}, protocol.SessionInfo{}, "harness answered 404"},
		{"abort", 200, `true`,
			func(c *Client, t Target) (any, error) { return nil, c.Abort(context.Background(), t) },
			seen{"POST", "/session/a%20b%2Fc/abort", "Bearer tok", "h.example", "s-1", ""}, nil, ""},
		{"abort conflict", 409, `busy`,
			func(c *Client, t Target) (any, error) { return nil, c.Abort(context.Background(), t) },
			seen{"POST", "/session/a%20b%2Fc/abort", "Bearer tok", "h.example", "s-1", ""}, nil, "harness answered 409: busy"},
		{"bad JSON", 200, `{"id":`,
			func(c *Client, t Target) (any, error) { return c.Identity(context.Background(), t) },
			seen{"GET", "/", "Bearer tok", "h.example", "s-1", ""}, protocol.Identity{}, "decode harness answer to GET /"},
		{"send message", 200, answer,
			func(c *Client, t Target) (any, error) {
				m, err := c.SendMessage(context.Background(), t, hi)
				return m.Text(), err
			},
			seen{"POST", "/session/a%20b%2Fc/message", "Bearer tok", "h.example", "s-1", `{"parts":[{"type":"text","text":"hi"}]}`}, "ok", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got seen
			tgt := serve(t, func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				got = seen{r.Method, r.URL.EscapedPath(), r.Header.Get("Authorization"), r.Host, r.Header.Get("Knative-Serving-Tag"), string(b)}
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.reply)
			})
			tgt.Session = "a b/c"
			tgt.Endpoint.Host = "h.example"
			tgt.Endpoint.Header = map[string]string{"Knative-Serving-Tag": "s-1"}
			res, err := tt.call(New(), tgt)
			assert.Equal(t, tt.want, got)
			if tt.err != "" {
				assert.ErrorContains(t, err, tt.err)
				if tt.status/100 != 2 {
					assert.True(t, IsStatus(err, tt.status), "IsStatus(%v, %d)", err, tt.status)
					var se *StatusError
					require.ErrorAs(t, err, &se)
					assert.Equal(t, strings.TrimSpace(tt.reply), se.Body)
				}
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.result, res)
		})
	}
}

// A target without a token sends no Authorization header (an external
// harness for local development runs without one).
func TestNoTokenNoAuthorization(t *testing.T) {
	t.Parallel()
	var auth atomic.Value
	tgt := serve(t, func(w http.ResponseWriter, r *http.Request) {
		auth.Store(r.Header.Values("Authorization"))
		io.WriteString(w, `[]`)
	})
	tgt.Token = ""
	require.NoError(t, New().Ready(context.Background(), tgt))
	assert.Empty(t, auth.Load())
}

// A harness whose server never answers "Expect: 100-continue" still gets
// its turns: the first after ContinueTimeout, the later ones on new
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
				fmt.Fprintf(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(answer), answer)
			}()
		}
	}()
	c := New()
	tgt := Target{Endpoint: sandboxes.Endpoint{URL: "http://" + ln.Addr().String()}, Session: "s1"}
	for i := range 3 {
		m, err := c.SendMessage(context.Background(), tgt, hi)
		require.NoError(t, err, "turn %d", i)
		assert.Equal(t, "ok", strings.TrimSpace(m.Text()))
	}
	assert.EqualValues(t, 1, expects.Load(), "only the first turn waited for a 100 Continue")
}

// A harness that answers "100 Continue" keeps its turns on one pooled
// connection.
func TestTurnsReuseAConnection(t *testing.T) {
	t.Parallel()
	var conns, expects atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Expect") == "100-continue" {
			expects.Add(1)
		}
		_, _ = io.Copy(io.Discard, r.Body) // net/http sends 100 Continue here
		io.WriteString(w, answer)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	c := New()
	tgt := Target{Endpoint: sandboxes.Endpoint{URL: srv.URL}, Session: "s1"}
	for i := range 3 {
		_, err := c.SendMessage(context.Background(), tgt, hi)
		require.NoError(t, err, "turn %d", i)
	}
	assert.EqualValues(t, 3, expects.Load())
	assert.EqualValues(t, 1, conns.Load())
}

// Which failures of a turn prove that the harness never had the message
// (NotSent: lapd may send it again) and which do not.
func TestNotSent(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// handle serves one connection after its request's headers.
		handle  func(conn net.Conn, br *bufio.Reader, req *http.Request)
		proxied bool
		notSent bool
	}{
		// As a pooled connection of a harness that died while idle is
		// closed: read the headers, then go away without asking for the
		// body.
		{"closed before asking for the body", func(net.Conn, *bufio.Reader, *http.Request) {}, false, true},
		// A harness that took the message and then died mid-turn may
		// have run it.
		{"took the message, then died", func(conn net.Conn, br *bufio.Reader, req *http.Request) {
			fmt.Fprint(conn, "HTTP/1.1 100 Continue\r\n\r\n")
			_, _ = io.Copy(io.Discard, io.LimitReader(br, req.ContentLength))
		}, false, false},
		// Through proxies the body goes at once, so a failure proves
		// nothing.
		{"proxied, closed after the headers", func(conn net.Conn, br *bufio.Reader, req *http.Request) {
			_, _ = io.Copy(io.Discard, io.LimitReader(br, req.ContentLength))
		}, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tgt := serveOnce(t, tt.handle)
			tgt.Endpoint.Proxied = tt.proxied
			_, err := New().SendMessage(context.Background(), tgt, hi)
			require.Error(t, err)
			assert.Equal(t, tt.notSent, NotSent(err), "NotSent(%v)", err)
		})
	}

	t.Run("refused dial", func(t *testing.T) {
		t.Parallel()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := ln.Addr().String()
		ln.Close()
		for _, proxied := range []bool{false, true} {
			_, err = New().SendMessage(context.Background(), Target{Endpoint: sandboxes.Endpoint{URL: "http://" + addr, Proxied: proxied}, Session: "s1"}, hi)
			assert.True(t, NotSent(err), "NotSent(%v), proxied %v", err, proxied)
		}
	})

	t.Run("a status is an answer", func(t *testing.T) {
		t.Parallel()
		tgt := serve(t, func(w http.ResponseWriter, r *http.Request) { http.Error(w, "busy", http.StatusConflict) })
		_, err := New().SendMessage(context.Background(), tgt, hi)
		assert.True(t, IsStatus(err, http.StatusConflict), "%v", err)
		assert.False(t, NotSent(err), "%v", err)
	})

	t.Run("the caller gave up", func(t *testing.T) {
		t.Parallel()
		tgt := serveOnce(t, func(conn net.Conn, br *bufio.Reader, req *http.Request) {
			_, _ = br.ReadByte() // hold the request until the client leaves
		})
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, err := New().SendMessage(ctx, tgt, hi)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.False(t, NotSent(err), "%v", err)
	})
}

// A turn to a harness behind proxies carries no "Expect: 100-continue"
// (Knative's proxies answer it themselves and, once a harness's own
// "100 Continue" passed through them, report its 404 as a 200), so the
// harness's status reaches lapd as it was sent.
func TestTurnThroughProxiesSendsNoExpect(t *testing.T) {
	t.Parallel()
	var expects atomic.Int32
	tgt := serve(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Expect") != "" {
			expects.Add(1)
		}
		_, _ = io.Copy(io.Discard, r.Body)
		http.Error(w, `{"error":{"code":"not_found","message":"session s1 not found"}}`, http.StatusNotFound)
	})
	tgt.Endpoint.Proxied = true
	_, err := New().SendMessage(context.Background(), tgt, hi)
	assert.True(t, IsStatus(err, http.StatusNotFound), "err: %v", err)
	assert.Zero(t, expects.Load())
}

// serveOnce is a raw TCP harness for tests that need what an HTTP server
// would not do (die mid-request, answer 100 Continue by hand): it takes one
// connection, reads the request's headers, hands them to handle and then
// closes the connection. It returns the target to send turns to.
func serveOnce(t *testing.T, handle func(conn net.Conn, br *bufio.Reader, req *http.Request)) Target {
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
	return Target{Endpoint: sandboxes.Endpoint{URL: "http://" + ln.Addr().String()}, Session: "s1"}
}

func TestEvents(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		status int
		stream string
		want   []string // event types then, after the stream, the error
		err    error
		open   string // Events' error, if it fails
	}{
		{"events after connected", 200,
			"data: {\"type\":\"server.connected\"}\n\n: ping\n\ndata: {\"type\":\"session.idle\",\"properties\":{\"sessionID\":\"s1\"}}\n\n",
			[]string{"session.idle"}, io.EOF, ""},
		{"multi-line data, CRLF", 200,
			"data: {\"type\":\"server.connected\"}\r\n\r\ndata: {\"type\":\r\ndata: \"message.part.updated\"}\r\n\r\n",
			[]string{"message.part.updated"}, io.EOF, ""},
		{"cut mid-event", 200, "data: {\"type\":\"server.connected\"}\n\ndata: {\"type\"", nil, io.ErrUnexpectedEOF, ""},
		{"not connected first", 200, "data: {\"type\":\"session.idle\"}\n\n", nil, nil, `first event is "session.idle"`},
		{"nothing", 200, "", nil, nil, "subscribe to harness events: EOF"},
		{"refused", 401, "no token", nil, nil, "harness answered 401: no token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tgt := serve(t, func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/event" || r.Header.Get("Authorization") != "Bearer tok" {
					http.Error(w, "wrong request", http.StatusBadRequest)
					return
				}
				w.Header().Set("Content-Type", "text/event-stream")
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.stream)
			})
			es, err := New().Events(context.Background(), tgt)
			if tt.open != "" {
				assert.ErrorContains(t, err, tt.open)
				return
			}
			require.NoError(t, err)
			defer es.Close()
			var got []string
			for {
				ev, err := es.Next()
				if err != nil {
					assert.ErrorIs(t, err, tt.err)
					break
				}
				got = append(got, ev.Type)
			}
			assert.Equal(t, tt.want, got)
		})
	}
}

// Close and the context each end a subscription whose Next waits.
func TestEventsEnd(t *testing.T) {
	t.Parallel()
	tgt := serve(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "data: {\"type\":\"server.connected\"}\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	for _, how := range []string{"close", "context"} {
		ctx, cancel := context.WithCancel(context.Background())
		es, err := New().Events(ctx, tgt)
		require.NoError(t, err)
		done := make(chan error, 1)
		go func() { _, err := es.Next(); done <- err }()
		if how == "close" {
			es.Close()
		} else {
			cancel()
		}
		select {
		case err := <-done:
			assert.Error(t, err, how)
		case <-time.After(10 * time.Second):
			t.Fatalf("Next still waits after %s", how)
		}
		cancel()
		es.Close()
	}
}

func TestReady(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		status int
		err    string
	}{
		{"ok", 200, ""},
		{"no content", 204, ""},
		{"starting", 503, "harness answered 503: not yet"},
		{"wrong token", 401, "harness answered 401"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tgt := serve(t, func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodGet || r.URL.Path != "/session" || r.Header.Get("Authorization") != "Bearer tok" {
					http.Error(w, "wrong request", http.StatusBadRequest)
					return
				}
				w.WriteHeader(tt.status)
				if tt.status != 204 {
					io.WriteString(w, "not yet")
				}
			})
			err := New().Ready(context.Background(), tgt)
			if tt.err == "" {
				assert.NoError(t, err)
			} else {
				assert.ErrorContains(t, err, tt.err)
				assert.True(t, IsStatus(err, tt.status))
			}
		})
	}
}

func TestWaitReady(t *testing.T) {
	t.Parallel()
	fast := Poll{Interval: time.Millisecond, MaxInterval: 5 * time.Millisecond}

	t.Run("after refusals", func(t *testing.T) {
		t.Parallel()
		var gets atomic.Int32
		tgt := serve(t, func(w http.ResponseWriter, r *http.Request) {
			if gets.Add(1) <= 3 {
				http.Error(w, "starting", http.StatusServiceUnavailable)
			}
		})
		require.NoError(t, New().WaitReady(context.Background(), tgt, fast))
		assert.EqualValues(t, 4, gets.Load(), "three refusals, then ready")
	})

	t.Run("timeout", func(t *testing.T) {
		t.Parallel()
		tgt := serve(t, func(w http.ResponseWriter, r *http.Request) { http.Error(w, "starting", http.StatusServiceUnavailable) })
		p := fast
		p.Timeout = 100 * time.Millisecond
		err := New().WaitReady(context.Background(), tgt, p)
		require.ErrorIs(t, err, sandboxes.ErrNotReady)
		assert.ErrorContains(t, err, "no answer to GET /session within 100ms")
		assert.ErrorContains(t, err, "503")
	})

	t.Run("nobody listens", func(t *testing.T) {
		t.Parallel()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := ln.Addr().String()
		ln.Close()
		p := fast
		p.Timeout = 50 * time.Millisecond
		err = New().WaitReady(context.Background(), Target{Endpoint: sandboxes.Endpoint{URL: "http://" + addr}}, p)
		require.ErrorIs(t, err, sandboxes.ErrNotReady)
		assert.ErrorContains(t, err, "connection refused")
	})

	t.Run("the caller gives up", func(t *testing.T) {
		t.Parallel()
		tgt := serve(t, func(w http.ResponseWriter, r *http.Request) { http.Error(w, "starting", http.StatusServiceUnavailable) })
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		p := fast
		p.Timeout = time.Hour
		err := New().WaitReady(ctx, tgt, p)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		assert.NotErrorIs(t, err, sandboxes.ErrNotReady)
		assert.ErrorContains(t, err, "503")
	})

	t.Run("check gives up", func(t *testing.T) {
		t.Parallel()
		tgt := serve(t, func(w http.ResponseWriter, r *http.Request) { http.Error(w, "starting", http.StatusServiceUnavailable) })
		stop := errors.New("workspace failed")
		var checks atomic.Int32
		p := fast
		p.Check = func(ctx context.Context, attempt error) error {
			assert.True(t, IsStatus(attempt, http.StatusServiceUnavailable), "%v", attempt)
			if checks.Add(1) == 2 {
				return stop
			}
			return nil
		}
		assert.ErrorIs(t, New().WaitReady(context.Background(), tgt, p), stop)
		assert.EqualValues(t, 2, checks.Load())
	})

	t.Run("wake cuts a pause short", func(t *testing.T) {
		t.Parallel()
		tgt := serve(t, func(w http.ResponseWriter, r *http.Request) { http.Error(w, "starting", http.StatusServiceUnavailable) })
		exited := make(chan struct{})
		gone := errors.New("exited")
		var checks atomic.Int32
		p := Poll{Interval: time.Hour, Wake: exited, Check: func(context.Context, error) error {
			if checks.Add(1) == 1 {
				close(exited) // the process ends during the first pause
				return nil
			}
			return gone
		}}
		done := make(chan error, 1)
		go func() { done <- New().WaitReady(context.Background(), tgt, p) }()
		select {
		case err := <-done:
			assert.ErrorIs(t, err, gone)
		case <-time.After(10 * time.Second):
			t.Fatal("WaitReady slept through the wake")
		}
	})
}

// countingTransport counts the requests it carries.
type countingTransport struct{ n atomic.Int32 }

func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return http.DefaultTransport.RoundTrip(req)
}

// A Client made with NewWithClient sends everything through that client.
func TestNewWithClient(t *testing.T) {
	t.Parallel()
	tgt := serve(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/session" && r.Method == http.MethodGet {
			io.WriteString(w, `[]`)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		io.WriteString(w, answer)
	})
	var ct countingTransport
	c := NewWithClient(&http.Client{Transport: &ct})
	require.NoError(t, c.WaitReady(context.Background(), tgt, Poll{Timeout: 10 * time.Second}))
	_, err := c.SendMessage(context.Background(), tgt, hi)
	require.NoError(t, err)
	tgt.Endpoint.Proxied = true
	_, err = c.SendMessage(context.Background(), tgt, hi)
	require.NoError(t, err)
	assert.EqualValues(t, 3, ct.n.Load())
}
