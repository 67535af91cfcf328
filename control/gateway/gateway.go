// Package gateway is lapd's LLM gateway, mounted at /llm: the only way a
// sandbox reaches an LLM. A sandbox holds a stub token (sandboxtoken) in
// place of a real key; the gateway checks it, refuses a sandbox that is no
// longer live or whose budget is spent, swaps in the real upstream key, and
// relays the request to LITELLM_API_BASE (a LiteLLM proxy or any
// OpenAI/Anthropic-compatible API) or to the in-process mock models
// (mockllm). Answers are relayed unchanged, streams event by event as they
// arrive, while the usage each answer reports is priced and recorded for
// the sandbox's session and agent.
//
// Routes (relative to the mount point):
//
//	POST /v1/chat/completions        OpenAI chat completions, streamed or not
//	POST /v1/responses               OpenAI Responses API (Codex), streamed or not
//	POST /v1/messages                Anthropic messages, streamed or not
//	POST /v1/messages/count_tokens   Anthropic token counting (budget-checked, not billed)
//	GET  /v1/models                  upstream models plus the mock models
//
// /chat/completions, /responses and /models answer without the /v1 too.
//
// What is priced is what is forwarded: a request body is parsed once and
// refused if another parser could read it differently (duplicate keys,
// mistyped fields); models without a price are refused unless
// LAP_ALLOW_UNPRICED_MODELS is set; requests in flight reserve their
// estimated cost against the budget (see reserve.go); and only an
// allow-list of headers and query parameters goes upstream, so a sandbox
// cannot choose what the real key bills (OpenAI-Organization,
// OpenAI-Project).
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/prometheus/client_golang/prometheus"

	"lap.dev/lap/control/gateway/mockllm"
	"lap.dev/lap/control/sandboxtoken"
)

// TokenVerifier checks a sandbox token's signature; *sandboxtoken.Signer
// is one.
type TokenVerifier interface {
	// Verify returns the token's claims, or sandboxtoken.ErrInvalid.
	Verify(token string) (sandboxtoken.Claims, error)
}

// SandboxInfo is what the gateway needs to know about a token's sandbox.
type SandboxInfo struct {
	AgentID string
	// SessionID is the session the sandbox serves; "" for a warm sandbox
	// not yet claimed (its usage then counts for the agent only).
	SessionID string
	// Live is false once the sandbox is destroyed or failed for good; its
	// token is then refused.
	Live bool
}

// SandboxLookup finds sandboxes by id; the store implements it.
type SandboxLookup interface {
	// LookupSandbox returns what is known about the sandbox. An unknown
	// sandbox is not an error: it returns Live false. An error means the
	// lookup itself failed (the request then gets a 500).
	LookupSandbox(ctx context.Context, sandboxID string) (SandboxInfo, error)
}

// UsageRecorder adds one request's usage to its session and agent; the
// store implements it.
type UsageRecorder interface {
	// RecordUsage adds u (tokens and cost) and one request to the totals
	// of the session (skipped when sessionID is "") and of the agent.
	// model is the model the request named. It is called once per answered
	// request, after the answer has been relayed, with a context that is
	// not cancelled when the client goes away.
	RecordUsage(ctx context.Context, sessionID, agentID, model string, u Usage) error
}

// Budget is the spending limits of an agent and a session and what they
// have spent so far. A nil limit means no limit.
type Budget struct {
	AgentMaxUSD     *float64
	AgentSpentUSD   float64
	SessionMaxUSD   *float64
	SessionSpentUSD float64
}

// BudgetReader reads budgets; the store implements it.
type BudgetReader interface {
	// Budget returns the limits (max_budget_usd) and spending of the agent
	// and, when sessionID is not "", of the session.
	Budget(ctx context.Context, agentID, sessionID string) (Budget, error)
}

