#!/usr/bin/env bash
# The pool-managerd demo: a narrated walk through what the project does today.
# Usage: scripts/demo.sh PATH-TO-pool-managerd
set -euo pipefail

pm=$(realpath "${1:-bin/pool-managerd}")
cd "$(dirname "$0")/.."
work=$(mktemp -d)
# A real llama-server, when one is given (the tests' variable, or one in PATH):
# the daemon steps run it for the coder pool; the llama70b pool, whose story
# needs a slow load on cue, keeps the stand-in.
real_llama=${POOL_MANAGERD_TEST_LLAMA_SERVER:-$(command -v llama-server || true)}
if [ -n "$real_llama" ]; then
	real_llama=$(realpath "$real_llama")
	[ -x "$real_llama" ] || { echo "demo: $real_llama is not an executable llama-server" >&2; exit 1; }
	ggufgen="$(dirname "$pm")/ggufgen"
	[ -x "$ggufgen" ] || { echo "demo: $ggufgen is missing (make demo builds it)" >&2; exit 1; }
fi
cleanup() {
	# Stop any engine the demo left running, then remove its files, whatever fails.
	set +e
	[ -n "${daemon:-}" ] && kill -TERM "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
	[ -d "$work/run/state" ] && "$pm" stop --all --state-dir "$work/run/state" >/dev/null 2>&1
	rm -rf "$work"
}
trap cleanup EXIT

bold=$(tput bold 2>/dev/null || true)
plain=$(tput sgr0 2>/dev/null || true)
step=0
say() {
	step=$((step + 1))
	printf '\n%s== %d. %s%s\n' "$bold" "$step" "$1" "$plain"
	shift
	for line in "$@"; do printf '   %s\n' "$line"; done
}
run() {
	printf '%s$ %s%s\n' "$bold" "$*" "$plain"
	set +e
	"$@"
	local rc=$?
	set -e
	printf '   (exit status %d)\n' "$rc"
	return 0
}

say "The binary" "pool-managerd is one static command; this is the build you just made."
run "$pm" version

say "Validate the bundled example configs" \
	"Each example is a config repository: nodes/ declares a node's GPUs, pools/ declares" \
	"what runs on them. validate checks the schema, the device masks against the declared" \
	"GPUs, split ratios, shared GPUs and engine flags, without touching a GPU."
for dir in examples/*/; do
	[ -n "$(find "$dir" -name '*.cue' -print -quit)" ] || continue
	run "$pm" validate "${dir%/}"
done

say "A home-lab box: RTX 3090 (24 GiB) + RTX 3060 (12 GiB)" \
	"This is the mixed example's inventory and the pool that spans both cards." \
	"The split is explicit, and the 12 GiB card's ratio stays under its share of the" \
	"mask's VRAM (12 of 36 GiB = 0.333): the smallest GPU caps the split."
sed -n '/^nodes:/,$p' examples/mixed-24-12/nodes/gpu-01.cue | sed 's/^/   | /'
echo
sed -n '/^pools:/,/split:/p' examples/mixed-24-12/pools/llama70b.cue | grep -v '^\s*//' | sed 's/^/   | /'

say "A deliberately broken copy" \
	"We copy the mixed example and add one file with four mistakes a person might make:" \
	"  - a split that gives the 12 GiB card more than it can carry," \
	"  - a flag that would quietly move the KV cache to the CPU (CPU spillover)," \
	"  - a flag pool-managerd sets itself (the context size, spelled -c)," \
	"  - a device mask naming a GPU the node does not have."
cp -r examples/mixed-24-12 "$work/broken"
cat >"$work/broken/pools/broken.cue" <<'CUE'
package poolmanagerd

pools: "llama-70b-overload": {
	node:    "gpu-01"
	engine:  "llamacpp"
	model: {path: "/models/llama-3.3-70b-q4_k_m.gguf", ctx: 16384}
	devices: [0, 1]
	split: [0.55, 0.45] // more than the 12 GiB card's share
	flags: ["--no-kv-offload", "-c", "32768"]
}

pools: "phantom": {
	node:    "gpu-01"
	engine:  "llamacpp"
	model: {path: "/models/phi-4-mini-q8_0.gguf"}
	devices: [2] // gpu-01 has GPUs 0 and 1
}
CUE
sed -n '1,20p' "$work/broken/pools/broken.cue" | sed 's/^/   | /'

