//go:build !linux

package fakeengine

import (
	"os"
	"syscall"
)

// dieBySignal ends the process with the status a shell gives a process
// killed by sig (the default action cannot be restored portably).
func dieBySignal(sig syscall.Signal) {
	os.Exit(128 + int(sig))
}
