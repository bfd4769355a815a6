// Package sim is a simulated GPU node that lives in a directory, so that
// separate processes (pool-managerd's commands, the daemon, a stand-in
// engine, tests) see and change the same GPUs.
//
// The node is served through the very NVML adapter of package nvml, over
// go-nvml's mock server: Open watches the directory with inotify and reads
// again what changed before answering an NVML call.
//
// The directory holds:
//
//	node.json          the GPUs: index, name, memory in bytes, UUID (written by Init)
//	claims/<pid>.json  memory an engine process holds on GPUs (Claim, Release);
//	                   counted only while the process is alive; also written
//	                   by pool-managerd for a real engine when the node hosts
//	                   real engines (Attribute), never over the engine's own
//	options.json       the node's options (SetOptions): whether pool-managerd
//	                   attributes memory to the real engines it starts here
//	foreign/<index>-<pid>.json
//	                   memory held by a process pool-managerd does not own (Foreign,
//	                   ClearForeign); counted whether or not the pid is alive
//	events.log         injected Xid errors, one JSON object a line (InjectXid)
//	lost/<index>       present while the GPU is lost (Lose, Restore)
//
// Every file is written atomically (a temporary file renamed into place),
// except events.log, which is appended to one whole line at a time.
package sim

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// GiB is 2^30 bytes.
const GiB = 1 << 30

// The files and directories of a simulated node.
const (
	nodeFile    = "node.json"
	claimsDir   = "claims"
	foreignDir  = "foreign"
	eventsFile  = "events.log"
	lostDir     = "lost"
	optionsFile = "options.json"
)

// ErrNotInitialised means the directory holds no simulated node.
var ErrNotInitialised = errors.New("simulated node not initialised")

// ErrExists means Init found a simulated node already in the directory.
var ErrExists = errors.New("simulated node already exists")

// GPUSpec describes one simulated GPU.
type GPUSpec struct {
	Name        string `json:"name"`
	MemoryBytes uint64 `json:"memoryBytes"`
	// UUID is the GPU's UUID; when empty, Init makes one from the node's
	// directory, the index and the name (the same every time): see also
	// NodeUUIDs, which makes them from the node's name.
	UUID string `json:"uuid,omitempty"`
}

// DefaultGPUs returns the demo node: an RTX 3090 (24 GiB) and an RTX 3060
// (12 GiB), with the UUIDs of examples/mixed-24-12.
func DefaultGPUs() []GPUSpec {
	return []GPUSpec{
		{Name: "NVIDIA GeForce RTX 3090", MemoryBytes: 24 * GiB, UUID: "GPU-8a1f7c3e-52d4-4b9a-9e61-3f0c2d7b5a18"},
		{Name: "NVIDIA GeForce RTX 3060", MemoryBytes: 12 * GiB, UUID: "GPU-c47e2b90-1d6a-4f35-8b2e-7a9d0e4f6c21"},
	}
}

// nodeGPU is one GPU of node.json.
type nodeGPU struct {
	Index       int    `json:"index"`
	Name        string `json:"name"`
	MemoryBytes uint64 `json:"memoryBytes"`
	UUID        string `json:"uuid"`
}

type nodeDesc struct {
	GPUs []nodeGPU `json:"gpus"`
}

// claimFile is claims/<pid>.json.
type claimFile struct {
	PID int `json:"pid"`
	// StartTime is the process's start time (field 22 of /proc/PID/stat)
	// when it claimed, so that a reused pid does not inherit the claim; 0
	// when the process was not alive then.
	StartTime uint64 `json:"startTime"`
	// GPUs maps GPU index to bytes held.
	GPUs map[int]uint64 `json:"gpus"`
	// Attributed: written by pool-managerd for a real engine (Attribute),
	// not by the engine itself.
	Attributed bool `json:"attributed,omitempty"`
}

// foreignFile is foreign/<index>-<pid>.json.
type foreignFile struct {
	Index int    `json:"index"`
	PID   int    `json:"pid"`
	Bytes uint64 `json:"bytes"`
}

// eventLine is one line of events.log.
type eventLine struct {
	Index int       `json:"index"`
	Xid   uint64    `json:"xid"`
	Time  time.Time `json:"time"`
}

