package fakeengine

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
)

// A vLLM worker or TGI shard is this same program run again with
// --fake-engine-worker as its first argument, in the engine's session and
// process group. It inherits stdout and stderr, and two pipes:
//
//	fd 3  lifeline: never written; EOF means the main process is gone,
//	      and the worker exits (unless FAKE_ENGINE_ORPHAN_WORKERS=1)
//	fd 4  reports: one line "ready RANK" or "fail RANK REASON"
//
// It loads for the load delay, checks the simulated GPUs have the free
// memory, claims it under its own pid and reports ready; it releases the
// claim when it exits on SIGTERM, SIGINT or the lifeline's end.

// shardExit is a worker that exited.
type shardExit struct {
	rank  int
	pid   int
	state *os.ProcessState
}

// shardReport is a worker's line on fd 4.
type shardReport struct {
	rank   int
	ok     bool
	reason string
}

// shardSet is the main process's side of its workers.
type shardSet struct {
	cmds     []*exec.Cmd
	done     []chan struct{} // closed when the worker has been waited for
	lifeline *os.File
	reports  chan shardReport
	exited   chan shardExit
	stopping chan struct{}
}

// shardSpec says what one worker does.
type shardSpec struct {
	title  string // argv[0], as vLLM and TGI name their worker processes
	claims map[int]uint64
	fail   string // reason to fail loading, or ""
	// children, when set, make this worker a process in between (vLLM's
	// EngineCore with -tp > 1): it holds nothing itself, starts these
	// workers as its own children and reports ready when they all are.
	children []shardSpec
	// ownGroup starts the worker in a process group of its own (TGI's
	// shards and router), still in the engine's session: a signal to the
	// engine's group does not reach it; its parent stops it.
	ownGroup bool
	// router makes the worker TGI's router: it serves the engine's HTTP on
	// the port of the launcher's command line (routerArgs), binding only
	// now that the shards are warm, and reports ready once it listens.
	router     bool
	routerArgs []string
	shards     int
}

// childSep separates the fields of a -child argument (title, claims, fail).
const childSep = "\x1f"

func (s shardSpec) encode() string {
	return strings.Join([]string{s.title, encodeClaims(s.claims), s.fail}, childSep)
}

func decodeShardSpec(v string) (shardSpec, error) {
	f := strings.Split(v, childSep)
	if len(f) != 3 {
		return shardSpec{}, fmt.Errorf("-child %q: want title, claims and failure", v)
	}
	c, err := decodeClaims(f[1])
	if err != nil {
		return shardSpec{}, err
	}
	return shardSpec{title: f[0], claims: c, fail: f[2]}, nil
}

// startShards starts one worker per spec.
func (p *process) startShards(specs []shardSpec) (*shardSet, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	lifeR, lifeW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	repR, repW, err := os.Pipe()
	if err != nil {
		lifeR.Close()
		lifeW.Close()
		return nil, err
	}
	s := &shardSet{
		lifeline: lifeW,
		reports:  make(chan shardReport, len(specs)),
		exited:   make(chan shardExit, len(specs)),
		stopping: make(chan struct{}),
	}
	for rank, spec := range specs {
		args := []string{spec.title, workerFlag,
			"-engine", string(p.mode),
			"-rank", strconv.Itoa(rank),
			"-claims", encodeClaims(spec.claims),
			"-delay", p.faults.LoadDelay.String(),
		}
		if spec.fail != "" {
			args = append(args, "-fail", spec.fail)
		}
		if p.orphans {
			args = append(args, "-orphan")
		}
		for _, c := range spec.children {
			args = append(args, "-child", c.encode())
		}
		if spec.router {
			args = append(append(args, "-router", "-shards", strconv.Itoa(spec.shards), "--"), spec.routerArgs...)
		}
		cmd := &exec.Cmd{
			Path:       self,
			Args:       args,
			Env:        os.Environ(),
			Stdin:      nil,
			Stdout:     os.Stdout,
			Stderr:     os.Stderr,
			ExtraFiles: []*os.File{lifeR, repW},
		}
		if spec.ownGroup {
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		}
		if err := cmd.Start(); err != nil {
			for _, c := range s.cmds {
				c.Process.Kill()
				c.Wait()
			}
			lifeW.Close()
			lifeR.Close()
			repR.Close()
			repW.Close()
			return nil, err
		}
		s.cmds = append(s.cmds, cmd)
		s.done = append(s.done, make(chan struct{}))
	}
	lifeR.Close()
	repW.Close()
	go func() {
		sc := bufio.NewScanner(repR)
		for sc.Scan() {
			f := strings.SplitN(sc.Text(), " ", 3)
			if len(f) < 2 {
				continue
			}
			rank, _ := strconv.Atoi(f[1])
			r := shardReport{rank: rank, ok: f[0] == "ready"}
			if len(f) == 3 {
				r.reason = f[2]
			}
			s.reports <- r
		}
		repR.Close()
	}()
	for rank, cmd := range s.cmds {
		go func() {
			cmd.Wait()
			close(s.done[rank])
			select {
			case <-s.stopping:
			default:
				s.exited <- shardExit{rank: rank, pid: cmd.Process.Pid, state: cmd.ProcessState}
			}
		}()
	}
	return s, nil
}

