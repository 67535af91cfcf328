package store

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"time"

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

// Ids are random, so key order in a bucket says nothing about age. Every
// listing in creation order walks an index whose keys end in a position:
// the record's CreatedAt as 8 big-endian bytes, then its id. Records made
// in the same nanosecond are ordered by id, so the order is total and the
// same on every read, and a cursor (a position) resumes exactly where the
// previous page stopped. Index values hold the id, so a reader needs no
// arithmetic on the key to find the record.

// posLen is the length of a position's time part.
const posLen = 8

// createdNanos is t as nanoseconds since 1970, clamped to what an int64
// holds (years 1678 to 2262) so that zero or far times still sort.
func createdNanos(t time.Time) int64 {
	switch {
	case t.Before(minPosTime):
		return math.MinInt64
	case t.After(maxPosTime):
		return math.MaxInt64
	}
	return t.UnixNano()
}

var (
	minPosTime = time.Unix(0, math.MinInt64)
	maxPosTime = time.Unix(0, math.MaxInt64)
)

// appendPos appends the position of the record (created, id) to k. The
// sign bit is flipped so that times before 1970 sort before later ones.
func appendPos(k []byte, created time.Time, id string) []byte {
	k = binary.BigEndian.AppendUint64(k, uint64(createdNanos(created))^(1<<63))
	return append(k, id...)
}

// posKey is the key of a record in an index over all records of a kind.
func posKey(created time.Time, id string) []byte {
	return appendPos(make([]byte, 0, posLen+len(id)), created, id)
}

// scopedKey is the key of a record in an index grouped by scope (an agent
// id, a status): scope, "/", position. A scan for one scope seeks to
// scope+"/", so the scope must not contain "/".
func scopedKey(scope string, created time.Time, id string) []byte {
	k := make([]byte, 0, len(scope)+1+posLen+len(id))
	k = append(append(k, scope...), '/')
	return appendPos(k, created, id)
}

// keyScope returns the scope of a scopedKey whose value is the id.
func keyScope(k, id []byte) ([]byte, bool) {
	n := len(k) - len(id) - posLen - 1
	if n < 0 || k[n] != '/' {
		return nil, false
	}
	return k[:n], true
}

// comparePos orders two records as the indexes do: by CreatedAt, then id.
func comparePos(aCreated time.Time, aID string, bCreated time.Time, bID string) int {
	an, bn := createdNanos(aCreated), createdNanos(bCreated)
	switch {
	case an < bn:
		return -1
	case an > bn:
		return 1
	}
	return strings.Compare(aID, bID)
}

// cursorVersion starts every cursor. v1 cursors held a bare UUIDv7 id,
// whose order was creation order; v2 cursors hold a position. A v1
// cursor (issued before the upgrade) is refused as invalid, and the client
// starts its listing again.
const cursorVersion = "v2:"

// encodeCursor makes the opaque cursor that resumes a listing after the
// record at position pos.
func encodeCursor(pos []byte) string {
	return base64.RawURLEncoding.EncodeToString(append([]byte(cursorVersion), pos...))
}

// decodeCursor returns the position a cursor resumes after (nil for none).
func decodeCursor(cursor string) ([]byte, error) {
	if cursor == "" {
		return nil, nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(cursor)
	if err != nil {
		return nil, fmt.Errorf("cursor %q: %w", cursor, ErrInvalidCursor)
	}
	pos, ok := bytes.CutPrefix(raw, []byte(cursorVersion))
	if !ok || len(pos) <= posLen {
		return nil, fmt.Errorf("cursor %q: %w", cursor, ErrInvalidCursor)
	}
	return pos, nil
}

// scanDesc visits the keys of an index that start with prefix (a scope
// and "/", or nil for an unscoped index) from the newest down, beginning
// strictly below prefix+after (after nil: from the newest). fn gets the
// key's position part and the value (the id) and returns false to stop.
func scanDesc(c *bolt.Cursor, prefix, after []byte, fn func(pos, id []byte) (bool, error)) error {
	var k, v []byte
	if after != nil {
		k, v = c.Seek(append(bytes.Clone(prefix), after...))
	} else if end := prefixEnd(prefix); end != nil {
		k, v = c.Seek(end)
	}
	if k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Prev() {
		more, err := fn(k[len(prefix):], v)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

// prefixEnd returns the smallest key greater than every key starting with
// prefix, or nil when there is none (prefix empty or all 0xff).
func prefixEnd(prefix []byte) []byte {
	end := bytes.Clone(prefix)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

// AmbiguousError is the error of a short id that names more than one
// record. It wraps ErrConflict; Matches lets the caller show the
// candidates, so the user can pick one without listing everything.
type AmbiguousError struct {
	// Prefix is the short id as given.
	Prefix string
	// Matches are the ids that start with it, in id order, at most
	// MaxAmbiguousMatches of them.
	Matches []string
	// More is true when there are more matches than Matches holds.
	More bool
}

// MaxAmbiguousMatches bounds AmbiguousError.Matches.
const MaxAmbiguousMatches = 10

func (e *AmbiguousError) Error() string {
	n := fmt.Sprint(len(e.Matches))
	if e.More {
		n = "more than " + n
	}
	return fmt.Sprintf("%s is the start of %s ids: %s", e.Prefix, n, strings.Join(e.Matches, ", "))
}

// Unwrap makes errors.Is(err, ErrConflict) hold.
func (e *AmbiguousError) Unwrap() error { return ErrConflict }

// resolvePrefix finds the one key of b that starts with the short id ref
// (canonical, see idPrefix). It returns ErrNotFound for none and an
// *AmbiguousError for more than one.
func resolvePrefix(b *bolt.Bucket, ref, prefix string) ([]byte, error) {
	c := b.Cursor()
	var matches []string
	for k, _ := c.Seek([]byte(prefix)); k != nil && bytes.HasPrefix(k, []byte(prefix)); k, _ = c.Next() {
		if len(matches) == MaxAmbiguousMatches {
			return nil, &AmbiguousError{Prefix: ref, Matches: matches, More: true}
		}
		matches = append(matches, string(k))
	}
	switch len(matches) {
	case 0:
		return nil, ErrNotFound
	case 1:
		return []byte(matches[0]), nil
	}
	return nil, &AmbiguousError{Prefix: ref, Matches: matches}
}

// idPrefix turns a short id as users type it — at least 8 hex digits,
// with or without the dashes of the full form, any case — into the start
// of an id as stored (lower case, dashed after the 8th, 12th, 16th and
// 20th digit). ok is false for anything else.
func idPrefix(ref string) (prefix string, ok bool) {
	if len(ref) > 36 {
		return "", false
	}
	hex := make([]byte, 0, 32)
	for i := 0; i < len(ref); i++ {
		switch c := ref[i]; {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
			hex = append(hex, c)
		case c >= 'A' && c <= 'F':
			hex = append(hex, c+'a'-'A')
		case c == '-':
		default:
			return "", false
		}
	}
	if len(hex) < 8 || len(hex) > 32 {
		return "", false
	}
	out := make([]byte, 0, 36)
	for i, c := range hex {
		if i == 8 || i == 12 || i == 16 || i == 20 {
			out = append(out, '-')
		}
		out = append(out, c)
	}
	return string(out), true
}
