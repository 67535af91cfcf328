package control

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"

	"lap.dev/lap/sandboxes"
	"lap.dev/lap/store"
)

// The kinds of failure lapd's operations report. Every error made here
// wraps one (match with errors.Is) and carries the message the user
// reads; orchestration knows nothing of HTTP, and the API maps each kind
// to a status in one place (classify).
var (
	errInvalid          = errors.New("invalid request")
	errUnauthorized     = errors.New("unauthorized")
	errNotFound         = errors.New("not found")
	errConflict         = errors.New("conflict")
	errBusy             = errors.New("session busy")   // a turn or job already runs on it
	errEnded            = errors.New("session ended")  // deleted by the user
	errFailed           = errors.New("session failed") // needs a restart before its next turn
	errNotReady         = errors.New("session not ready")
	errAborted          = errors.New("turn aborted")
	errUnsupportedMedia = errors.New("unsupported media type")
	errUnprocessable    = errors.New("unprocessable")
	errTooLarge         = errors.New("request body too large")
	errHarness          = errors.New("harness failure") // in or on the way to the harness
	errUnavailable      = errors.New("unavailable")     // lapd is starting or stopping
	errTimeout          = errors.New("timeout")
)

// opError is an operation's failure: its kind and the message the user
// reads, and the session it concerns (the API adds what to do next).
type opError struct {
	kind    error
	msg     string
	session string
}

// Error implements error; the message is what the user reads.
func (e *opError) Error() string { return e.msg }

// Unwrap makes errors.Is(err, kind) hold.
func (e *opError) Unwrap() error { return e.kind }

// errorf makes an error of kind with a formatted message.
func errorf(kind error, format string, args ...any) error {
	return &opError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

func badRequest(format string, args ...any) error { return errorf(errInvalid, format, args...) }

func notFound(format string, args ...any) error { return errorf(errNotFound, format, args...) }

func conflict(format string, args ...any) error { return errorf(errConflict, format, args...) }

func unavailable(format string, args ...any) error { return errorf(errUnavailable, format, args...) }

func unprocessable(format string, args ...any) error {
	return errorf(errUnprocessable, format, args...)
}

// harnessFailure is a turn that failed in or on the way to the harness.
func harnessFailure(format string, args ...any) error { return errorf(errHarness, format, args...) }

// endedError is what any operation on a deleted session returns.
func endedError(id string) error {
	return &opError{kind: errEnded, session: id, msg: "session " + id + " has ended"}
}

// busyError is what a second turn (or a suspend) on a busy session gets.
func busyError(id string) error {
	return &opError{kind: errBusy, session: id, msg: "a turn is already running on session " + id}
}

// errShuttingDown refuses new work while lapd stops.
var errShuttingDown = unavailable("lapd is shutting down; retry shortly")

// ambiguous is the conflict for a short id that names several records
// (err from the store): it lists them, so the user can pick one without
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

// known reports whether err is a failure lapd can name (one of the kinds
// above, or a store, backend, disk or deadline error the API has a status
// for). A turn that fails with anything else failed in or on the way to
// the harness.
func known(err error) bool {
	var op *opError
	return errors.As(err, &op) ||
		errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) ||
		errors.Is(err, store.ErrInvalidCursor) || errors.Is(err, store.ErrClosed) ||
		errors.Is(err, sandboxes.ErrCapacity) || errors.Is(err, sandboxes.ErrNotReady) ||
		errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) ||
		errors.Is(err, context.DeadlineExceeded)
}