// Options configure a Gateway. Tokens, Sandboxes and Usage are required.
type Options struct {
	// UpstreamBase is LITELLM_API_BASE, with or without a trailing /v1;
	// "" means only mock models are answered.
	UpstreamBase string
	// UpstreamKey is LITELLM_API_KEY, sent upstream in place of the
	// sandbox's token ("" sends no key).
	UpstreamKey string
	// Timeout bounds one upstream call, streamed answers included
	// (LAP_LLM_TIMEOUT); 0 means 10 minutes.
	Timeout time.Duration
	// KeepAlive is how long a relayed stream may be silent before the
	// gateway writes an SSE comment to its client, which is how it learns
	// that the client has gone and cancels the upstream call; 0 means
	// DefaultKeepAlive.
	KeepAlive time.Duration

	Tokens    TokenVerifier
	Sandboxes SandboxLookup
	Usage     UsageRecorder
	// Budgets, when set, enforces max_budget_usd before each request.
	Budgets BudgetReader
	// Prices prices usage; nil uses DefaultPrices().
	Prices *Prices
	// AllowUnpriced lets requests for models missing from Prices through,
	// at $0 (LAP_ALLOW_UNPRICED_MODELS); by default they are refused, as
	// their spending would not count against any budget.
	AllowUnpriced bool
	// Registerer receives the gateway's Prometheus counters; nil keeps
	// them unregistered.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Transport reaches the upstream; nil uses a pooled transport cloned
	// from http.DefaultTransport.
	Transport http.RoundTripper
}

// Gateway serves /llm. It is safe for concurrent use.
type Gateway struct {
	upstream  string // base URL without /v1; "" = none
	key       string
	timeout   time.Duration
	keepAlive time.Duration
	tokens    TokenVerifier
	sandboxes SandboxLookup
	usage     UsageRecorder
	budgets   BudgetReader
	prices    *Prices
	// allowUnpriced is Options.AllowUnpriced.
	allowUnpriced bool
	metrics       *metrics
	log           *slog.Logger
	logLimit      logLimiter
	client        *http.Client // upstream
	mock          *http.Client // mock models, in-process
	ledger        ledger       // reservations of requests in flight

	unpricedMu sync.Mutex
	unpriced   map[string]struct{} // models warned about, at most maxUnpricedWarnings
}

// New returns a Gateway, or an error if a required option is missing or
// its metrics cannot be registered.
func New(opts Options) (*Gateway, error) {
	if opts.Tokens == nil || opts.Sandboxes == nil || opts.Usage == nil {
		return nil, errors.New("new gateway: Tokens, Sandboxes and Usage are required")
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("new gateway: %w", err)
	}
	g := &Gateway{
		upstream:  upstreamBase(opts.UpstreamBase),
		key:       opts.UpstreamKey,
		timeout:   opts.Timeout,
		keepAlive: opts.KeepAlive,
		tokens:    opts.Tokens,
		sandboxes: opts.Sandboxes,
		usage:     opts.Usage,
		budgets:   opts.Budgets,
		prices:    opts.Prices,

		allowUnpriced: opts.AllowUnpriced,
		metrics:       m,
		log:           opts.Logger,
		client:        &http.Client{Transport: opts.Transport},
		mock:          &http.Client{Transport: mockllm.Transport{}},
		unpriced:      map[string]struct{}{},
	}
	if g.timeout <= 0 {
		g.timeout = 10 * time.Minute
	}
	if g.keepAlive <= 0 {
		g.keepAlive = DefaultKeepAlive
	}
	if g.prices == nil {
		g.prices = DefaultPrices()
	}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	if g.client.Transport == nil {
		g.client.Transport = defaultTransport()
	}
	// Redirects would carry the real key to wherever they point.
	g.client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return g, nil
}

// DefaultKeepAlive is Options.KeepAlive's default. A gone client is
// noticed at the third comment at most (the first write after the close
// still succeeds, and fasthttp writes a stream through a pipe that learns
// of the failure one write later), so a stalled upstream call whose
// client has gone is cancelled within seconds; a comment of 14 bytes every
// 2 s of silence costs nothing.
const DefaultKeepAlive = 2 * time.Second

