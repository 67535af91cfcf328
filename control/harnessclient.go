package control

import (
	"context"

	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/harnessclient"
	"lap.dev/lap/sandboxes/protocol"
)

// target says where one session's harness is: the sandbox's endpoint and
// token and the session inside the harness.
type target struct {
	sandboxID string
	endpoint  sandboxes.Endpoint
	token     string
	sessionID string // the harness's session id
}

// wire is the harness client's view of t.
func (t target) wire() harnessclient.Target {
	return harnessclient.Target{Endpoint: t.endpoint, Token: t.token, Session: t.sessionID}
}

// harnessClient is lapd's harness client (ARCHITECTURE §5, see package
// harnessclient), called with the control plane's targets.
type harnessClient struct {
	*harnessclient.Client
}

func newHarnessClient() *harnessClient { return &harnessClient{harnessclient.New()} }

// isStatus reports whether err is a harness answer with that status.
func isStatus(err error, status int) bool { return harnessclient.IsStatus(err, status) }

// notSent reports whether err means the request never reached a harness,
// so retrying it after bringing the harness back cannot run a turn twice.
func notSent(err error) bool { return harnessclient.NotSent(err) }

func (h *harnessClient) createSession(ctx context.Context, t target, req protocol.CreateSessionRequest) (protocol.SessionInfo, error) {
	return h.CreateSession(ctx, t.wire(), req)
}

// getSession reads the harness session t.sessionID: cheap (no write on
// the harness's side), it tells that the harness is up and has it.
func (h *harnessClient) getSession(ctx context.Context, t target) (protocol.SessionInfo, error) {
	return h.GetSession(ctx, t.wire())
}

// sendMessage runs a turn; an error for which notSent holds proves that
// the harness never had the message.
func (h *harnessClient) sendMessage(ctx context.Context, t target, req protocol.SendMessageRequest) (protocol.Message, error) {
	return h.SendMessage(ctx, t.wire(), req)
}

func (h *harnessClient) abort(ctx context.Context, t target) error {
	return h.Abort(ctx, t.wire())
}

func (h *harnessClient) identity(ctx context.Context, t target) (protocol.Identity, error) {
	return h.Identity(ctx, t.wire())
}

// eventStream reads a harness's GET /event.
type eventStream struct{ *harnessclient.Events }

// openEvents subscribes to the harness's events and returns once the
// harness confirmed the subscription, so no event of a turn started
// afterwards can be missed.
func (h *harnessClient) openEvents(ctx context.Context, t target) (*eventStream, error) {
	es, err := h.Events(ctx, t.wire())
	if err != nil {
		return nil, err
	}
	return &eventStream{es}, nil
}

// next returns the next event; io.EOF when the stream ends.
func (es *eventStream) next() (protocol.Event, error) { return es.Next() }

func (es *eventStream) close() { es.Close() }
