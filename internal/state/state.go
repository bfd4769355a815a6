// Package state is pool-managerd's state store: one versioned JSON file,
// state.json, in the state directory, written atomically, and an advisory
// lock on the directory so that one writer (apply or the daemon) at a time
// changes it.
//
// The state records what pool-managerd started (each pool's engine process,
// identified by pid and start time, see package proc) and each pool's
// failure history, so that a restarted pool-managerd finds the engines it
// left running and keeps their backoff and circuit breaker. The records'
// types are the pure layer's (reconcile.EngineRecord, restart.Record); this
// package only stores them.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
)

// CurrentVersion is the version of the state file this pool-managerd reads
// and writes.
const CurrentVersion = 1

// FileName is the name of the state file in the state directory.
const FileName = "state.json"

var (
	// ErrCorrupt is wrapped by Load's error when the state file is not valid.
	ErrCorrupt = errors.New("corrupt")
	// ErrUnknownVersion is wrapped by Load's error when the state file has a
	// version other than CurrentVersion.
	ErrUnknownVersion = errors.New("unknown version")
)

// State is the content of the state file.
type State struct {
	Version int `json:"version"`
	// Engines are the engine processes pool-managerd started, by pool id.
	Engines map[string]reconcile.EngineRecord `json:"engines"`
	// Pools are the pools' restart and breaker history, by pool id.
	Pools map[string]restart.Record `json:"pools"`
	// AppliedRevision is the revision of the config the daemon last
	// applied, when it came from Git; nil otherwise. Added within version 1:
	// older files lack it, older daemons ignore it.
	AppliedRevision *Revision `json:"appliedRevision,omitempty"`
}

// Revision is a config's version: the commit of a Git source or of the
// work tree a config directory is in.
type Revision struct {
	// Source is where the config came from: the --git URL, or the config
	// directory.
	Source string `json:"source"`
	Commit string `json:"commit"`
	Ref    string `json:"ref,omitempty"`
	Dirty  bool   `json:"dirty,omitempty"`
}

// New returns an empty state: a fresh node.
func New() *State {
	return &State{
		Version: CurrentVersion,
		Engines: map[string]reconcile.EngineRecord{},
		Pools:   map[string]restart.Record{},
	}
}

// Store is the state file in a state directory. Callers that Save hold the
// directory's Lock.
type Store struct {
	Dir string
}

// Path returns the path of the state file.
func (st Store) Path() string {
	return filepath.Join(st.Dir, FileName)
}

// Load reads the state file. A missing directory or file is a fresh node:
// an empty State and no error. Load never changes anything on disk.
func (st Store) Load() (*State, error) {
	path := st.Path()
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return New(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading state: %w", err)
	}
	return decode(path, data)
}

// decode parses the content of the state file at path.
func decode(path string, data []byte) (*State, error) {
	corrupt := func(err error) error {
		return fmt.Errorf("state file %s is %w: %w; move it aside to start fresh (running engines are then found by their marker)",
			path, ErrCorrupt, err)
	}
	// The version first, so that a newer file, whose shape may differ, is
	// reported as such rather than as corrupt.
	var head struct {
		Version *json.RawMessage `json:"version"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, corrupt(jsonError(data, err))
	}
	if head.Version == nil {
		return nil, corrupt(errors.New("no version"))
	}
	var version int
	if err := json.Unmarshal(*head.Version, &version); err != nil {
		return nil, corrupt(fmt.Errorf("version %s is not an integer", *head.Version))
	}
	if version != CurrentVersion {
		hint := "written by a newer pool-managerd?"
		if version < CurrentVersion {
			hint = "not written by pool-managerd?"
		}
		return nil, fmt.Errorf("state file %s has %w %d; this pool-managerd reads version %d (%s)",
			path, ErrUnknownVersion, version, CurrentVersion, hint)
	}
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, corrupt(jsonError(data, err))
	}
	if s.Engines == nil {
		s.Engines = map[string]reconcile.EngineRecord{}
	}
	if s.Pools == nil {
		s.Pools = map[string]restart.Record{}
	}
	return &s, nil
}

// jsonError adds the line and column of the offending byte to a JSON error
// that has an offset.
func jsonError(data []byte, err error) error {
	var offset int64 = -1
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax):
		offset = syntax.Offset
	case errors.As(err, &typ):
		offset = typ.Offset
	}
	// The offset is just past the offending byte.
	if offset <= 0 || offset > int64(len(data)) {
		return err
	}
	line, col := 1, 1
	for _, b := range data[:offset-1] {
		if b == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
	}
	return fmt.Errorf("line %d, column %d: %w", line, col, err)
}

// encode returns the content of the state file for s.
func encode(s *State) ([]byte, error) {
	out := *s
	switch {
	case out.Version == 0:
		out.Version = CurrentVersion
	case out.Version != CurrentVersion:
		return nil, fmt.Errorf("saving state: version %d, want %d", out.Version, CurrentVersion)
	}
	if out.Engines == nil {
		out.Engines = map[string]reconcile.EngineRecord{}
	}
	if out.Pools == nil {
		out.Pools = map[string]restart.Record{}
	}
	data, err := json.MarshalIndent(&out, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("saving state: %w", err)
	}
	return append(data, '\n'), nil
}

// Save writes s to the state file atomically: a temporary file in the
// directory is written and synced, then renamed over the state file, and
// the directory is synced. Until the rename the old file is intact, and on
// an error the temporary file is removed. A Version of 0 is saved as
// CurrentVersion; any other version is an error. The directory is created
// (0755) if it does not exist.
func (st Store) Save(s *State) error {
	data, err := encode(s)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(st.Dir, 0o755); err != nil {
		return fmt.Errorf("saving state: %w", err)
	}
	tmp, err := os.CreateTemp(st.Dir, "."+FileName+".tmp-*")
	if err != nil {
		return fmt.Errorf("saving state: %w", err)
	}
	renamed := false
	defer func() {
		if !renamed {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("saving state: %w", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("saving state: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("saving state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("saving state: %w", err)
	}
	if err := os.Rename(tmp.Name(), st.Path()); err != nil {
		return fmt.Errorf("saving state: %w", err)
	}
	renamed = true
	if err := syncDir(st.Dir); err != nil {
		return fmt.Errorf("saving state: %s was replaced but may not survive a power loss: %w", st.Path(), err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
