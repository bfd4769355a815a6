// Command memload loads a config directory the way the daemon does, several
// times over, keeping only the last result, and reports the heap and the
// process's RSS after each load, before and after a collection that returns
// the free memory to the OS; with -heapprofile it writes the heap profile of
// the last load, for `go tool pprof -top -inuse_space` (what the kept result
// holds) or `-sample_index=alloc_space` (what loading allocates):
//
//	go run ./tools/genconfig -pools 10000 -files 1000 -out /tmp/fleet
//	go run ./tools/memload -loads 3 -keep gpu-0000 -fresh -heapprofile /tmp/heap.pprof /tmp/fleet
//	go tool pprof -top -inuse_space /tmp/heap.pprof
//
// -keep NODE keeps only that node's pools of each result, as the daemon does
// (without it the whole *schema.Desired is kept). The loads share one
// schema.Loader, as the daemon's do (a load of an unchanged tree evaluates
// nothing); -fresh gives each load a Loader of its own (a full load).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/schema"
)

type options struct {
	dir         string
	loads       int
	keep        string
	fresh       bool
	heapProfile string
}

func main() {
	var o options
	flag.IntVar(&o.loads, "loads", 3, "number of loads")
	flag.StringVar(&o.keep, "keep", "", "keep only this node's pools (as the daemon does)")
	flag.BoolVar(&o.fresh, "fresh", false, "a new schema.Loader for each load: every load is a full one")
	flag.StringVar(&o.heapProfile, "heapprofile", "", "write the heap profile after the last load to this file")
	flag.Parse()
	if flag.NArg() != 1 || o.loads < 1 {
		fmt.Fprintln(os.Stderr, "usage: memload [-loads N] [-keep NODE] [-fresh] [-heapprofile FILE] DIR")
		os.Exit(2)
	}
	o.dir = flag.Arg(0)
	if err := run(context.Background(), o); err != nil {
		fmt.Fprintln(os.Stderr, "memload:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	var held any
	loader := schema.NewLoader()
	for i := 1; i <= o.loads; i++ {
		if o.fresh {
			loader = schema.NewLoader()
		}
		start := time.Now()
		d, err := loader.Load(ctx, o.dir)
		if err != nil {
			return fmt.Errorf("load %d of %s: %w", i, o.dir, err)
		}
		took := time.Since(start)
		held = d
		if o.keep != "" {
			held = reconcile.DesiredFor(d, o.keep)
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		fmt.Printf("load %d: %v, %d GCs so far; heap %d MiB allocated, %d MiB in use; %s\n",
			i, took.Round(time.Millisecond), ms.NumGC, ms.HeapAlloc>>20, ms.HeapInuse>>20, procStatus())
		gcStart := time.Now()
		runtime.GC()
		gcTook := time.Since(gcStart)
		freeStart := time.Now()
		debug.FreeOSMemory()
		freeTook := time.Since(freeStart)
		runtime.ReadMemStats(&ms)
		fmt.Printf("  then GC %v, FreeOSMemory %v: heap %d MiB in use (kept), %d MiB returned to the OS, %d MiB allocated in all; %s\n",
			gcTook.Round(time.Millisecond), freeTook.Round(time.Millisecond),
			ms.HeapInuse>>20, ms.HeapReleased>>20, ms.TotalAlloc>>20, procStatus())
	}
	if o.heapProfile != "" {
		f, err := os.Create(o.heapProfile)
		if err != nil {
			return fmt.Errorf("heap profile: %w", err)
		}
		if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
			f.Close()
			return fmt.Errorf("heap profile %s: %w", o.heapProfile, err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("heap profile %s: %w", o.heapProfile, err)
		}
	}
	runtime.KeepAlive(held)
	return nil
}

// procStatus returns the process's VmRSS and VmHWM from /proc (Linux).
func procStatus() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "RSS unknown"
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if name, value, ok := strings.Cut(line, ":"); ok && (name == "VmRSS" || name == "VmHWM") {
			out = append(out, name+" "+strings.Join(strings.Fields(value), " "))
		}
	}
	return strings.Join(out, ", ")
}
