package store

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/google/uuid"
	bolt "go.etcd.io/bbolt"
)

// Page asks for one page of a listing, newest first.
type Page struct {
	// Limit is the most items to return; values below 1 mean DefaultLimit,
	// values above MaxLimit mean MaxLimit.
	Limit int
	// Cursor is the NextCursor of the previous page, or "" for the first.
	Cursor string
}

// Listing limits.
const (
	DefaultLimit = 50
	MaxLimit     = 1000
)

func (p Page) limit() int {
	switch {
	case p.Limit < 1:
		return DefaultLimit
	case p.Limit > MaxLimit:
		return MaxLimit
	}
	return p.Limit
}

const cursorVersion = "v1:"

// encodeCursor makes the opaque cursor that resumes a listing after id.
func encodeCursor(id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(cursorVersion + id))
}

// decodeCursor returns the id a cursor resumes after ("" for none).
func decodeCursor(cursor string) (string, error) {
	if cursor == "" {
		return "", nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(cursor)
	if err != nil {
		return "", fmt.Errorf("cursor %q: %w", cursor, ErrInvalidCursor)
	}
	id, ok := strings.CutPrefix(string(raw), cursorVersion)
	if _, err := uuid.Parse(id); !ok || err != nil {
		return "", fmt.Errorf("cursor %q: %w", cursor, ErrInvalidCursor)
	}
	return id, nil
}

// scanDesc visits the keys of c that start with prefix in descending order,
// beginning strictly below prefix+after (after "" = from the newest). fn
// returns false to stop. Ids are UUIDv7, so key order is creation order.
func scanDesc(c *bolt.Cursor, prefix []byte, after string, fn func(k, v []byte) (bool, error)) error {
	start := append(bytes.Clone(prefix), after...)
	if after == "" {
		start = append(start, 0xff)
	}
	k, v := c.Seek(start)
	if k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Prev() {
		more, err := fn(k, v)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

// resolvePrefix finds the one key of b that starts with prefix (a short
// id as the CLI prints it). It returns ErrNotFound for none and ErrConflict
// for more than one.
func resolvePrefix(b *bolt.Bucket, prefix string) ([]byte, error) {
	c := b.Cursor()
	k, _ := c.Seek([]byte(prefix))
	if k == nil || !bytes.HasPrefix(k, []byte(prefix)) {
		return nil, ErrNotFound
	}
	if next, _ := c.Next(); next != nil && bytes.HasPrefix(next, []byte(prefix)) {
		return nil, ErrConflict
	}
	return bytes.Clone(k), nil
}

// isIDPrefix reports whether ref can be a (short) id: at least 8 characters
// of lower-case hex and dashes.
func isIDPrefix(ref string) bool {
	if len(ref) < 8 || len(ref) > 36 {
		return false
	}
	for _, r := range ref {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r == '-') {
			return false
		}
	}
	return true
}
