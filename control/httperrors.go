package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"syscall"

	"github.com/gofiber/fiber/v2"

	"lap.dev/lap/control/api"
	"lap.dev/lap/sandboxes"
	"lap.dev/lap/store"
)

// kindStatus is the HTTP status and error code of each kind of failure.
var kindStatus = []struct {
	kind   error
	status int
	code   string
}{
	{errInvalid, http.StatusBadRequest, api.CodeBadRequest},
	{errUnauthorized, http.StatusUnauthorized, api.CodeUnauthorized},
	{errNotFound, http.StatusNotFound, api.CodeNotFound},
	{errConflict, http.StatusConflict, api.CodeConflict},
	{errBusy, http.StatusConflict, api.CodeConflict},
	{errEnded, http.StatusConflict, api.CodeConflict},
	{errFailed, http.StatusConflict, api.CodeConflict},
	{errNotReady, http.StatusConflict, api.CodeConflict},
	{errAborted, http.StatusConflict, api.CodeConflict},
	{errUnsupportedMedia, http.StatusUnsupportedMediaType, api.CodeUnsupportedMedia},
	{errTooLarge, http.StatusRequestEntityTooLarge, api.CodeTooLarge},
	{errUnprocessable, http.StatusUnprocessableEntity, api.CodeUnprocessable},
	{errHarness, http.StatusBadGateway, api.CodeHarness},
	{errUnavailable, http.StatusServiceUnavailable, api.CodeUnavailable},
	{errTimeout, http.StatusGatewayTimeout, api.CodeTimeout},
}

// newAPIError is a refusal of the HTTP layer itself (authentication,
// media type), made with the status it answers with: it becomes the
// first kind of failure with that status and code.
func newAPIError(status int, code, format string, args ...any) error {
	for _, k := range kindStatus {
		if k.status == status && k.code == code {
			return errorf(k.kind, format, args...)
		}
	}
	panic(fmt.Sprintf("control: no kind of failure answers %d %s", status, code))
}

// nextStep is what the API adds to an operation's message: the request
// that gets the client out of the state the error reports.
func nextStep(op *opError) string {
	switch {
	case errors.Is(op.kind, errBusy):
		return fmt.Sprintf("; wait for it or POST %s/sessions/%s/abort", api.BasePath, op.session)
	case errors.Is(op.kind, errFailed):
		return fmt.Sprintf("; POST %s/sessions/%s/restart to start it again", api.BasePath, op.session)
	}
	return ""
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
// is the one place where errors become HTTP: operations' errors by their
// kind, Fiber's by their status, and the store's and the backend's by
// their sentinels.
func classify(err error) (int, api.ErrorDetail) {
	var op *opError
	var fe *fiber.Error
	switch {
	case errors.As(err, &op):
		for _, k := range kindStatus {
			if errors.Is(op.kind, k.kind) {
				return k.status, api.ErrorDetail{Code: k.code, Message: op.msg + nextStep(op)}
			}
		}
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
