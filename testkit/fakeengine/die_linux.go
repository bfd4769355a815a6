//go:build linux

package fakeengine

import (
	"os"
	"os/signal"
	"syscall"
	"time"
	"unsafe"
)

// dieBySignal ends the process by sig, as a C program that crashes does: the
// parent's wait status says "killed by signal", not "exited". The Go
// runtime catches SIGSEGV, SIGABRT and others itself (and would exit 2), so
// the signal's default action is restored with rt_sigaction first. No core
// file is written.
func dieBySignal(sig syscall.Signal) {
	signal.Reset(sig)
	syscall.Setrlimit(syscall.RLIMIT_CORE, &syscall.Rlimit{})
	if sig != syscall.SIGKILL && sig != syscall.SIGSTOP {
		// struct sigaction { handler = SIG_DFL (0), flags, restorer, mask }: all zero.
		var act [4]uint64
		syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(&act)), 0, 8, 0, 0)
	}
	syscall.Kill(os.Getpid(), sig)
	time.Sleep(2 * time.Second)
	os.Exit(128 + int(sig))
}