// defaultTransport keeps enough idle connections to the one upstream host
// for every sandbox's concurrent calls, so calls do not pay a new TCP and
// TLS handshake each.
func defaultTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 256
	t.MaxIdleConnsPerHost = 128
	t.IdleConnTimeout = 90 * time.Second
	t.DialContext = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	return t
}

// upstreamBase strips a trailing slash and /v1, as harnesses do with
// LITELLM_API_BASE, so both "http://litellm:4000" and
// "http://litellm:4000/v1" work.
func upstreamBase(base string) string {
	base = strings.TrimRight(base, "/")
	return strings.TrimSuffix(base, "/v1")
}

// Register mounts the gateway's routes on r, which lapd mounts at /llm.
// r must not carry the management API's master-key middleware: the
// gateway authenticates sandbox tokens itself.
func (g *Gateway) Register(r fiber.Router) {
	r.Post("/v1/chat/completions", g.handleCompletion(openAI))
	r.Post("/v1/responses", g.handleCompletion(openAIResponses))
	r.Post("/v1/messages", g.handleCompletion(anthropicMessages))
	r.Post("/v1/messages/count_tokens", g.handleCompletion(anthropicCountTokens))
	r.Get("/v1/models", g.handleModels)
	// Without /v1 too, as LiteLLM's proxy serves them, for OpenAI clients
	// given the gateway's URL itself as their base URL.
	r.Post("/chat/completions", g.handleCompletion(openAI))
	r.Post("/responses", g.handleCompletion(openAIResponses))
	r.Get("/models", g.handleModels)
}

// caller is an authenticated sandbox.
type caller struct {
	sandboxID, agentID, sessionID string
}

// bearer returns the token of an "Authorization: Bearer …" header value.
func bearer(h string) string {
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// authenticate accepts a live sandbox's token, sent as OpenAI clients send
// keys (Authorization: Bearer) or as Anthropic clients do (x-api-key).
func (g *Gateway) authenticate(ctx context.Context, c *fiber.Ctx) (caller, *apiError) {
	var presented []string
	for _, tok := range []string{bearer(c.Get(fiber.HeaderAuthorization)), strings.TrimSpace(c.Get("X-Api-Key"))} {
		if tok != "" {
			presented = append(presented, tok)
		}
	}
	if len(presented) == 0 {
		return caller{}, errAuth("missing sandbox token: send the sandbox's LITELLM_API_KEY as " +
			"Authorization: Bearer <token> or x-api-key: <token>")
	}
	var claims sandboxtoken.Claims
	err := sandboxtoken.ErrInvalid
	for _, tok := range presented {
		if claims, err = g.tokens.Verify(tok); err == nil {
			break
		}
	}
	if err != nil {
		return caller{}, errAuth("invalid sandbox token: /llm accepts only the per-sandbox token (" +
			sandboxtoken.Prefix + "…) that lapd gives each sandbox, not the master key or a provider key")
	}
	info, err := g.sandboxes.LookupSandbox(ctx, claims.SandboxID)
	if err != nil {
		g.log.Error("look up sandbox for LLM gateway", "sandbox", claims.SandboxID, "err", err)
		return caller{}, errInternal("look up sandbox " + short(claims.SandboxID))
	}
	if !info.Live {
		return caller{}, errAuth("sandbox " + short(claims.SandboxID) + " is no longer live; its token was revoked")
	}
	if info.AgentID != claims.AgentID {
		return caller{}, errAuth("invalid sandbox token: it names another agent than its sandbox serves")
	}
	return caller{sandboxID: claims.SandboxID, agentID: info.AgentID, sessionID: info.SessionID}, nil
}

// usd formats v in dollars with cents, or with more digits when v and
// the amount it is compared with are below ten cents, so that "spent
// $0.0041 of $0.0040" does not read as "$0.00 of $0.00".
func usd(v, other float64) string {
	if v < 0.1 && other < 0.1 {
		return fmt.Sprintf("$%.4f", v)
	}
	return fmt.Sprintf("$%.2f", v)
}

// short is the 8-character form of an id that the CLI shows.
func short(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}
