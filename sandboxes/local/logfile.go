package local

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// A sandbox's output goes straight from the harness into harness.log (its
// stdout and stderr are that file, opened for appending), never through a
// pipe to lapd: a pipe would break when lapd stops, and the harness must
// outlive lapd. So lapd caps the file from outside, the way logrotate's
// copytruncate does: once harness.log passes half the cap, its last half
// cap is copied to harness.log.1 and harness.log is truncated. The
// harness's appends continue at the new end. What is kept is always the
// latest output, at most about the cap in the two files together.

// openLog opens dir's log for appending, creating it (0600).
func openLog(dir string) (*os.File, error) {
	return os.OpenFile(filepath.Join(dir, logFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
}

// appendLog writes one line of lapd's own into dir's log, so the tail
// tells when and how the harness was started and how it ended.
func appendLog(dir, format string, args ...any) {
	f, err := openLog(dir)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "[lap %s] %s\n", time.Now().UTC().Format(time.RFC3339), fmt.Sprintf(format, args...))
}

// rotateLog caps dir's log to about maxBytes as described above. It does
// nothing while the log is under half the cap.
func rotateLog(dir string, maxBytes int64) error {
	half := maxBytes / 2
	path := filepath.Join(dir, logFile)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() <= half {
		return err
	}
	tail, err := readTail(f, fi.Size(), half)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, oldLogFile+".tmp")
	if err := os.WriteFile(tmp, tail, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, oldLogFile)); err != nil {
		return err
	}
	if err := f.Truncate(0); err != nil {
		return err
	}
	appendLog(dir, "output rotated: the %d bytes before are in %s", len(tail), oldLogFile)
	return nil
}

// readTail returns the last n bytes of f, whose size is size.
func readTail(f *os.File, size, n int64) ([]byte, error) {
	off := max(size-n, 0)
	b := make([]byte, size-off)
	k, err := f.ReadAt(b, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return b[:k], nil
}

// logTail returns up to the last n bytes of dir's output, across the
// rotated and the current file.
func logTail(dir string, n int) (string, error) {
	if n <= 0 {
		return "", nil
	}
	cur, err := tailOf(filepath.Join(dir, logFile), int64(n))
	if err != nil {
		return "", err
	}
	if len(cur) >= n {
		return string(cur), nil
	}
	old, err := tailOf(filepath.Join(dir, oldLogFile), int64(n-len(cur)))
	if err != nil {
		return "", err
	}
	return string(old) + string(cur), nil
}

// tailOf returns up to the last n bytes of the file at path; a missing
// file is empty.
func tailOf(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return readTail(f, fi.Size(), n)
}
