package gateway_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/gateway"
	"lap.dev/lap/control/sandboxtoken"
)

// The real upstream key; it must reach the upstream and nothing else.
const secret = "sk-real-upstream-secret-0123456789"

// IDs of the live sandbox every test calls from.
const (
	agentID   = "0193a1b2-aaaa-7000-8000-000000000001"
	sessionID = "0193c3d4-bbbb-7000-8000-000000000002"
	sandboxID = "0193e5f6-cccc-7000-8000-000000000003"
)

// record is one RecordUsage call.
type record struct {
	SessionID, AgentID, Model string
	Usage                     gateway.Usage
}

// fakeStore stands in for lapd's store: sandboxes, usage totals and
// budgets, the way the store will keep them.
type fakeStore struct {
	mu           sync.Mutex
	sandboxes    map[string]gateway.SandboxInfo
	records      []record
	agentMax     map[string]float64
	sessionMax   map[string]float64
	agentSpent   map[string]float64
	sessionSpent map[string]float64
	recorded     chan struct{} // receives after every RecordUsage
}

func newFakeStore() *fakeStore {
	return &fakeStore{
		sandboxes:    map[string]gateway.SandboxInfo{sandboxID: {AgentID: agentID, SessionID: sessionID, Live: true}},
		agentMax:     map[string]float64{},
		sessionMax:   map[string]float64{},
		agentSpent:   map[string]float64{},
		sessionSpent: map[string]float64{},
		recorded:     make(chan struct{}, 100),
	}
}

func (s *fakeStore) LookupSandbox(_ context.Context, id string) (gateway.SandboxInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sandboxes[id], nil
}

func (s *fakeStore) RecordUsage(_ context.Context, session, agent, model string, u gateway.Usage) error {
	s.mu.Lock()
	s.records = append(s.records, record{session, agent, model, u})
	s.agentSpent[agent] += u.CostUSD
	if session != "" {
		s.sessionSpent[session] += u.CostUSD
	}
	s.mu.Unlock()
	select {
	case s.recorded <- struct{}{}:
	default: // a waiter re-checks the records anyway
	}
	return nil
}

func (s *fakeStore) Budget(_ context.Context, agent, session string) (gateway.Budget, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := gateway.Budget{AgentSpentUSD: s.agentSpent[agent], SessionSpentUSD: s.sessionSpent[session]}
	if v, ok := s.agentMax[agent]; ok {
		b.AgentMaxUSD = &v
	}
	if v, ok := s.sessionMax[session]; ok {
		b.SessionMaxUSD = &v
	}
	return b, nil
}

func (s *fakeStore) setSandbox(id string, info gateway.SandboxInfo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sandboxes[id] = info
}

func (s *fakeStore) Records() []record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]record(nil), s.records...)
}

// waitRecords waits until n usage records exist; a stream records after
// its last byte has reached the client, so a client may get there first.
func (s *fakeStore) waitRecords(t *testing.T, n int) []record {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for len(s.Records()) < n {
		select {
		case <-s.recorded:
		case <-deadline:
			t.Fatalf("waited for %d usage records, have %d", n, len(s.Records()))
		}
	}
	return s.Records()
}

// seenRequest is a request as the fake upstream received it.
type seenRequest struct {
	Method, Path, RawQuery string
	Header                 http.Header
	Body                   []byte
}

// fakeUpstream is a minimal OpenAI/Anthropic-compatible API on loopback
// whose answers each test scripts.
type fakeUpstream struct {
	URL string
	mu  sync.Mutex
	got []seenRequest
	// answer is the test's script.
	answer http.HandlerFunc
}

func newFakeUpstream(t testing.TB, answer http.HandlerFunc) *fakeUpstream {
	t.Helper()
	u := &fakeUpstream{answer: answer}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.got = append(u.got, seenRequest{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Clone(), body})
		u.mu.Unlock()
		r.Body = io.NopCloser(strings.NewReader(string(body)))
		u.answer(w, r)
	}))
	t.Cleanup(srv.Close)
	u.URL = srv.URL
	return u
}

func (u *fakeUpstream) Requests() []seenRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]seenRequest(nil), u.got...)
}

// writeEvents writes server-sent events, flushing after each.
func writeEvents(w http.ResponseWriter, events ...string) {
	for _, ev := range events {
		io.WriteString(w, ev)
		w.(http.Flusher).Flush()
	}
}

func jsonAnswer(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

// env is a gateway on loopback, mounted at /llm of a Fiber app as lapd
// mounts it, with a fake store behind it.
type env struct {
	URL    string // …/llm
	store  *fakeStore
	signer *sandboxtoken.Signer
	token  string // the live sandbox's token
	reg    *prometheus.Registry
}

func newEnv(t testing.TB, upstreamURL string, configure ...func(*gateway.Options)) *env {
	t.Helper()
	e := &env{
		store:  newFakeStore(),
		signer: sandboxtoken.NewSigner([]byte("test-signing-key-0123456789abcdef")),
		reg:    prometheus.NewRegistry(),
	}
	e.token = e.signer.Mint(sandboxtoken.Claims{SandboxID: sandboxID, AgentID: agentID})
	opts := gateway.Options{
		UpstreamBase: upstreamURL,
		UpstreamKey:  secret,
		Tokens:       e.signer,
		Sandboxes:    e.store,
		Usage:        e.store,
		Budgets:      e.store,
		Registerer:   e.reg,
	}
	for _, f := range configure {
		f(&opts)
	}
	g, err := gateway.New(opts)
	require.NoError(t, err)
	app := fiber.New(fiber.Config{DisableStartupMessage: true})
	g.Register(app.Group("/llm"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go app.Listener(ln)
	t.Cleanup(func() { app.ShutdownWithTimeout(5 * time.Second) })
	e.URL = "http://" + ln.Addr().String() + "/llm"
	return e
}

// client has a deadline so that a gateway that buffers a stream the test
// waits on fails the test instead of hanging it.
var client = &http.Client{Timeout: 60 * time.Second}

// post sends body to path with the headers (name, value pairs).
func (e *env) post(t testing.TB, path, body string, headers ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.URL+path, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := client.Do(req)
	require.NoError(t, err)
	return resp
}

func readAll(t testing.TB, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

// readEvent reads one server-sent event (up to its blank line).
func readEvent(t testing.TB, br *bufio.Reader) string {
	t.Helper()
	var ev strings.Builder
	for {
		line, err := br.ReadString('\n')
		require.NoError(t, err, "read event, got so far %q", ev.String())
		ev.WriteString(line)
		if line == "\n" || line == "\r\n" {
			return ev.String()
		}
	}
}

// errorOf decodes an error body in either dialect: OpenAI's
// {"error":{"type","code","message"}} or Anthropic's
// {"type":"error","error":{"type","message"}}.
type errorBody struct {
	Type  string `json:"type"`
	Error struct {
		Type    string `json:"type"`
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func errorOf(t *testing.T, body string) errorBody {
	t.Helper()
	var e errorBody
	require.NoError(t, json.Unmarshal([]byte(body), &e), "error body %q", body)
	return e
}
