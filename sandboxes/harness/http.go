package harness

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"lap.dev/lap/sandboxes/protocol"
)

// maxBodyBytes bounds a request body (a message with pasted files, a
// session with its history).
const maxBodyBytes = 32 << 20

// Error codes of the harness's error bodies, the same words lapd's API uses.
const (
	codeBadRequest   = "bad_request"
	codeUnauthorized = "unauthorized"
	codeNotFound     = "not_found"
	codeConflict     = "conflict"
	codeTooLarge     = "payload_too_large"
	codeInternal     = "internal"
	codeUnavailable  = "unavailable"
)

// httpError is an error with the status and code it is answered with.
type httpError struct {
	status int
	code   string
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func errorf(status int, code, format string, args ...any) *httpError {
	return &httpError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

// errorBody is {"error":{"code","message"}}, as lapd's API answers.
type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.serveIdentity)
	mux.HandleFunc("GET /session", s.handle(s.listSessions))
	mux.HandleFunc("POST /session", s.handle(s.createSession))
	mux.HandleFunc("GET /session/{id}", s.handle(s.getSession))
	mux.HandleFunc("DELETE /session/{id}", s.handle(s.deleteSession))
	mux.HandleFunc("GET /session/{id}/message", s.handle(s.listMessages))
	mux.HandleFunc("POST /session/{id}/message", s.handle(s.sendMessage))
	mux.HandleFunc("POST /session/{id}/prompt_async", s.handle(s.promptAsync))
	mux.HandleFunc("POST /session/{id}/abort", s.handle(s.abortSession))
	mux.HandleFunc("GET /event", s.serveEvents)
	mux.HandleFunc("/", s.handle(func(r *http.Request) (int, any, error) {
		return 0, nil, errorf(http.StatusNotFound, codeNotFound, "no route %s %s", r.Method, r.URL.Path)
	}))
	return s.authenticate(mux)
}

// authenticate requires the bearer token on every route but GET /.
func (s *Server) authenticate(next http.Handler) http.Handler {
	want := []byte(protocol.Bearer(s.cfg.AuthToken))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		open := s.cfg.AuthToken == "" || (r.Method == http.MethodGet && r.URL.Path == "/")
		if !open && subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			writeError(w, errorf(http.StatusUnauthorized, codeUnauthorized, "missing or wrong bearer token"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// handle adapts a handler returning (status, body, error) to net/http, so
// errors are turned into responses in one place.
func (s *Server) handle(fn func(r *http.Request) (int, any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
		status, body, err := fn(r)
		if err != nil {
			var he *httpError
			if !errors.As(err, &he) {
				s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
				he = errorf(http.StatusInternalServerError, codeInternal, "%s", err.Error())
			}
			writeError(w, he)
			return
		}
		if status == http.StatusNoContent {
			w.WriteHeader(status)
			return
		}
		writeJSON(w, status, body)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, e *httpError) {
	var b errorBody
	b.Error.Code, b.Error.Message = e.code, e.msg
	writeJSON(w, e.status, b)
}

// decodeBody reads an optional JSON body into v; an empty body leaves v
// as it is.
func decodeBody(r *http.Request, v any) error {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return errorf(http.StatusRequestEntityTooLarge, codeTooLarge, "body larger than %d bytes", tooLarge.Limit)
		}
		return errorf(http.StatusBadRequest, codeBadRequest, "read body: %v", err)
	}
	if len(b) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return errorf(http.StatusBadRequest, codeBadRequest, "parse body: %v", err)
	}
	return nil
}

// serveIdentity is GET /: who this harness is and whether its workspace
// is ready. It needs no token, so a failed clone can be diagnosed.
func (s *Server) serveIdentity(w http.ResponseWriter, _ *http.Request) {
	ready, errText := s.ws.status()
	writeJSON(w, http.StatusOK, protocol.Identity{
		Harness:   Name,
		Version:   s.cfg.Version,
		Ready:     ready,
		Workspace: s.repo,
		Error:     errText,
	})
}

// listSessions is GET /session, the readiness probe: 503 until the
// workspace is prepared (with the clone error if it failed), then every
// session.
func (s *Server) listSessions(*http.Request) (int, any, error) {
	if err := s.requireReady(); err != nil {
		return 0, nil, err
	}
	list := s.sessionList()
	infos := make([]protocol.SessionInfo, len(list))
	for i, sess := range list {
		infos[i] = sess.info()
	}
	return http.StatusOK, infos, nil
}

// requireReady returns a 503 error while the workspace is not prepared.
func (s *Server) requireReady() error {
	ready, errText := s.ws.status()
	switch {
	case ready:
		return nil
	case errText != "":
		return errorf(http.StatusServiceUnavailable, codeUnavailable, "workspace failed: %s", errText)
	default:
		msg, _ := s.ws.progress()
		return errorf(http.StatusServiceUnavailable, codeUnavailable, "workspace not ready: %s", msg)
	}
}

func (s *Server) createSession(r *http.Request) (int, any, error) {
	var req protocol.CreateSessionRequest
	if err := decodeBody(r, &req); err != nil {
		return 0, nil, err
	}
	sess, err := s.newSession(req)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, sess.info(), nil
}

// pathSession returns the session named by the {id} path value, or 404.
func (s *Server) pathSession(r *http.Request) (*session, error) {
	id := r.PathValue("id")
	sess, ok := s.session(id)
	if !ok {
		return nil, errorf(http.StatusNotFound, codeNotFound, "session %s not found", id)
	}
	return sess, nil
}

func (s *Server) getSession(r *http.Request) (int, any, error) {
	sess, err := s.pathSession(r)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, sess.info(), nil
}

func (s *Server) listMessages(r *http.Request) (int, any, error) {
	sess, err := s.pathSession(r)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, sess.messages(), nil
}

// deleteSession aborts the session's turn, if any, and removes it and its
// transcript. It answers true, as opencode does.
func (s *Server) deleteSession(r *http.Request) (int, any, error) {
	sess, err := s.pathSession(r)
	if err != nil {
		return 0, nil, err
	}
	if err := s.removeSession(r.Context(), sess); err != nil {
		return 0, nil, err
	}
	return http.StatusOK, true, nil
}

// abortSession interrupts the running turn and answers once it has ended:
// true if a turn was running, false if the session was idle.
func (s *Server) abortSession(r *http.Request) (int, any, error) {
	sess, err := s.pathSession(r)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, sess.abort(r.Context()), nil
}

// sendMessage is POST /session/:id/message: it runs a turn and answers
// with the assistant message when the turn ends. LLM failures and aborts
// are a 200 with info.error; the turn goes on if the client goes away.
func (s *Server) sendMessage(r *http.Request) (int, any, error) {
	t, err := s.startTurnFromRequest(r)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, t.wait(), nil
}

// promptAsync is POST /session/:id/prompt_async: it starts a turn and
// answers 204 at once; the turn's progress is on GET /event.
func (s *Server) promptAsync(r *http.Request) (int, any, error) {
	if _, err := s.startTurnFromRequest(r); err != nil {
		return 0, nil, err
	}
	return http.StatusNoContent, nil, nil
}

func (s *Server) startTurnFromRequest(r *http.Request) (*turn, error) {
	sess, err := s.pathSession(r)
	if err != nil {
		return nil, err
	}
	var req protocol.SendMessageRequest
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	return s.startTurn(sess, req)
}
