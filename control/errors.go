package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"

	"github.com/gofiber/fiber/v2"

	"lap.dev/lap/control/api"
	"lap.dev/lap/sandboxes"
	"lap.dev/lap/store"
)

// apiError is an error with the HTTP status and code the client gets.
type apiError struct {
	status int
	code   string
	msg    string
}

// Error implements error; the message is what the client reads.
func (e *apiError) Error() string { return e.msg }

func newAPIError(status int, code, format string, args ...any) error {
	return &apiError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

func badRequest(format string, args ...any) error {
	return newAPIError(http.StatusBadRequest, api.CodeBadRequest, format, args...)
}

func notFound(format string, args ...any) error {
	return newAPIError(http.StatusNotFound, api.CodeNotFound, format, args...)
}

func conflict(format string, args ...any) error {
	return newAPIError(http.StatusConflict, api.CodeConflict, format, args...)
}

func unavailable(format string, args ...any) error {
	return newAPIError(http.StatusServiceUnavailable, api.CodeUnavailable, format, args...)
}

func unprocessable(format string, args ...any) error {
	return newAPIError(http.StatusUnprocessableEntity, api.CodeUnprocessable, format, args...)
}

// ambiguous is the 409 for a short id that names several records (err
// from the store): it lists them, so the user can pick one without
// listing everything.
func ambiguous(err error, ref, kind string) error {
	var amb *store.AmbiguousError
	if !errors.As(err, &amb) {
		return conflict("%s is the start of several %s ids; give more of the id", ref, kind)
	}
	n := fmt.Sprint(len(amb.Matches))
	if amb.More {
		n = "more than " + n
	}
	return conflict("%s is the start of %s %s ids: %s; give more of the id", ref, n, kind, strings.Join(amb.Matches, ", "))
}

// harnessFailure is a turn that failed in or on the way to the harness.
func harnessFailure(format string, args ...any) error {
	return newAPIError(http.StatusBadGateway, api.CodeHarness, format, args...)
}

// codes maps statuses to error codes for errors that carry only a status
// (Fiber's own, e.g. 405 or 413 from the body limit).
var codes = map[int]string{
	http.StatusBadRequest:            api.CodeBadRequest,
	http.StatusUnauthorized:          api.CodeUnauthorized,
	http.StatusNotFound:              api.CodeNotFound,
	http.StatusMethodNotAllowed:      api.CodeBadRequest,
	http.StatusConflict:              api.CodeConflict,
	http.StatusRequestEntityTooLarge: api.CodeTooLarge,
	http.StatusUnsupportedMediaType:  api.CodeUnsupportedMedia,
	http.StatusUnprocessableEntity:   api.CodeUnprocessable,
	http.StatusTooManyRequests:       api.CodeTooManyRequests,
	http.StatusBadGateway:            api.CodeHarness,
	http.StatusServiceUnavailable:    api.CodeUnavailable,
	http.StatusGatewayTimeout:        api.CodeTimeout,
}

// classify turns any error into the status and body the client gets. It
// is the one place where errors become HTTP.
func classify(err error) (int, api.ErrorDetail) {
	var ae *apiError
	var fe *fiber.Error
	switch {
	case errors.As(err, &ae):
		return ae.status, api.ErrorDetail{Code: ae.code, Message: ae.msg}
	case errors.As(err, &fe):
		code, ok := codes[fe.Code]
		if !ok {
			code = api.CodeInternal
			if fe.Code < 500 {
				code = api.CodeBadRequest
			}
		}
		msg := fe.Message
		if fe.Code == http.StatusRequestEntityTooLarge {
			msg = fmt.Sprintf("request body is larger than %d bytes", maxBodyBytes)
		}
		return fe.Code, api.ErrorDetail{Code: code, Message: msg}
	case errors.Is(err, store.ErrNotFound):
		return http.StatusNotFound, api.ErrorDetail{Code: api.CodeNotFound, Message: err.Error()}
	case errors.Is(err, store.ErrConflict):
		return http.StatusConflict, api.ErrorDetail{Code: api.CodeConflict, Message: err.Error()}
	case errors.Is(err, store.ErrInvalidCursor):
		return http.StatusBadRequest, api.ErrorDetail{Code: api.CodeBadRequest, Message: err.Error()}
	case errors.Is(err, sandboxes.ErrCapacity):
		return http.StatusTooManyRequests, api.ErrorDetail{Code: api.CodeTooManyRequests, Message: err.Error()}
	case errors.Is(err, sandboxes.ErrNotReady):
		return http.StatusServiceUnavailable, api.ErrorDetail{Code: api.CodeUnavailable, Message: err.Error()}
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return http.StatusServiceUnavailable, api.ErrorDetail{Code: api.CodeUnavailable,
			Message: "lapd's data dir is full; nothing was written: " + err.Error()}
	case errors.Is(err, store.ErrClosed):
		return http.StatusServiceUnavailable, api.ErrorDetail{Code: api.CodeUnavailable, Message: "lapd is shutting down"}
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, api.ErrorDetail{Code: api.CodeTimeout, Message: err.Error()}
	}
	return http.StatusInternalServerError, api.ErrorDetail{Code: api.CodeInternal, Message: "internal error: " + err.Error()}
}

// handleError is Fiber's ErrorHandler: every error response of lapd, in
// the ARCHITECTURE §4 shape.
func (s *Server) handleError(c *fiber.Ctx, err error) error {
	status, detail := classify(err)
	if status >= 500 && status != http.StatusServiceUnavailable {
		s.log.Error("request failed", "method", c.Method(), "path", c.Path(), "status", status, "err", err)
	}
	if status == http.StatusUnauthorized {
		c.Set(fiber.HeaderWWWAuthenticate, `Bearer realm="lap"`)
	}
	return c.Status(status).JSON(api.ErrorBody{Error: detail})
}

// decodeJSONError explains a JSON decoding failure to the client.
func decodeJSONError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return badRequest("malformed JSON at byte %d: %v", syn.Offset, err)
	case errors.As(err, &typ):
		if typ.Field != "" {
			return badRequest("field %q: want %s, got JSON %s", typ.Field, typ.Type, typ.Value)
		}
		return badRequest("body: want a JSON %s, got %s", typ.Type, typ.Value)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return badRequest("malformed JSON: unexpected end of body")
	}
	return badRequest("invalid JSON body: %v", err)
}
