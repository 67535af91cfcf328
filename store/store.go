// Package store owns lap's durable state: agents, sessions, sandboxes, the
// per-session message log, session timelines and usage counters, kept in
// one bbolt file (<data dir>/lap.db) behind typed methods.
//
// Every write method returns only after its transaction has been committed
// and fsynced. Concurrent writes are coalesced into shared transactions by a
// group committer (see update), so many sessions appending at once share one
// fsync instead of queueing for one each.
//
// Ids are random UUIDv4 strings (NewID). Listings are nonetheless in
// creation order, newest first, and page with opaque cursors: they walk
// indexes keyed by CreatedAt and id (see list.go), not the id order.
//
// Values returned by the store are copies: they stay valid after the call
// and may be modified by the caller.
package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"
	bolt "go.etcd.io/bbolt"
)

// Errors returned by the store. Callers check them with errors.Is; the
// store wraps them with what was looked for.
var (
	// ErrNotFound: no record with that id, name or prefix.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the write would break a uniqueness or state rule (a
	// taken agent name, an ambiguous id prefix).
	ErrConflict = errors.New("conflict")
	// ErrInvalidCursor: a listing cursor that this store did not issue.
	ErrInvalidCursor = errors.New("invalid cursor")
	// ErrLocked: another process (another lapd) holds the database file.
	ErrLocked = errors.New("database is locked by another process")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store closed")
)

// FileName is the name of the database file inside the data dir.
const FileName = "lap.db"

// SchemaVersion is the version of the bucket layout this code writes.
//
//  1. Ids were UUIDv7, and listings walked the id order of the record
//     buckets and of index keys "scope/id".
//  2. Ids are random (UUIDv4); every listing walks an index whose keys end
//     in a position, CreatedAt then id (see list.go).
const SchemaVersion = 2

// Bucket names. The indexes whose keys hold a position are in creation
// order (see posKey and scopedKey) and hold the record's id as value;
// open_messages holds keys only.
var (
	bucketMeta       = []byte("meta")
	bucketAgents     = []byte("agents")              // agent id → Agent
	bucketAgentNames = []byte("agent_names")         // name → agent id
	bucketAgentOrder = []byte("agents_by_created")   // position → agent id
	bucketSessions   = []byte("sessions")            // session id → Session
	bucketSessOrder  = []byte("sessions_by_created") // position → session id
	bucketSessAgent  = []byte("sessions_by_agent")   // agent id + "/" + position → session id
	bucketSessStatus = []byte("sessions_by_status")  // status + "/" + position → session id
	bucketSandboxes  = []byte("sandboxes")           // sandbox id → Sandbox
	bucketWarm       = []byte("warm")                // agent id + "/" + position of warm sandboxes → sandbox id
	bucketMessages   = []byte("messages")            // session id → bucket: seq → Message
	bucketOpenTurns  = []byte("open_messages")       // session id + "/" + seq of pending/running messages
	bucketTimeline   = []byte("timeline")            // session id → bucket: seq → LogEntry
	keySchemaVersion = []byte("schema_version")
)

// migration brings the file from version to-1 to version to.
type migration struct {
	to int
	fn func(tx *bolt.Tx) error
}