say "validate finds every mistake, each with file:line:column" \
	"Exit status 1 means invalid; nothing was applied."
(cd "$work" && run "$pm" validate broken)

say "The same errors as GitHub Actions annotations" \
	"In a pull-request check, --format github puts each error on the line it belongs to."
(cd "$work" && run "$pm" validate --format github broken)

say "And as JSON, for tools"
(cd "$work" && "$pm" validate --format json broken >"$work/report.json" || true)
head -20 "$work/report.json"
echo "   ..."

say "A simulated GPU node" \
	"No GPU here? pool-managerd ships a simulated node, served through the same NVML code" \
	"as real hardware. This one is the home lab: an RTX 3090, an RTX 3060 and 64 GiB of host RAM."
if [ -n "$real_llama" ]; then
	echo "   With a real llama-server at hand, the node also hosts real engines: pool-managerd gives each"
	echo "   engine it starts its pool's VRAM need on its GPUs, as a CPU build holds none of its own."
	run "$pm" sim init "$work/node" --ram 64Gi --host-real-engines
else
	run "$pm" sim init "$work/node" --ram 64Gi
fi
run "$pm" inventory --gpus "sim:$work/node" --node gpu-01

say "Plan: what would change on the node, and why" \
	"plan compares the config with the node's GPUs and the engines in the state directory" \
	"(none yet: a fresh node). Each start shows what it needs on each GPU against what is free," \
	"and what it needs of the host's RAM against what is available."
run "$pm" plan examples/mixed-24-12 --gpus "sim:$work/node" --state-dir "$work/state" --node gpu-01

say "Something else grabs GPU 1" \
	"A process pool-managerd does not own now holds 2 GiB on the 3060. The plan refuses to start" \
	"a pool there and says why, instead of finding out when the engine runs out of memory."
run "$pm" sim hold "$work/node" --gpu 1 --size 2Gi --pid 4242
run "$pm" plan examples/mixed-24-12 --gpus "sim:$work/node" --state-dir "$work/state" --node gpu-01
run "$pm" sim hold "$work/node" --gpu 1 --size 0 --pid 4242

say "The pull-request view: plan every declared node, no GPU needed" \
	"--gpus declared plans against the config's declared inventories, with nothing running;" \
	"--detailed-exitcode exits 2 when there is something to do, 3 when a pool would not fit."
run "$pm" plan examples/fleet --gpus declared --detailed-exitcode

say "The daemon: serve keeps the node running what the config says" \
	"We copy the mixed example with its model paths pointing at files here and run the daemon on" \
	"the simulated node with the bundled stand-in engine (it speaks llama-server's HTTP and holds" \
	"memory on the simulated GPUs it is given), or with a real llama-server for coder when one is" \
	"given (the lines below say which). The 70B pool's stand-in takes 3 s to 'load' its" \
	"model (FAKE_ENGINE_LOAD_DELAY in its env); coder is Ready long before it: a long preload never" \
	"holds up another pool. The API listens on a free loopback port, written to the state directory."