// waitReady waits until every worker reported ready. It returns the first
// failure report, the first worker that exited, or the first signal.
func (s *shardSet) waitReady(sigs chan os.Signal, ignoreTERM bool) (fail *shardReport, died *shardExit, sig os.Signal) {
	for n := 0; n < len(s.cmds); {
		select {
		case r := <-s.reports:
			if !r.ok {
				return &r, nil, nil
			}
			n++
		case e := <-s.exited:
			// A worker that failed to load reported why before it exited:
			// give the report a moment to arrive.
			timeout := time.After(500 * time.Millisecond)
			for {
				select {
				case r := <-s.reports:
					if !r.ok {
						return &r, nil, nil
					}
				case <-timeout:
					return nil, &e, nil
				}
			}
		case sg := <-sigs:
			if sg == syscall.SIGTERM && ignoreTERM {
				continue
			}
			return nil, nil, sg
		}
	}
	return nil, nil, nil
}

// stop ends the workers: the lifeline closes and each gets SIGTERM; those
// still running after grace are killed. It returns when all have exited.
func (s *shardSet) stop(grace time.Duration) {
	select {
	case <-s.stopping:
	default:
		close(s.stopping)
	}
	s.lifeline.Close()
	for _, c := range s.cmds {
		c.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	for i, c := range s.cmds {
		select {
		case <-s.done[i]:
		case <-time.After(time.Until(deadline)):
			c.Process.Kill()
			<-s.done[i]
		}
	}
}

// runWorker is a vLLM worker or TGI shard.
func runWorker(argv []string) int {
	fs := flag.NewFlagSet("fake-engine worker", flag.ContinueOnError)
	engine := fs.String("engine", "vllm", "")
	rank := fs.Int("rank", 0, "")
	claimsArg := fs.String("claims", "", "")
	delay := fs.Duration("delay", 0, "")
	fail := fs.String("fail", "", "")
	orphan := fs.Bool("orphan", false, "")
	router := fs.Bool("router", false, "")
	shards := fs.Int("shards", 1, "")
	var children []shardSpec
	fs.Func("child", "", func(v string) error {
		c, err := decodeShardSpec(v)
		children = append(children, c)
		return err
	})
	if err := fs.Parse(argv); err != nil {
		return 2
	}
	claims, err := decodeClaims(*claimsArg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fake-engine worker: %v\n", err)
		return 2
	}
	faults, _ := ParseFaults(os.Getenv)
	faults.OrphanWorkers = faults.OrphanWorkers || *orphan
	if len(children) > 0 {
		return runCore(Mode(*engine), *rank, faults, children)
	}
	if *router {
		return runRouter(*rank, faults, *shards, fs.Args())
	}
	out := &syncWriter{w: os.Stdout}
	report, lifeline, sigs := childLinks()
	prefix := fmt.Sprintf("(VllmWorker TP%d pid=%d) ", *rank, os.Getpid())
	if *engine == string(TGI) {
		prefix = ""
	}
	logf := func(level, format string, a ...any) {
		if *engine == string(SGLang) {
			out.printf("%s%s", sglangPrefix(*rank), fmt.Sprintf(format, a...))
			return
		}
		if *engine == string(TGI) {
			out.printf("%s  %s text_generation_launcher: %s", tgiTime(), level, fmt.Sprintf(format, a...))
			return
		}
		out.printf("%s%s %s [gpu_model_runner.py:2602] %s", prefix, level, vllmTime(), fmt.Sprintf(format, a...))
	}

	dir := os.Getenv(EnvSimDir)
	held := false
	release := func() {
		if held {
			sim.Release(dir, os.Getpid())
			held = false
		}
	}
	start := time.Now()
	timer := time.NewTimer(*delay)
	loading := true
	// A signal while the main process lives (the supervisor signals the
	// whole process group) waits for the main process to stop the workers,
	// so that it does not see them die first; alone, a worker gives up
	// waiting after a while.
	var termTimeout <-chan time.Time
	lifelineOpen := true
	for {
		select {
		case <-timer.C:
			if !loading {
				continue
			}
			loading = false
			if *fail != "" {
				report("fail %d %s", *rank, *fail)
				return 1
			}
			if dir != "" && len(claims) > 0 {
				if reason := checkFree(dir, claims, *engine); reason != "" {
					report("fail %d %s", *rank, reason)
					return 1
				}
				if err := sim.Claim(dir, os.Getpid(), claims); err != nil {
					report("fail %d claiming simulated GPU memory: %v", *rank, err)
					return 1
				}
				held = true
			}
			var total uint64
			for _, b := range claims {
				total += b
			}
			logf("INFO", "Model loading took %.4f GiB and %.6f seconds", gib(total), time.Since(start).Seconds())
			report("ready %d", *rank)
		case s := <-sigs:
			if s == syscall.SIGTERM && faults.IgnoreSIGTERM {
				continue
			}
			if !lifelineOpen {
				release()
				return 0
			}
			if termTimeout == nil {
				termTimeout = time.After(workerTermWait)
			}
		case <-termTimeout:
			release()
			return 0
		case <-lifeline:
			lifelineOpen = false
			lifeline = nil
			if faults.OrphanWorkers && termTimeout == nil {
				continue
			}
			release()
			return 0
		}
	}
}

// workerTermWait is how long a signalled worker waits for its main process
// to stop it.
const workerTermWait = 3 * time.Second

// checkFree says why the claims do not fit the simulated GPUs' free memory,
// in the engine's words, or "".
func checkFree(dir string, claims map[int]uint64, engine string) string {
	free, err := freeMemory(dir)
	if err != nil {
		return fmt.Sprintf("reading the simulated node: %v", err)
	}
	specs, err := sim.GPUs(dir)
	if err != nil {
		return fmt.Sprintf("reading the simulated node: %v", err)
	}
	for i, b := range claims {
		if i < 0 || i >= len(specs) || b <= free[i] {
			continue
		}
		if engine == string(SGLang) {
			return sglangNotEnoughMemory(i, b, free[i])
		}
		if engine == string(TGI) {
			return fmt.Sprintf("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate %.2f GiB. GPU %d has a total capacity of %.2f GiB of which %.2f GiB is free.", gib(b), i, gib(specs[i].MemoryBytes), gib(free[i]))
		}
		return fmt.Sprintf("ValueError: Free memory on device cuda:%d (%.2f/%.2f GiB) on startup is less than desired GPU memory utilization (%.2f GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.", i, gib(free[i]), gib(specs[i].MemoryBytes), gib(b))
	}
	return ""
}

// childLinks are what a process the stand-in started as one of its own
// (worker, EngineCore, router) has of its parent: report writes the one line
// of its start to descriptor 4 and closes it; lifeline closes when the
// parent is gone (descriptor 3 reaches EOF); sigs gets SIGTERM and SIGINT.
func childLinks() (report func(format string, a ...any), lifeline <-chan struct{}, sigs chan os.Signal) {
	reports := os.NewFile(4, "reports")
	report = func(format string, a ...any) {
		fmt.Fprintf(reports, format+"\n", a...)
		reports.Close()
	}
	gone := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.NewFile(3, "lifeline"))
		close(gone)
	}()
	sigs = make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	return report, gone, sigs
}