// migrations are applied in order at Open; a new layout appends one and
// raises SchemaVersion. Each runs in the same transaction as the version
// bump, so a crash mid-migration leaves the old version intact. A
// migration is history: it must keep doing what it did when written.
var migrations = []migration{
	{to: 1, fn: func(tx *bolt.Tx) error {
		for _, name := range []string{"meta", "agents", "agent_names", "sessions", "sessions_by_agent",
			"sessions_by_status", "sandboxes", "warm", "messages", "open_messages", "timeline"} {
			if _, err := tx.CreateBucketIfNotExists([]byte(name)); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		return nil
	}},
	{to: 2, fn: rebuildIndexes},
}

// rebuildIndexes drops the creation-order indexes and writes them again
// from the records, which hold everything the keys are made of.
func rebuildIndexes(tx *bolt.Tx) error {
	for _, name := range [][]byte{bucketAgentOrder, bucketSessOrder, bucketSessAgent, bucketSessStatus, bucketWarm} {
		if tx.Bucket(name) != nil {
			if err := tx.DeleteBucket(name); err != nil {
				return fmt.Errorf("drop index %s: %w", name, err)
			}
		}
		if _, err := tx.CreateBucket(name); err != nil {
			return fmt.Errorf("create index %s: %w", name, err)
		}
	}
	err := tx.Bucket(bucketAgents).ForEach(func(k, v []byte) error {
		var a Agent
		if err := json.Unmarshal(v, &a); err != nil {
			return fmt.Errorf("decode agent %s: %w", k, err)
		}
		return putAgentIndexes(tx, a)
	})
	if err != nil {
		return err
	}
	err = tx.Bucket(bucketSessions).ForEach(func(k, v []byte) error {
		var sess Session
		if err := json.Unmarshal(v, &sess); err != nil {
			return fmt.Errorf("decode session %s: %w", k, err)
		}
		return putSessionIndexes(tx, sess)
	})
	if err != nil {
		return err
	}
	return tx.Bucket(bucketSandboxes).ForEach(func(k, v []byte) error {
		var sb Sandbox
		if err := json.Unmarshal(v, &sb); err != nil {
			return fmt.Errorf("decode sandbox %s: %w", k, err)
		}
		if sb.State != SandboxWarm {
			return nil
		}
		return tx.Bucket(bucketWarm).Put(scopedKey(sb.AgentID, sb.CreatedAt, sb.ID), []byte(sb.ID))
	})
}

// Options tune Open.
type Options struct {
	// LockTimeout bounds the wait for the file lock another process holds;
	// 0 means one second.
	LockTimeout time.Duration
	// Now returns the current time; nil means time.Now. Tests pin it.
	Now func() time.Time
}

// Store is lap's database. It is safe for concurrent use.
type Store struct {
	db    *bolt.DB
	path  string
	now   func() time.Time
	queue chan *commitReq

	closeOnce sync.Once
	closing   chan struct{}
	done      chan struct{}
}

// Open opens (creating if needed) the database at path and migrates it to
// SchemaVersion. If another process holds the file, Open fails within
// opts.LockTimeout with an error wrapping ErrLocked. A file written by a
// newer lap (higher schema version) is refused rather than misread.
func Open(path string, opts Options) (*Store, error) {
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	// The freelist is not written on every commit but rebuilt by a scan
	// at open, as etcd does: one page fewer to write and sync per commit.
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:        opts.LockTimeout,
		FreelistType:   bolt.FreelistMapType,
		NoFreelistSync: true,
	})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("open store %s: %w (is another lapd running on this data dir?)", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if err := migrate(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s := &Store{
		db:      db,
		path:    path,
		now:     opts.Now,
		queue:   make(chan *commitReq, 4096),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
	}
	s.releaseMapping()
	go s.commitLoop()
	return s, nil
}

func migrate(db *bolt.DB) error {
	return db.Update(func(tx *bolt.Tx) error {
		version := 0
		if meta := tx.Bucket(bucketMeta); meta != nil {
			if v := meta.Get(keySchemaVersion); v != nil {
				n, err := strconv.Atoi(string(v))
				if err != nil {
					return fmt.Errorf("read schema version %q: %w", v, err)
				}
				version = n
			}
		}
		if version > SchemaVersion {
			return fmt.Errorf("schema version %d is newer than this lapd understands (%d); upgrade lapd", version, SchemaVersion)
		}
		for _, m := range migrations {
			if m.to <= version {
				continue
			}
			if err := m.fn(tx); err != nil {
				return fmt.Errorf("migrate to schema %d: %w", m.to, err)
			}
			version = m.to
		}
		return tx.Bucket(bucketMeta).Put(keySchemaVersion, []byte(strconv.Itoa(version)))
	})
}

// Path returns the database file's path.
func (s *Store) Path() string { return s.path }

// Close waits for queued writes to commit and closes the file. Writes
// started after Close fail with ErrClosed. Close is idempotent.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.closing)
		<-s.done
		err = s.db.Close()
	})
	return err
}

