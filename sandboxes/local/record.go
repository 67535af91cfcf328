package local

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

// Files in a sandbox's directory <Dir>/<id>. The record and the logs
// belong to lapd's user (0600): the harness writes its output through the
// file descriptor it was started with and cannot read the record, which
// holds its secrets.
const (
	recordFile     = "sandbox.json"
	logFile        = "harness.log"
	oldLogFile     = "harness.log.1"
	workspaceDir   = "workspace" // WORKSPACE, owned by the sandbox's user
	homeDir        = "home"      // HOME, inside the workspace so it is kept
	sandboxDirPerm = 0o711       // searchable by the sandbox's user, not listable
)

// record is what lapd keeps on disk about one sandbox: enough to start
// its harness again (after a suspend, a crash or a lapd restart) and to
// recognise the harness process that runs now.
type record struct {
	ID         string    `json:"id"`
	AgentID    string    `json:"agent_id"`
	Generation int64     `json:"generation"`
	Role       string    `json:"role"`
	HarnessID  string    `json:"harness_id"`
	CreatedAt  time.Time `json:"created_at"`
	// Env is the harness's whole environment except PORT, which is
	// chosen at every start.
	Env map[string]string `json:"env"`
	// UID and GID are who the harness runs as; -1 means lapd's own.
	UID int `json:"uid"`
	GID int `json:"gid"`
	// The latest harness process: its port, pid and start time, and the
	// boot they belong to. PID is 0 once it was stopped.
	Port   int    `json:"port"`
	PID    int    `json:"pid,omitempty"`
	Start  uint64 `json:"start,omitempty"`
	BootID string `json:"boot_id,omitempty"`
}

// validID accepts what the control plane uses (UUIDs) and anything else
// that is safe as one path element.
var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

func checkID(id string) error {
	if !validID.MatchString(id) || id == "." || id == ".." {
		return fmt.Errorf("sandbox id %q: want letters, digits, '-', '_' or '.'", id)
	}
	return nil
}

// readRecord reads the record in dir. It returns an error wrapping
// os.ErrNotExist when there is none.
func readRecord(dir string) (record, error) {
	b, err := os.ReadFile(filepath.Join(dir, recordFile))
	if err != nil {
		return record{}, err
	}
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil {
		return record{}, fmt.Errorf("parse %s: %w", filepath.Join(dir, recordFile), err)
	}
	if rec.ID == "" {
		return record{}, fmt.Errorf("parse %s: no id", filepath.Join(dir, recordFile))
	}
	return rec, nil
}

// writeRecord replaces the record in dir atomically, so a crash leaves the
// old or the new one, never half of one.
func writeRecord(dir string, rec record) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, recordFile+".*")
	if err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(dir, recordFile))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write record: %w", err)
	}
	return nil
}

// removeAll removes dir, also when the harness left directories without
// write permission (e.g. Go's read-only module cache), which a non-root
// lapd could otherwise not empty.
func removeAll(dir string) error {
	err := os.RemoveAll(dir)
	if err == nil || !errors.Is(err, os.ErrPermission) {
		return err
	}
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(path, 0o700)
		}
		return nil
	})
	return os.RemoveAll(dir)
}