var uuidPattern = regexp.MustCompile(`^GPU-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// stableUUID makes a GPU UUID, shaped like NVML's, from the node, the
// index and the model name, so that two nodes with the same GPUs get
// different UUIDs and the same node gets the same ones every time.
func stableUUID(node string, index int, name string) string {
	sum := sha256.Sum256([]byte(fmt.Sprintf("pool-managerd sim node %q GPU %d %s", node, index, name)))
	h := hex.EncodeToString(sum[:16])
	return "GPU-" + h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// NodeUUIDs returns gpus with a UUID made from the node's name, its index
// and its model name for each GPU that has none; a UUID given is kept.
func NodeUUIDs(node string, gpus []GPUSpec) []GPUSpec {
	out := make([]GPUSpec, len(gpus))
	for i, g := range gpus {
		if g.UUID == "" {
			g.UUID = stableUUID(node, i, g.Name)
		}
		out[i] = g
	}
	return out
}

// Init creates a simulated node with the given GPUs (indices in order) in
// dir, creating dir if needed. It refuses to replace an existing node: see
// Reset.
func Init(dir string, gpus []GPUSpec) error {
	desc, err := describe(dir, gpus)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, nodeFile)); err == nil {
		return fmt.Errorf("%w in %s; reset it to start over", ErrExists, dir)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("simulated node %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("simulated node: %w", err)
	}
	return writeJSON(dir, nodeFile, desc)
}

// Reset makes dir a fresh simulated node with the given GPUs: the node's
// files (claims, foreign holds, events, lost GPUs, options) are removed, nothing
// else in dir is touched.
func Reset(dir string, gpus []GPUSpec) error {
	if _, err := describe(dir, gpus); err != nil {
		return err
	}
	for _, name := range []string{nodeFile, claimsDir, foreignDir, eventsFile, lostDir, optionsFile, hostFile, ramDir} {
		if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("resetting simulated node: %w", err)
		}
	}
	return Init(dir, gpus)
}

// describe checks gpus and numbers them; a GPU without a UUID gets one made
// from the absolute path of dir (the node's identity when it has no name).
func describe(dir string, gpus []GPUSpec) (nodeDesc, error) {
	if len(gpus) == 0 {
		return nodeDesc{}, errors.New("simulated node: at least one GPU is needed")
	}
	node, err := filepath.Abs(dir)
	if err != nil {
		return nodeDesc{}, fmt.Errorf("simulated node %s: %w", dir, err)
	}
	var desc nodeDesc
	seen := map[string]int{}
	for i, g := range gpus {
		if strings.TrimSpace(g.Name) == "" {
			return nodeDesc{}, fmt.Errorf("simulated GPU %d: no name", i)
		}
		if g.MemoryBytes == 0 {
			return nodeDesc{}, fmt.Errorf("simulated GPU %d (%s): no memory", i, g.Name)
		}
		uuid := g.UUID
		if uuid == "" {
			uuid = stableUUID(node, i, g.Name)
		} else if !uuidPattern.MatchString(uuid) {
			return nodeDesc{}, fmt.Errorf("simulated GPU %d: uuid %q does not look like GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", i, uuid)
		}
		if j, dup := seen[strings.ToLower(uuid)]; dup {
			return nodeDesc{}, fmt.Errorf("simulated GPU %d has the same uuid as GPU %d", i, j)
		}
		seen[strings.ToLower(uuid)] = i
		desc.GPUs = append(desc.GPUs, nodeGPU{Index: i, Name: g.Name, MemoryBytes: g.MemoryBytes, UUID: uuid})
	}
	return desc, nil
}

// GPUs returns the GPUs of the simulated node in dir, with their UUIDs.
func GPUs(dir string) ([]GPUSpec, error) {
	desc, err := readNode(dir)
	if err != nil {
		return nil, err
	}
	specs := make([]GPUSpec, len(desc.GPUs))
	for i, g := range desc.GPUs {
		specs[i] = GPUSpec{Name: g.Name, MemoryBytes: g.MemoryBytes, UUID: g.UUID}
	}
	return specs, nil
}

// Claim records that process pid holds claims[index] bytes on each GPU,
// replacing what it held before. The memory counts only while the process
// lives. An empty claims releases.
func Claim(dir string, pid int, claims map[int]uint64) error {
	if pid <= 0 {
		return fmt.Errorf("simulated node: claim by invalid pid %d", pid)
	}
	if len(claims) == 0 {
		return Release(dir, pid)
	}
	desc, err := readNode(dir)
	if err != nil {
		return err
	}
	for index := range claims {
		if err := desc.check(dir, index); err != nil {
			return err
		}
	}
	c := claimFile{PID: pid, GPUs: claims}
	if st, ok := procStart(pid); ok {
		c.StartTime = st
	}
	return writeJSON(dir, filepath.Join(claimsDir, strconv.Itoa(pid)+".json"), c)
}

// Own records that process pid keeps its own claims on the node (a stand-in
// engine, which claims what it loads): it holds nothing yet, and Attribute
// leaves it alone. Claim replaces it.
func Own(dir string, pid int) error {
	if pid <= 0 {
		return fmt.Errorf("simulated node: claim by invalid pid %d", pid)
	}
	if _, err := readNode(dir); err != nil {
		return err
	}
	c := claimFile{PID: pid, GPUs: map[int]uint64{}}
	if st, ok := procStart(pid); ok {
		c.StartTime = st
	}
	return writeJSON(dir, filepath.Join(claimsDir, strconv.Itoa(pid)+".json"), c)
}

// Attribute records, for a real engine process pid that pool-managerd
// started on the node, that it holds claims[index] bytes on each GPU while
// it lives: a real engine (a CPU build of llama-server, say) holds no
// simulated memory of its own. A process that has a claim of its own (a
// stand-in engine, see Own) keeps it: then Attribute writes nothing and
// returns false. The claim is written only if none exists, atomically, so
// that a stand-in's own claim is never replaced.
func Attribute(dir string, pid int, claims map[int]uint64) (bool, error) {
	if pid <= 0 {
		return false, fmt.Errorf("simulated node: claim by invalid pid %d", pid)
	}
	desc, err := readNode(dir)
	if err != nil {
		return false, err
	}
	for index := range claims {
		if err := desc.check(dir, index); err != nil {
			return false, err
		}
	}
	c := claimFile{PID: pid, GPUs: claims, Attributed: true}
	st, ok := procStart(pid)
	if !ok {
		return false, nil // gone already: nothing to hold
	}
	c.StartTime = st
	name := filepath.Join(claimsDir, strconv.Itoa(pid)+".json")
	path := filepath.Join(dir, name)
	if _, err := os.Lstat(path); err == nil {
		return false, nil
	}
	tmp := filepath.Join(claimsDir, "."+strconv.Itoa(pid)+".attributed")
	if err := writeJSON(dir, tmp, c); err != nil {
		return false, err
	}
	defer os.Remove(filepath.Join(dir, tmp))
	// A link, unlike a rename, fails when the engine claimed meanwhile.
	if err := os.Link(filepath.Join(dir, tmp), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, nil
		}
		return false, fmt.Errorf("simulated node: %w", err)
	}
	return true, nil
}

// Options are a simulated node's settings, kept in options.json.
type Options struct {
	// HostRealEngines: pool-managerd attributes to each engine process it
	// starts on the node the pool's VRAM need, on the pool's GPUs, while the
	// process lives (see Attribute), so that a real engine without GPUs (a
	// CPU build of llama-server) passes the placement check. Stand-in
	// engines keep their own claims.
	HostRealEngines bool `json:"hostRealEngines,omitempty"`
}

// SetOptions writes the node's options.
func SetOptions(dir string, o Options) error {
	if _, err := readNode(dir); err != nil {
		return err
	}
	return writeJSON(dir, optionsFile, o)
}

// ReadOptions reads the node's options; a node without options.json has the zero Options.
func ReadOptions(dir string) (Options, error) {
	if _, err := readNode(dir); err != nil {
		return Options{}, err
	}
	var o Options
	data, err := os.ReadFile(filepath.Join(dir, optionsFile))
	if errors.Is(err, fs.ErrNotExist) {
		return o, nil
	} else if err != nil {
		return o, fmt.Errorf("simulated node: %w", err)
	}
	if err := strictUnmarshal(data, &o); err != nil {
		return o, fmt.Errorf("simulated node: %s is corrupt: %w", optionsFile, err)
	}
	return o, nil
}

// Release forgets the claims of process pid.
func Release(dir string, pid int) error {
	if _, err := readNode(dir); err != nil {
		return err
	}
	err := os.Remove(filepath.Join(dir, claimsDir, strconv.Itoa(pid)+".json"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("simulated node: %w", err)
	}
	return nil
}

// Foreign records that a process pool-managerd does not own (pid may be
// made up) holds bytes on GPU index; 0 bytes removes the hold. Foreign holds
// are shown whether or not the pid is alive.
func Foreign(dir string, index int, pid int, bytes uint64) error {
	if pid <= 0 {
		return fmt.Errorf("simulated node: foreign hold by invalid pid %d", pid)
	}
	desc, err := readNode(dir)
	if err != nil {
		return err
	}
	if err := desc.check(dir, index); err != nil {
		return err
	}
	name := filepath.Join(foreignDir, fmt.Sprintf("%d-%d.json", index, pid))
	if bytes == 0 {
		err := os.Remove(filepath.Join(dir, name))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("simulated node: %w", err)
		}
		return nil
	}
	return writeJSON(dir, name, foreignFile{Index: index, PID: pid, Bytes: bytes})
}

// ClearForeign removes every foreign hold.
func ClearForeign(dir string) error {
	if _, err := readNode(dir); err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Join(dir, foreignDir)); err != nil {
		return fmt.Errorf("simulated node: %w", err)
	}
	return nil
}

// InjectXid makes the driver report Xid error xid on GPU index. Only event
// streams already started see it.
func InjectXid(dir string, index int, xid uint64) error {
	desc, err := readNode(dir)
	if err != nil {
		return err
	}
	if err := desc.check(dir, index); err != nil {
		return err
	}
	line, err := json.Marshal(eventLine{Index: index, Xid: xid, Time: time.Now().UTC()})
	if err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, eventsFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("simulated node: %w", err)
	}
	// One write of a whole line: readers never see half of it as a line.
	if _, err := f.Write(append(line, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("simulated node: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("simulated node: %w", err)
	}
	return nil
}

// Lose makes GPU index lost: NVML calls on it fail with ERROR_GPU_IS_LOST
// and event streams report it lost.
func Lose(dir string, index int) error {
	desc, err := readNode(dir)
	if err != nil {
		return err
	}
	if err := desc.check(dir, index); err != nil {
		return err
	}
	return writeJSON(dir, filepath.Join(lostDir, strconv.Itoa(index)), struct {
		Time time.Time `json:"time"`
	}{time.Now().UTC()})
}

// Restore brings a lost GPU back.
func Restore(dir string, index int) error {
	desc, err := readNode(dir)
	if err != nil {
		return err
	}
	if err := desc.check(dir, index); err != nil {
		return err
	}
	err = os.Remove(filepath.Join(dir, lostDir, strconv.Itoa(index)))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("simulated node: %w", err)
	}
	return nil
}

func (d nodeDesc) check(dir string, index int) error {
	if index < 0 || index >= len(d.GPUs) {
		return fmt.Errorf("simulated node %s has no GPU %d (it has %d: 0 to %d)", dir, index, len(d.GPUs), len(d.GPUs)-1)
	}
	return nil
}

// writeJSON writes v to dir/name atomically, creating the parent directory.
func writeJSON(dir, name string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	path := filepath.Join(dir, name)
	parent := filepath.Dir(path)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("simulated node: %w", err)
	}
	f, err := os.CreateTemp(parent, ".tmp-*")
	if err != nil {
		return fmt.Errorf("simulated node: %w", err)
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	cerr := f.Close()
	if werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Chmod(tmp, 0o644)
	}
	if werr == nil {
		werr = os.Rename(tmp, path)
	}
	if werr != nil {
		os.Remove(tmp)
		return fmt.Errorf("simulated node: writing %s: %w", path, werr)
	}
	return nil
}

// notInitialisedError is the error for a directory without a node.
type notInitialisedError struct{ dir string }

func (e notInitialisedError) Error() string {
	return fmt.Sprintf("simulated node %s not initialised; run pool-managerd sim init %s", e.dir, e.dir)
}

func (e notInitialisedError) Is(target error) bool { return target == ErrNotInitialised }

func notInitialised(dir string) error { return notInitialisedError{dir} }

// readNode reads and checks node.json.
func readNode(dir string) (nodeDesc, error) {
	path := filepath.Join(dir, nodeFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nodeDesc{}, notInitialised(dir)
	} else if err != nil {
		return nodeDesc{}, fmt.Errorf("simulated node: %w", err)
	}
	var desc nodeDesc
	if err := strictUnmarshal(data, &desc); err != nil {
		return nodeDesc{}, fmt.Errorf("simulated node: %s is corrupt: %w", path, err)
	}
	if len(desc.GPUs) == 0 {
		return nodeDesc{}, fmt.Errorf("simulated node: %s is corrupt: no GPUs", path)
	}
	for i, g := range desc.GPUs {
		switch {
		case g.Index != i:
			return nodeDesc{}, fmt.Errorf("simulated node: %s is corrupt: GPU %d has index %d", path, i, g.Index)
		case g.Name == "" || g.MemoryBytes == 0:
			return nodeDesc{}, fmt.Errorf("simulated node: %s is corrupt: GPU %d has no name or no memory", path, i)
		case !uuidPattern.MatchString(g.UUID):
			return nodeDesc{}, fmt.Errorf("simulated node: %s is corrupt: GPU %d has uuid %q", path, i, g.UUID)
		}
	}
	return desc, nil
}

func strictUnmarshal(data []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}

// listJSON returns the names of the *.json files of dir/sub, sorted;
// temporary files are left out. A missing directory has none.
func listJSON(dir, sub string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(dir, sub))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("simulated node: %w", err)
	}
	var names []string
	for _, e := range entries {
		if e.Type().IsRegular() && !strings.HasPrefix(e.Name(), ".") && strings.HasSuffix(e.Name(), ".json") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}