// Check verifies the file's page structure (bbolt's consistency check) and
// returns the first problem found, or nil.
func (s *Store) Check() error {
	return s.db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return fmt.Errorf("check %s: %w", s.path, err)
		}
		return nil
	})
}

// commitReq is one write waiting for the group committer.
type commitReq struct {
	fn   func(tx *bolt.Tx) error
	done chan error
}

// maxBatch bounds how many writes share one transaction, so one commit's
// latency stays bounded under a flood.
const maxBatch = 512

// update runs fn in a read-write transaction and returns once it is
// committed and fsynced. Writes queued while a commit is in flight are
// committed together in the next transaction: an idle store commits at
// once (unlike bbolt's db.Batch, which always waits MaxBatchDelay), a busy
// one amortises fsyncs over many writers. fn may run more than once (when
// another write in its batch fails it is retried), so it must only act on
// tx and on variables it assigns afresh on every run.
func (s *Store) update(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	req := &commitReq{fn: fn, done: make(chan error, 1)}
	select {
	case <-s.closing:
		return ErrClosed
	default:
	}
	select {
	case s.queue <- req:
	case <-s.closing:
		return ErrClosed
	}
	// Once queued the write will be attempted; waiting for its outcome is
	// bounded by one commit, and abandoning it would leave the caller
	// unsure whether it happened.
	return <-req.done
}

func (s *Store) commitLoop() {
	defer close(s.done)
	for {
		var first *commitReq
		select {
		case first = <-s.queue:
		case <-s.closing:
			// Drain what was queued before Close.
			for {
				select {
				case r := <-s.queue:
					s.commit([]*commitReq{r})
				default:
					return
				}
			}
		}
		batch := []*commitReq{first}
	fill:
		for len(batch) < maxBatch {
			select {
			case r := <-s.queue:
				batch = append(batch, r)
			default:
				break fill
			}
		}
		s.commit(batch)
	}
}

// commit runs batch in one transaction. If a member fails, the transaction
// is rolled back, the member is run alone (so it gets its own error and
// no effect) and the rest are retried together.
func (s *Store) commit(batch []*commitReq) {
	for len(batch) > 0 {
		failed := -1
		err := s.db.Update(func(tx *bolt.Tx) error {
			for i, r := range batch {
				if err := safeRun(r.fn, tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		if failed < 0 || len(batch) == 1 {
			// Committed, or failed as a whole (e.g. the disk is full), or
			// the single member's own error: everyone shares the outcome.
			for _, r := range batch {
				r.done <- err
			}
			return
		}
		r := batch[failed]
		r.done <- s.db.Update(func(tx *bolt.Tx) error { return safeRun(r.fn, tx) })
		batch = append(batch[:failed:failed], batch[failed+1:]...)
	}
}

func safeRun(fn func(tx *bolt.Tx) error, tx *bolt.Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("store write panicked: %v", p)
		}
	}()
	return fn(tx)
}

// view runs fn in a read-only transaction.
func (s *Store) view(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-s.closing:
		return ErrClosed
	default:
	}
	return s.db.View(fn)
}

// NewID returns a new random id (UUIDv4), the form of every id in lap.
// Ids carry no time: their first 8 hex digits, which the CLI prints and
// Knative names are made of, differ between ids made at the same moment.
// Listings get their order from CreatedAt instead (see list.go).
func NewID() string {
	return uuid.New().String()
}

func getJSON(b *bolt.Bucket, key []byte, v any) error {
	raw := b.Get(key)
	if raw == nil {
		return ErrNotFound
	}
	return json.Unmarshal(raw, v)
}

// getIndexed reads into v the record an index entry names, with c a
// cursor on the records' bucket: a listing reads many records, and one
// reused cursor saves the allocations of a Bucket.Get per record. A
// missing record is damage, not a lookup miss, so it is reported without
// ErrNotFound (which the API would turn into a 404).
func getIndexed(c *bolt.Cursor, kind string, id []byte, v any) error {
	k, raw := c.Seek(id)
	if raw == nil || !bytes.Equal(k, id) {
		return fmt.Errorf("index names missing %s %s", kind, id)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("decode %s %s: %w", kind, id, err)
	}
	return nil
}

func putJSON(b *bolt.Bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key, raw)
}
