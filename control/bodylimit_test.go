package control

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptrace"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/gofiber/fiber/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/api"
	"lap.dev/lap/control/gateway"
	"lap.dev/lap/control/sandboxtoken"
	"lap.dev/lap/internal/waitfor"
)

// noSandboxes knows no sandbox: every gateway token is refused.
type noSandboxes struct{}

func (noSandboxes) LookupSandbox(context.Context, string) (gateway.SandboxInfo, error) {
	return gateway.SandboxInfo{}, nil
}

func (noSandboxes) RecordUsage(context.Context, string, string, string, gateway.Usage) error {
	return nil
}

// llmGroup is the LLM gateway as lapd mounts it: its own auth, 32 MiB
// bodies.
func llmGroup(t *testing.T) RouteGroup {
	t.Helper()
	g, err := gateway.New(gateway.Options{
		Tokens:    sandboxtoken.NewSigner([]byte("bodylimit-test-signing-key-0123")),
		Sandboxes: noSandboxes{},
		Usage:     noSandboxes{},
	})
	require.NoError(t, err)
	return RouteGroup{Prefix: "/llm", OwnAuth: true, BodyLimit: 32 << 20, Register: g.Register}
}

// TestUnauthenticatedBodiesAreNotRead sends large POSTs without a token,
// concurrently, to the gateway and to the management API, and measures
// what the server allocated meanwhile: a body is read only once its
// caller is authenticated, so nothing near the bodies' size. (Before,
// every body was read in full first: 20 such POSTs of 31 MB took lapd
// from 51 MB to 675 MB of RSS.)
func TestUnauthenticatedBodiesAreNotRead(t *testing.T) {
	// Not parallel: it measures the process's allocations.
	e := newEnv(t, envOptions{groups: []RouteGroup{llmGroup(t)}})
	const n, size = 6, 16 << 20
	body := strings.Repeat("x", size)
	paths := []string{"/llm/v1/chat/completions", "/llm/v1/messages", api.BasePath + "/agents"}

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var wg sync.WaitGroup
	var answered atomic.Int32
	for i := range n {
		for _, path := range paths {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, err := http.NewRequest(http.MethodPost, e.url+path, strings.NewReader(body))
				if !assert.NoError(t, err) {
					return
				}
				req.Header.Set("Content-Type", "application/json")
				resp, err := e.client.Do(req)
				if err != nil {
					// The server may close the connection of a body it
					// will not read while the client is still sending.
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				assert.Contains(t, []int{http.StatusUnauthorized, http.StatusServiceUnavailable}, resp.StatusCode,
					"POST %s #%d without a token", path, i)
				if resp.StatusCode != http.StatusOK {
					answered.Add(1)
				}
			}()
		}
	}
	wg.Wait()
	runtime.ReadMemStats(&after)
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("%d POSTs of %d MiB without a token: %d MiB allocated while serving them; %d answered",
		n*len(paths), size>>20, allocated>>20, answered.Load())
	assert.Less(t, allocated, uint64(size), "allocated %d MiB", allocated>>20)
}

// sizeGroup is a route group with its own body limit whose handler
// answers the size of the body it read.
func sizeGroup(prefix string, limit int, block <-chan struct{}, arrived *atomic.Int32) RouteGroup {
	return RouteGroup{Prefix: prefix, OwnAuth: true, BodyLimit: limit, Register: func(r fiber.Router) {
		r.Post("/", func(c *fiber.Ctx) error {
			n := len(c.Body())
			if arrived != nil {
				arrived.Add(1)
			}
			if block != nil {
				<-block
			}
			return c.SendString(strconv.Itoa(n))
		})
	}}
}

// postBody sends body to path (chunked when chunked is set, as a reader of
// unknown length), with the master key.
func (e *env) postBody(t *testing.T, path string, body []byte, chunked bool, headers ...string) (int, string) {
	t.Helper()
	var r io.Reader = bytes.NewReader(body)
	if chunked {
		r = io.MultiReader(r) // hides the length: sent chunked
	}
	req, err := http.NewRequest(http.MethodPost, e.url+path, r)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+testKey)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := e.client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// TestBodyLimitsPerRoute: the management API takes 1 MiB bodies and a
// route group its own limit, whether the length is announced or the body
// comes chunked; compressed bodies are refused (they would be inflated
// whole).
func TestBodyLimitsPerRoute(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{groups: []RouteGroup{sizeGroup("/big", 4<<20, nil, nil)}})
	tests := []struct {
		name    string
		path    string
		size    int
		chunked bool
		status  int
		want    string
	}{
		{"group, within", "/big", 3 << 20, false, http.StatusOK, "3145728"},
		{"group, within, chunked", "/big", 3 << 20, true, http.StatusOK, "3145728"},
		{"group, over", "/big", 5 << 20, false, http.StatusRequestEntityTooLarge, "larger than 4194304 bytes"},
		{"group, over, chunked", "/big", 5 << 20, true, http.StatusRequestEntityTooLarge, "larger than 4194304 bytes"},
		{"api, over", api.BasePath + "/agents", 2 << 20, false, http.StatusRequestEntityTooLarge, "larger than 1048576 bytes"},
		{"api, over, chunked", api.BasePath + "/agents", 2 << 20, true, http.StatusRequestEntityTooLarge, "larger than 1048576 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			status, body := e.postBody(t, tt.path, bytes.Repeat([]byte("x"), tt.size), tt.chunked)
			assert.Equal(t, tt.status, status, "body %s", body)
			assert.Contains(t, body, tt.want)
		})
	}
	t.Run("gzip", func(t *testing.T) {
		t.Parallel()
		status, body := e.postBody(t, "/big", []byte("x"), false, "Content-Encoding", "gzip")
		assert.Equal(t, http.StatusUnsupportedMediaType, status, "body %s", body)
		assert.Contains(t, body, "send them uncompressed")
	})
}

// TestBodyBytesInFlightAreBounded: bodies being served hold their length
// against a bound across requests; past it, requests are refused with 503
// until others finish.
func TestBodyBytesInFlightAreBounded(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var arrived atomic.Int32
	e := newEnv(t, envOptions{groups: []RouteGroup{sizeGroup("/slow", 4<<20, release, &arrived)}})
	e.srv.bodies.max = 5 << 19 // 2.5 MiB
	body := bytes.Repeat([]byte("x"), 1<<20)

	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, got := e.postBody(t, "/slow", body, false)
			assert.Equal(t, http.StatusOK, status, "body %s", got)
		}()
	}
	waitfor.Cond(t, "two requests in their handler", func() bool { return arrived.Load() == 2 })
	status, got := e.postBody(t, "/slow", body, false)
	assert.Equal(t, http.StatusServiceUnavailable, status, "body %s", got)
	assert.Contains(t, got, "retry shortly")
	close(release)
	wg.Wait()
	status, got = e.postBody(t, "/slow", body, false)
	assert.Equal(t, http.StatusOK, status, "after the others finished: body %s", got)
}

// TestUnreadSmallBodyKeepsTheConnection: a body refused before it was
// read (401) is discarded, so the client reads the answer and its
// connection serves the next request.
func TestUnreadSmallBodyKeepsTheConnection(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	var reused []bool
	for range 2 {
		trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { reused = append(reused, info.Reused) }}
		req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace),
			http.MethodPost, e.url+api.BasePath+"/agents", bytes.NewReader(bytes.Repeat([]byte("x"), 100<<10)))
		require.NoError(t, err)
		resp, err := e.client.Do(req)
		require.NoError(t, err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	}
	assert.Equal(t, []bool{false, true}, reused, "the second request reuses the connection")
}