mkdir -p "$work/run/models"
cp -r examples/mixed-24-12 "$work/run/config"
config="$work/run/config"
sed -i "s|/models/|$work/run/models/|" "$config"/pools/*.cue
# No fixed ports here: the demo must not collide with a service on this machine.
sed -i '/^\s*port:/d' "$config"/pools/*.cue
sed -i 's|env: LLAMA_ARG_CACHE_TYPE_K: "q8_0"|env: {LLAMA_ARG_CACHE_TYPE_K: "q8_0", FAKE_ENGINE_LOAD_DELAY: "3s"}|' "$config/pools/llama70b.cue"
for model in $(grep -ho "$work/run/models/[^\"]*" "$config"/pools/*.cue); do : >"$model"; done
# The llama-server the daemon runs: the stand-in, or (with a real one) a wrapper
# that runs the real one unless the pool's env says DEMO_STANDIN (llama70b's).
engine="$(dirname "$pm")/fake-engine"
if [ -n "$real_llama" ]; then
	engine="$work/bin/llama-server"
	mkdir -p "$work/bin"
	printf '#!/usr/bin/env bash\n# The demo'"'"'s llama-server: the stand-in for a pool whose env sets DEMO_STANDIN, else the real one.\nif [ -n "${DEMO_STANDIN:-}" ]; then exec -a "$0" %q "$@"; fi\nexec -a "$0" %q "$@"\n' \
		"$(realpath "$(dirname "$pm")/fake-engine")" "$real_llama" >"$engine"
	chmod +x "$engine"
	sed -i 's|FAKE_ENGINE_LOAD_DELAY: "3s"}|FAKE_ENGINE_LOAD_DELAY: "3s", DEMO_STANDIN: "1"}|' "$config/pools/llama70b.cue"
	coder_model=$(grep -ho "$work/run/models/[^\"]*" "$config/pools/coder.cue")
	"$ggufgen" "$coder_model" | sed 's/^/   /'
	echo "   Engines: coder runs the real llama-server ($real_llama) on a synthetic F16 model"
	echo "   (all-zero weights: it answers garbage, quickly); llama70b keeps the stand-in, whose 3 s"
	echo "   load is a fault injected on cue."
else
	echo "   Engines: both pools run the stand-in (bin/fake-engine). Give POOL_MANAGERD_TEST_LLAMA_SERVER"
	echo "   (or put llama-server in PATH) and coder runs the real llama-server."
fi
state="$work/run/state"
node=(--gpus "sim:$work/node" --state-dir "$state" --node gpu-01)
log="$work/daemon.log"
start_daemon() {
	printf '%s$ pool-managerd serve --config %s %s --listen 127.0.0.1:0 --removal-settle 1m --llama-server %s &%s\n' "$bold" "$config" "${node[*]}" "$engine" "$plain"
	"$pm" serve --config "$config" "${node[@]}" --listen 127.0.0.1:0 --removal-settle 1m --llama-server "$engine" 2>>"$log" &
	daemon=$!
}
shown=0
# show_log prints the daemon's log lines written since the last call.
show_log() {
	local size
	size=$(wc -c <"$log")
	tail -c +"$((shown + 1))" "$log" | head -c "$((size - shown))" | sed -e 's/^[0-9T:.-]*Z //' -e 's/^/   | /'
	shown=$size
}
# fail ends the demo with a message and the daemon's log since the last step.
fail() {
	printf '\n%sdemo: step %d failed: %s%s\n' "$bold" "$step" "$1" "$plain" >&2
	[ -s "$log" ] && show_log >&2
	exit 1
}
# await waits until the daemon reports what pool-managerd wait is asked for:
# a pool's phase (and a new engine), its first reconcile, the config's state.
# wait gives up after its timeout (60 s) saying what it last saw, and so does
# the demo.
await() {
	printf '%s$ pool-managerd wait %s%s\n' "$bold" "$*" "$plain"
	"$pm" wait --state-dir "$state" "$@" | sed 's/^/   /' || fail "pool-managerd wait $* (see above)"
}
# pid_of prints the pid of the pool's engine, as status sees it.
pid_of() {
	"$pm" status "$1" --field pid "${node[@]}" || fail "no engine for pool $1"
}
# now is the time, for wait --since: a config load after it read what we wrote after it.
now() { date -u +%Y-%m-%dT%H:%M:%S.%NZ; }
api() {
	if command -v curl >/dev/null; then
		printf '%s$ curl http://%s%s%s\n' "$bold" "$(cat "$state/api.addr")" "$1" "$plain"
		curl -s "http://$(cat "$state/api.addr")$1"
		echo
	fi
}
: >"$log"
start_daemon
await --for ready
await coder --for phase=Ready
echo "   ... coder is Ready; llama70b is still loading:"
"$pm" status "${node[@]}" | sed 's/^/   /'
await llama70b --for phase=Ready
say "Its log: one event per transition (go-hclog; --log-format json for one JSON object a line)"
show_log

say "Status: phase, engine, GPU memory, restarts, breaker" \
	"The same view is served at /v1/pools; /readyz says the first reconcile is done; /metrics has" \
	"the Prometheus metrics."
run "$pm" status "${node[@]}"
api /readyz
api /v1/pools/coder
if command -v curl >/dev/null; then
	printf '%s$ curl http://%s/metrics | grep ...%s\n' "$bold" "$(cat "$state/api.addr")" "$plain"
	curl -s "http://$(cat "$state/api.addr")/metrics" | grep -E '^pool_managerd_(pool_ready|preload_total|gpu_memory_used_bytes|config_valid)' | sed 's/^/   /'
fi

say "A live config edit is picked up and re-planned" \
	"We lower llama70b's context from 8192 to 4096 in its file. The daemon sees the write (fsnotify," \
	"debounced), plans, drains and replaces that engine only; coder keeps its pid."
coder_pid=$(pid_of coder)
big_pid=$(pid_of llama70b)
run sed -i 's/ctx:  8192/ctx:  4096/' "$config/pools/llama70b.cue"
await llama70b --for phase=Ready --not-pid "$big_pid"
await coder --for phase=Ready
show_log
coder_after=$(pid_of coder)
echo "   coder's pid: $coder_pid before, $coder_after after."

say "A broken edit is never applied" \
	"We save a half-written file. The daemon keeps the last good config in force, says why in the" \
	"log, at /v1/config and in pool_managerd_config_valid, and picks up the fix."
since=$(now)
run sh -c "printf 'pools: coder: { ctx: ' >>'$config/pools/coder.cue'"
await --for config=invalid --since "$since"
show_log
api /v1/config
since=$(now)
run sed -i '$d' "$config/pools/coder.cue"
await --for config=valid --since "$since"
show_log

say "A file saved in two steps stops nothing" \
	"An editor or scp that writes in place leaves llama70b's file empty for a moment. The daemon" \
	"loads that valid config without llama70b, but keeps its engine serving until its absence has" \
	"held for --removal-settle (5 s by default; a minute here, for a slow machine; /v1/pools shows" \
	"removalAt). Written back in time, the engine is untouched: same pid, no 70B model reloaded."
big_pid=$(pid_of llama70b)
cp "$config/pools/llama70b.cue" "$work/llama70b.cue"
since=$(now)
run sh -c ": >'$config/pools/llama70b.cue'"
await --for config=valid --since "$since"
api /v1/pools/llama70b
since=$(now)
run cp "$work/llama70b.cue" "$config/pools/llama70b.cue"
await --for config=valid --since "$since"
await llama70b --for phase=Ready
show_log
big_after=$(pid_of llama70b)
echo "   llama70b's pid: $big_pid before, $big_after after."
[ "$big_after" = "$big_pid" ] || fail "llama70b's engine was replaced by a save in two steps"

say "An engine crashes" \
	"We kill coder's engine with SIGKILL. The daemon sees the exit at once, records the failure," \
	"waits out the backoff (1 s, doubling, with jitter) and starts it again."
coder_pid=$(pid_of coder)
run kill -9 "$coder_pid"
await coder --for phase=Ready --not-pid "$coder_pid"
show_log
run "$pm" status "${node[@]}"

say "A clean shutdown leaves the engines running" \
	"SIGTERM stops the daemon; the engines keep serving. A new daemon adopts them: no restart."
coder_pid=$(pid_of coder)
big_pid=$(pid_of llama70b)
run kill -TERM "$daemon"
wait "$daemon" || true
show_log
start_daemon
await --for ready
await coder llama70b --for phase=Ready
show_log
run "$pm" status "${node[@]}"
coder_after=$(pid_of coder)
big_after=$(pid_of llama70b)
echo "   pids: coder $coder_pid before, $coder_after after; llama70b $big_pid before, $big_after after."

say "Stop every pool, through the daemon" \
	"While the daemon holds the state directory, stop and reset go through its API. Engines are" \
	"drained, sent SIGTERM, and SIGKILL only after their grace period."
run "$pm" stop --all --state-dir "$state"
await coder llama70b --for phase=Stopped
kill -TERM "$daemon"
wait "$daemon" || true
show_log

say "Usage mistakes are told apart from invalid configs" "A directory that does not exist is a usage error: exit status 2."
run "$pm" validate "$work/does-not-exist"

printf '\n%sDone.%s See README.md for the config and CLI reference.\n' "$bold" "$plain"
