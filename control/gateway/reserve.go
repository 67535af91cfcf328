package gateway

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"

	"github.com/anthropics/anthropic-sdk-go/v2"
)

// Budgets are enforced with reservations, so that requests in flight
// count before their usage is known:
//
//   - Admission: a billed request is let through only while the session's
//     and the agent's spending plus what requests in flight have reserved
//     is below the limit (max_budget_usd). When the spending alone reaches
//     the limit the answer is 402; when only reservations do, 429 (retry
//     once they settle).
//   - Reservation: an admitted request reserves its estimated cost (see
//     estimateUSD) against its session and agent.
//   - Settlement: when the answer ends its real cost is recorded and the
//     reservation released, in one step under the agent's lock, so no
//     admission sees neither. An answer that reported no usage (a stream
//     cut short, an upstream that does not report it) is charged its
//     reservation; an error answer is charged nothing.
//
// So concurrent requests of one session or agent exceed its limit by at
// most the cost of the one request admitted last (while some budget was
// unreserved) plus whatever real costs exceed their reservations — none,
// when requests state max_tokens and prompts take at least
// bytesPerTokenEstimate bytes of JSON per token. Reservations live in
// lapd's memory: they bound one lapd's concurrent requests.

// bytesPerTokenEstimate is how many bytes of request body the reservation
// counts per prompt token: tokenizers average 3–4 bytes of text per token,
// and JSON framing and escaping add more bytes, so 2 over-reserves.
const bytesPerTokenEstimate = 2

// defaultOutputReserve is the output the reservation counts for a request
// that sets no max_tokens (OpenAI's is optional): the default output limit
// of most current models.
const defaultOutputReserve = 16384

// estimateUSD is the reservation of a request of bodyBytes at price p: an
// upper estimate of what it can cost.
func estimateUSD(p Price, bodyBytes int, r request) float64 {
	input := p.InputCostPerToken
	if p.CacheCreationInputTokenCost != nil {
		input = max(input, *p.CacheCreationInputTokenCost)
	}
	output := r.maxOutput
	if output == 0 {
		output = defaultOutputReserve
	}
	tokens := math.Ceil(float64(bodyBytes) / bytesPerTokenEstimate)
	return tokens*input + float64(output)*float64(r.choices)*p.OutputCostPerToken
}

// ledger holds the reservations of requests in flight, per agent.
type ledger struct {
	mu       sync.Mutex
	accounts map[string]*account // by agent id, while it has requests in flight
}

// account is one agent's reservations.
type account struct {
	// mu is held while a request reads the budget and reserves, and while
	// one records its usage and releases its reservation.
	mu       sync.Mutex
	refs     int // requests holding the account; guarded by ledger.mu
	agent    float64
	sessions map[string]float64
}

func (l *ledger) hold(agentID string) *account {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.accounts == nil {
		l.accounts = map[string]*account{}
	}
	a := l.accounts[agentID]
	if a == nil {
		a = &account{sessions: map[string]float64{}}
		l.accounts[agentID] = a
	}
	a.refs++
	return a
}

func (l *ledger) unhold(agentID string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if a := l.accounts[agentID]; a != nil {
		if a.refs--; a.refs <= 0 {
			delete(l.accounts, agentID)
		}
	}
}

// reservation is one admitted request's hold on its budget.
type reservation struct {
	ledger    *ledger
	account   *account // nil without budgets
	agentID   string
	sessionID string
	amount    float64
	once      sync.Once
}

// settle runs record (which records the request's usage; nil records
// nothing) and releases the reservation, atomically for admissions of the
// same agent. Only the first call does anything.
func (r *reservation) settle(record func()) {
	r.once.Do(func() {
		if r.account == nil {
			if record != nil {
				record()
			}
			return
		}
		a := r.account
		a.mu.Lock()
		if record != nil {
			record()
		}
		a.agent = unreserve(a.agent, r.amount)
		if r.sessionID != "" {
			if left := unreserve(a.sessions[r.sessionID], r.amount); left > 0 {
				a.sessions[r.sessionID] = left
			} else {
				delete(a.sessions, r.sessionID)
			}
		}
		a.mu.Unlock()
		r.ledger.unhold(r.agentID)
	})
}

// release gives the reservation back without recording anything.
func (r *reservation) release() { r.settle(nil) }

func unreserve(total, amount float64) float64 {
	if left := total - amount; left > 1e-12 {
		return left
	}
	return 0
}

// admit checks who's budgets and reserves amount against them. With no
// BudgetReader every request is admitted.
func (g *Gateway) admit(ctx context.Context, who caller, amount float64) (*reservation, *apiError) {
	r := &reservation{ledger: &g.ledger, agentID: who.agentID, sessionID: who.sessionID, amount: amount}
	if g.budgets == nil {
		return r, nil
	}
	a := g.ledger.hold(who.agentID)
	a.mu.Lock()
	defer a.mu.Unlock()
	b, err := g.budgets.Budget(ctx, who.agentID, who.sessionID)
	if err != nil {
		g.ledger.unhold(who.agentID)
		g.log.Error("read budget for LLM gateway", "agent", who.agentID, "session", who.sessionID, "err", err)
		return nil, errInternal("read budget of agent " + short(who.agentID))
	}
	if who.sessionID != "" && b.SessionMaxUSD != nil {
		if aerr := overBudget("session", who.sessionID, b.SessionSpentUSD, a.sessions[who.sessionID], *b.SessionMaxUSD,
			"start a new session or raise the session's budget"); aerr != nil {
			g.ledger.unhold(who.agentID)
			return nil, aerr
		}
	}
	if b.AgentMaxUSD != nil {
		if aerr := overBudget("agent", who.agentID, b.AgentSpentUSD, a.agent, *b.AgentMaxUSD,
			"raise it with PATCH /agents/"+who.agentID); aerr != nil {
			g.ledger.unhold(who.agentID)
			return nil, aerr
		}
	}
	a.agent += amount
	if who.sessionID != "" {
		a.sessions[who.sessionID] += amount
	}
	r.account = a
	return r, nil
}

// overBudget refuses a request when spent, or spent plus the reservations
// of requests in flight, reaches limit.
func overBudget(kind, id string, spent, reserved, limit float64, remedy string) *apiError {
	if spent >= limit {
		return errBudget(fmt.Sprintf("budget exceeded: %s %s spent %s of its %s limit (max_budget_usd); %s",
			kind, short(id), usd(spent, limit), usd(limit, spent), remedy))
	}
	if spent+reserved >= limit {
		return errBudgetReserved(fmt.Sprintf("budget reserved: %s %s spent %s of its %s limit (max_budget_usd) and "+
			"LLM requests in flight have reserved the rest (%s); retry when they have finished",
			kind, short(id), usd(spent, limit), usd(limit, spent), usd(reserved, limit)))
	}
	return nil
}

// retryReserved is the Retry-After of a request refused because requests
// in flight hold the rest of the budget.
const retryReserved = 5

// errBudgetReserved is 429: the refusal lasts only until requests in
// flight settle, which is what SDKs retry 429 for.
func errBudgetReserved(msg string) *apiError {
	return &apiError{http.StatusTooManyRequests, "rate_limit_exceeded", "budget_reserved",
		anthropic.ErrorTypeRateLimitError, msg}
}

// retryAfter is the Retry-After header value of e, "" for none.
func retryAfter(e *apiError) string {
	if e.openAICode == "budget_reserved" {
		return strconv.Itoa(retryReserved)
	}
	return ""
}