// runCore is a worker in between (vLLM's EngineCore with -tp > 1): it holds
// no memory, starts its own workers, reports ready to the main process when
// they all are, relays the first failure, and stops them when it stops. Like
// a worker it outlives the main process when told to (-orphan: vLLM's
// EngineCore and workers keep the GPUs after the API server is killed).
func runCore(mode Mode, rank int, faults Faults, children []shardSpec) int {
	report, lifeline, sigs := childLinks()
	p := &process{mode: mode, faults: faults, stdout: &syncWriter{w: os.Stdout}, stderr: &syncWriter{w: os.Stderr},
		pid: os.Getpid(), simDir: os.Getenv(EnvSimDir), state: newEngineState(faults), orphans: faults.OrphanWorkers}
	set, err := p.startShards(children)
	if err != nil {
		report("fail %d starting worker processes: %v", rank, err)
		return 1
	}
	type loaded struct {
		fail *shardReport
		died *shardExit
	}
	readyC := make(chan loaded, 1)
	go func() {
		fail, died, _ := set.waitReady(nil, false)
		readyC <- loaded{fail, died}
	}()
	var exitedC <-chan shardExit
	var termTimeout <-chan time.Time
	lifelineOpen := true
	for {
		select {
		case l := <-readyC:
			switch {
			case l.fail != nil:
				report("fail %d %s", rank, l.fail.reason)
				set.stop(shardGrace)
				return 1
			case l.died != nil:
				report("fail %d worker %d died (%s)", rank, l.died.rank, exitDescription(*l.died))
				set.stop(shardGrace)
				return 1
			}
			report("ready %d", rank)
			exitedC = set.exited
		case e := <-exitedC:
			p.stdout.printf("ERROR %s [multiproc_executor.py:149] Worker proc VllmWorker-%d died unexpectedly (%s), shutting down executor.", vllmTime(), e.rank, exitDescription(e))
			set.stop(shardGrace)
			return 1
		case s := <-sigs:
			if s == syscall.SIGTERM && faults.IgnoreSIGTERM {
				continue
			}
			if !lifelineOpen {
				set.stop(shardGrace)
				return 0
			}
			if termTimeout == nil {
				termTimeout = time.After(workerTermWait)
			}
		case <-termTimeout:
			set.stop(shardGrace)
			return 0
		case <-lifeline:
			lifelineOpen = false
			lifeline = nil
			if faults.OrphanWorkers && termTimeout == nil {
				continue
			}
			set.stop(shardGrace)
			return 0
		}
	}
}

