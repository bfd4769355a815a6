// Package gpu defines what pool-managerd needs to know about a node's GPUs:
// each device's identity and memory, the compute processes holding memory on
// it, and a stream of driver events (critical Xid errors, lost GPUs).
//
// Implementations: nvml (the NVIDIA driver through go-nvml), sim (a
// simulated node in a directory, served by go-nvml's mock server through the
// same adapter code) and declared (the config's declared inventory, with
// nothing running: the pull-request mode).
package gpu

import (
	"context"
	"errors"
	"time"
)

// ErrNoDriver means no NVIDIA driver could be loaded on this machine.
var ErrNoDriver = errors.New("no NVIDIA driver found")

// Process is a compute process holding memory on a GPU. PIDs are host PIDs.
type Process struct {
	PID       int    `json:"pid"`
	UsedBytes uint64 `json:"usedBytes"`
}

// Device is one GPU as observed.
type Device struct {
	Index int    `json:"index"`
	UUID  string `json:"uuid"`
	Name  string `json:"name"`
	// Memory in bytes.
	MemoryTotal uint64 `json:"memoryTotal"`
	MemoryUsed  uint64 `json:"memoryUsed"`
	MemoryFree  uint64 `json:"memoryFree"`
	// Processes are the compute processes on the device, sorted by PID.
	Processes []Process `json:"processes,omitempty"`
	// Lost is set when the driver reports the GPU lost or in need of a reset;
	// its memory figures are then zero.
	Lost bool `json:"lost,omitempty"`
}

// EventKind says what happened to a GPU.
type EventKind string

// The kinds of GPU events.
const (
	// EventXid is a critical Xid error that is not an application error.
	EventXid EventKind = "xid"
	// EventLost means the GPU fell off the bus or needs a reset.
	EventLost EventKind = "lost"
)

// Event is a driver event on one GPU.
type Event struct {
	Kind  EventKind `json:"kind"`
	Index int       `json:"index"`
	UUID  string    `json:"uuid"`
	// Xid is the Xid error code for EventXid.
	Xid  uint64    `json:"xid,omitempty"`
	Time time.Time `json:"time"`
}

// Node is the set of GPUs of one machine.
type Node interface {
	// Devices returns every GPU of the node, sorted by index.
	Devices(ctx context.Context) ([]Device, error)
	// Events streams critical driver events until ctx is done, then closes the channel.
	Events(ctx context.Context) (<-chan Event, error)
	// Close releases the driver.
	Close() error
}

// IsApplicationXid reports whether an Xid is caused by an application, not
// the GPU (13, 31, 43, 45, 68, 109): NVIDIA's device plugin leaves the GPU
// healthy for these, and so does pool-managerd.
func IsApplicationXid(xid uint64) bool {
	switch xid {
	case 13, 31, 43, 45, 68, 109:
		return true
	}
	return false
}