// runRouter is TGI's text-generation-router: started by the launcher once
// its shards are warm, in a process group of its own, it binds the port and
// serves the engine's HTTP; it reports ready once it listens, or the bind
// error. It stops on SIGTERM from the launcher or when the launcher is gone.
func runRouter(rank int, faults Faults, shards int, argv []string) int {
	report, lifeline, sigs := childLinks()
	cfg, err := ParseTGIArgs(argv, os.Getenv)
	if err != nil {
		report("fail %d %v", rank, err)
		return 2
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Hostname, strconv.Itoa(cfg.Port)))
	if err != nil {
		report("fail %d %v", rank, err)
		return 1
	}
	state := newEngineState(faults)
	state.setReady(time.Now())
	hs := &http.Server{Handler: &tgiServer{cfg: cfg, shards: shards, state: state}, ErrorLog: discardLog()}
	go hs.Serve(ln)
	report("ready %d", rank)
	for {
		select {
		case s := <-sigs:
			if s == syscall.SIGTERM && faults.IgnoreSIGTERM {
				continue
			}
			time.Sleep(faults.ShutdownDelay) // in-flight requests finish
			hs.Close()
			return 0
		case <-lifeline:
			lifeline = nil
			if faults.OrphanWorkers {
				continue
			}
			hs.Close()
			return 0
		}
	}
}
