#!/usr/bin/env bash
# Daemon benchmarks, on a simulated node (8 x A100 80 GiB) with 100 pools of the
# stand-in engine (share: true, vram 6Gi: 12 or 13 pools a GPU, model files empty):
#  0. cold start: `serve` from nothing to every pool Ready;
#  1. config write -> applied: one pool's file saved the way an editor does (a
#     temporary file renamed over it), until the API shows the pool Ready with a
#     new engine pid (a replace: its ctx changed) and until the log says "config
#     loaded" (debounce + load + plan: the pickup alone); then an in-place update
#     (restart.initialBackoff changed: no restart) until /v1/config's
#     lastGoodLoad moved and the pool is Ready with the same pid;
#  2. idle CPU and RSS of the daemon over 30 s with every pool Ready (default
#     --resync 30s, so one resync pass falls in the window);
#  3. a new daemon adopting the 100 running engines, after SIGTERM (of a quiet
#     daemon, and of one in the middle of a pass: SIGHUP, then SIGTERM while it
#     probes the engines) and after kill -9 of the old one: time until /readyz
#     is 200 and until every pool is Ready through it. No engine may be
#     restarted (same pids, same restarts counters, no new start header in any
#     engine log): otherwise the script fails.
# Usage: scripts/bench-daemon.sh BINDIR   (BINDIR holds pool-managerd and fake-engine)
# BENCH_LOAD_DELAY (default 300ms) is the stand-in engine's model load time;
# BENCH_REPS (default 5) the repetitions of each config change; BENCH_IDLE
# (default 30) the idle window in seconds.
set -euo pipefail

bin=$(realpath "${1:-bin}")
pm=$bin/pool-managerd
engine=$bin/fake-engine
pools=100
ngpus=8
load_delay=${BENCH_LOAD_DELAY:-300ms}
reps=${BENCH_REPS:-5}
idle_window=${BENCH_IDLE:-30}
for tool in curl awk sort; do
	command -v "$tool" >/dev/null || { echo "bench-daemon: needs $tool" >&2; exit 1; }
done

work=$(mktemp -d)
state=$work/state
config=$work/config
daemon=
# ours lists the live processes whose command line names this run's model
# directory: the engines this benchmark started, and nothing else.
ours() {
	local p
	for p in /proc/[0-9]*; do
		{ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF "$work/models/" && echo "${p#/proc/}"
	done
	return 0
}
cleanup() {
	local rc=$? pids p left
	trap - EXIT INT TERM
	if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
		kill -TERM "$daemon" 2>/dev/null || true
		wait "$daemon" 2>/dev/null || true
	fi
	pids=$(ours)
	[ -d "$state" ] && "$pm" stop --all --state-dir "$state" >/dev/null 2>&1 || true
	# stop has sent SIGTERM (SIGKILL after the grace); wait (10 s at most) until
	# the engines are gone, zombies too (their parent, a daemon, has exited: pid 1
	# reaps them), then SIGKILL what is left of ours (a failed stop) by pid.
	for _ in $(seq 100); do
		left=
		for p in $pids; do [ -e "/proc/$p" ] && left=1 && break; done
		[ -z "$left" ] && break
		sleep 0.1
	done
	pids=$(ours)
	if [ -n "$pids" ]; then
		echo "bench-daemon: cleanup: SIGKILL to engines left running: $pids" >&2
		# shellcheck disable=SC2086
		kill -KILL $pids 2>/dev/null || true
	fi
	rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

results=()
row() { results+=("$(printf '%-76s %s' "$1" "$2")"); }
fail() {
	if [ "${#results[@]}" -gt 0 ]; then
		echo "bench-daemon: measured before the failure:" >&2
		printf '  %s\n' "${results[@]}" >&2
	fi
	echo "bench-daemon: FAIL: $*" >&2
	exit 1
}
now_ns() { date +%s%N; }
ms_since() { awk -v a="$1" -v b="$(now_ns)" 'BEGIN{printf "%.0f", (b-a)/1e6}'; }
# ts_ms turns a log or API timestamp (RFC 3339, UTC) into Unix milliseconds.
ts_ms() { date -u -d "$1" +%s%3N; }

# The node and the config: one file per pool, as a repository would keep them.
mkdir -p "$config/pools" "$work/models"
: >"$work/models/m.gguf"
gpus=()
for _ in $(seq "$ngpus"); do gpus+=(--gpu "NVIDIA A100=80Gi"); done
"$pm" sim init "$work/node" "${gpus[@]}" >/dev/null
{
	echo 'nodes: "bench": gpus: ['
	for i in $(seq 0 $((ngpus - 1))); do echo "  {index: $i, vram: 80Gi},"; done
	echo ']'
} >"$config/node.cue"
pool_id() { printf 'p%03d' "$1"; }
write_pool() { # write_pool FILE ID GPU CTX BACKOFF
	cat >"$1" <<CUE
pools: "$2": {
	node: "bench", engine: "llamacpp", devices: [$3]
	model: {path: "$work/models/m.gguf", ctx: $4}
	vram: 6Gi, share: true
	restart: initialBackoff: "$5"
	env: {FAKE_ENGINE_VRAM: "6Gi", FAKE_ENGINE_LOAD_DELAY: "$load_delay"}
}
CUE
}
for i in $(seq 0 $((pools - 1))); do
	write_pool "$config/pools/$(pool_id "$i").cue" "$(pool_id "$i")" $((i % ngpus)) 4096 1s
done
# save_pool saves a pool's file as an editor does: a temporary file in the same
# directory (hidden: the watcher ignores it), renamed over the old one.
save_pool() { # save_pool INDEX CTX BACKOFF
	local id f
	id=$(pool_id "$1")
	f=$config/pools/$id.cue
	write_pool "$config/pools/.$id.cue.swp" "$id" $(($1 % ngpus)) "$2" "$3"
	mv "$config/pools/.$id.cue.swp" "$f"
}

log=
addr=
start_daemon() { # start_daemon LOGFILE
	log=$1
	: >"$log"
	"$pm" serve --config "$config" --gpus "sim:$work/node" --state-dir "$state" --node bench \
		--listen 127.0.0.1:0 --log-format json --llama-server "$engine" >>"$log" 2>&1 &
	daemon=$!
	addr=
	for _ in $(seq 300); do
		addr=$(grep -o '"@message":"API listening".*' "$log" | grep -o '"address":"[^"]*"' | cut -d'"' -f4 || true)
		[ -n "$addr" ] && break
		kill -0 "$daemon" 2>/dev/null || fail "the daemon exited at start: $(tail -5 "$log")"
		sleep 0.02
	done
	[ -n "$addr" ] || fail "the daemon did not listen within 6 s: $(tail -5 "$log")"
	[ "$(cat "$state/api.addr")" = "$addr" ] || fail "api.addr says $(cat "$state/api.addr"), the log $addr"
}
stopped_ms=
stop_daemon() { # stop_daemon SIGNAL: sets stopped_ms, the ms until it exited
	local t0
	t0=$(now_ns)
	kill -"$1" "$daemon"
	wait "$daemon" 2>/dev/null || true
	stopped_ms=$(ms_since "$t0")
	daemon=
}
# stop_during_pass: SIGHUP (a config load, then a pass), then SIGTERM halfway
# through that pass, while it probes the engines' health (load_ms and pass_ms
# are measured below): a shutdown must not read the probes it cut short as
# failing engines.
stop_during_pass() {
	kill -HUP "$daemon"
	sleep "$(awk -v l="$load_ms" -v p="$pass_ms" 'BEGIN{ printf "%.3f", (l + p / 2) / 1000 }')"
	stop_daemon TERM
}
get() { curl -fsS --max-time 5 "http://$addr$1"; }
# poll TRIES INTERVAL COMMAND...: run COMMAND until it succeeds, at most TRIES times.
poll() {
	local tries=$1 every=$2
	shift 2
	for _ in $(seq "$tries"); do
		"$@" && return 0
		sleep "$every"
	done
	return 1
}
wait_readyz() { # until /readyz answers 200 (the first reconcile is done), at most 30 s
	for _ in $(seq 1500); do
		curl -fs -o /dev/null --max-time 5 "http://$addr/readyz" && return 0
		kill -0 "$daemon" 2>/dev/null || fail "the daemon exited: $(tail -5 "$log")"
		sleep 0.02
	done
	fail "/readyz not 200 within 30 s"
}
# table prints "pool pid ready restarts" for every pool the API lists (its JSON is
# indented, one field a line; nested objects hold no pool, pid, ready or restarts key).
table() {
	get /v1/pools | awk '
		/^    "pool": / { if (p != "") print p, pid, ready, restarts; p = $2; gsub(/[",]/, "", p); pid = "-"; ready = "-"; restarts = "-" }
		/^    "pid": / { pid = $2; sub(/,/, "", pid) }
		/^    "ready": / { ready = $2; sub(/,/, "", ready) }
		/^    "restarts": / { restarts = $2; sub(/,/, "", restarts) }
		END { if (p != "") print p, pid, ready, restarts }'
}
# all_ready: every pool Ready with an engine pid, in the API.
all_ready() {
	local t
	t=$(table 2>/dev/null) || return 1
	[ "$(awk '$2 != "-" && $3 == "true"' <<<"$t" | wc -l)" -eq "$pools" ]
}
wait_all_ready() { # wait_all_ready SECONDS
	for _ in $(seq $(($1 * 20))); do
		all_ready && return 0
		kill -0 "$daemon" 2>/dev/null || fail "the daemon exited: $(tail -5 "$log")"
		sleep 0.05
	done
	fail "not every pool Ready within $1 s: $(table | awk '$3 != "true"' | head -5 | tr '\n' ';')"
}
field() { # field POOL KEY: one top-level field of /v1/pools/POOL
	get "/v1/pools/$1" | awk -v k="  \"$2\": " 'index($0, k) == 1 { v = substr($0, length(k) + 1); sub(/,$/, "", v); gsub(/"/, "", v); print v }'
}
# log_ms PATTERN AFTER_LINE: sets at_ms to the time (Unix ms) of the first log
# event after line AFTER_LINE that matches PATTERN, waiting up to 10 s for it.
at_ms=
# ready_with_new_pid POOL OLDPID: the pool is Ready in an engine other than OLDPID.
ready_with_new_pid() {
	local pid ready
	pid=$(field "$1" pid) ready=$(field "$1" ready)
	[ "$ready" = true ] && [ -n "$pid" ] && [ "$pid" != "$2" ]
}
# loaded_since NS POOL: the config in force was loaded after NS and the pool is Ready.
loaded_since() {
	local good
	good=$(get /v1/config | awk -F'"' '$2 == "lastGoodLoad" { print $4 }')
	[ -n "$good" ] && [ "$(date -u -d "$good" +%s%N)" -gt "$1" ] && [ "$(field "$2" ready)" = true ]
}
log_ms() {
	local line
	for _ in $(seq 500); do
		line=$(tail -n +"$(($2 + 1))" "$log" | grep -m1 -e "$1" || true)
		if [ -n "$line" ]; then
			at_ms=$(ts_ms "$(grep -o '"@timestamp":"[^"]*"' <<<"$line" | cut -d'"' -f4)")
			return
		fi
		sleep 0.02
	done
	fail "no log event matching $1 within 10 s"
}
# passes prints the daemon's reconcile passes so far: "COUNT SUM_SECONDS".
passes() {
	get /metrics | awk '/^pool_managerd_reconcile_duration_seconds_count / { n = $2 } /^pool_managerd_reconcile_duration_seconds_sum / { s = $2 } END { print n + 0, s + 0 }'
}
spawns() { grep -c '^-- pool-managerd [^ ]*: start ' "$state"/logs/*.log || true; }
stats() { # stats VALUES...: "min / median / max"
	printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%d / %d / %d", v[1], m, v[NR] }'
}

# 0. Cold start.
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
t0=$(now_ns)
start_daemon "$work/daemon1.log"
wait_readyz
readyz_ms=$(ms_since "$t0")
wait_all_ready 60
cold_ms=$(ms_since "$t0")
row "cold start: serve -> /readyz 200" "$readyz_ms ms"
row "cold start: serve -> $pools pools Ready (API, with pids)" "$cold_ms ms"

# 2. Idle CPU and RSS (first, while nothing else has happened since the cold start).
hz=$(getconf CLK_TCK)
sleep 1
cpu() { awk '{ print $14 + $15 }' "/proc/$daemon/stat"; }
kb() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$daemon/status"; }
p0=$(passes)
c0=$(cpu) r0=$(kb VmRSS) w0=$(now_ns)
sleep "$idle_window" &
wait $! # (a trapped signal interrupts wait, not sleep)
c1=$(cpu) r1=$(kb VmRSS) hwm=$(kb VmHWM) w1=$(now_ns)
p1=$(passes)
read -r n0 s0 <<<"$p0"
read -r n1 s1 <<<"$p1"
all_ready || fail "a pool left Ready during the idle window"
row "idle ${idle_window} s, $pools Ready: CPU (% of one core)" "$(awk -v c="$((c1 - c0))" -v hz="$hz" -v a="$w0" -v b="$w1" 'BEGIN{printf "%.2f %% (%.2f s CPU)", 100 * c / hz / ((b - a) / 1e9), c / hz}')"
pass_ms=$(awk -v a="$n0" -v b="$n1" -v x="$s0" -v y="$s1" 'BEGIN{ printf "%.0f", (b > a) ? (y - x) * 1000 / (b - a) : 100 }')
row "idle: reconcile passes in the window (resync 30s), their time" "$(awk -v a="$n0" -v b="$n1" -v x="$s0" -v y="$s1" 'BEGIN{printf "%d, %.0f ms", b - a, (y - x) * 1000}')"
row "idle: daemon threads (it spawned the $pools engines)" "$(kb Threads)"
row "idle: VmRSS start -> end, VmHWM" "$(awk -v a="$r0" -v b="$r1" -v h="$hwm" 'BEGIN{printf "%.1f -> %.1f MiB, HWM %.1f MiB", a / 1024, b / 1024, h / 1024}')"

# 1a. Config write -> replace applied.
loaded=() draining=() spawned=() applied=() engine_ms=()
for r in $(seq "$reps"); do
	i=$(((r * 37 + 3) % pools)) # pools on different GPUs, some on the full ones (13 pools)
	id=$(pool_id "$i")
	old=$(field "$id" pid)
	[ -n "$old" ] || fail "$id has no engine pid"
	n=$(wc -l <"$log")
	t0=$(now_ns)
	save_pool "$i" 8192 1s
	poll 1000 0.01 ready_with_new_pid "$id" "$old" || fail "$id: not Ready with a new pid after its ctx changed"
	applied+=("$(ms_since "$t0")")
	log_ms '"@message":"config loaded"' "$n"
	loaded+=("$((at_ms - t0 / 1000000))")
	log_ms "\"phase\":\"Draining\",\"pool\":\"$id\"" "$n"
	draining+=("$((at_ms - t0 / 1000000))")
	log_ms "\"phase\":\"Preloading\",\"pool\":\"$id\"" "$n"
	spawned+=("$((at_ms - t0 / 1000000))")
	ms=$(tail -n +"$((n + 1))" "$log" | grep "\"pool\":\"$id\"" | grep -o '"loaded_in":"[^"]*"' | tail -1 | cut -d'"' -f4)
	engine_ms+=("$(awk -v d="$ms" 'BEGIN{ if (d ~ /ms$/) { sub(/ms$/, "", d); print d } else { sub(/s$/, "", d); print d * 1000 } }')")
	sleep 0.5
done
row "replace (ctx), write -> \"config loaded\" in the log" "$(stats "${loaded[@]}") ms (min / median / max of $reps)"
row "replace, write -> old engine Draining (plan pass done)" "$(stats "${draining[@]}") ms"
row "replace, write -> new engine starting (old one stopped)" "$(stats "${spawned[@]}") ms"
row "replace (ctx), write -> Ready with a new pid (API)" "$(stats "${applied[@]}") ms"
row "replace: the new engine's own load (loaded_in; delay $load_delay)" "$(stats "${engine_ms[@]}") ms"

# 1b. Config write -> in-place update applied.
loaded=() updated=() applied=()
for r in $(seq "$reps"); do
	i=$(((r * 41 + 11) % pools))
	id=$(pool_id "$i")
	old=$(field "$id" pid)
	ctx=4096
	grep -q 'ctx: 8192' "$config/pools/$id.cue" && ctx=8192
	n=$(wc -l <"$log")
	t0=$(now_ns)
	save_pool "$i" "$ctx" "$((r + 1))s"
	poll 1000 0.01 loaded_since "$t0" "$id" || fail "$id: lastGoodLoad did not move after its file changed"
	applied+=("$(ms_since "$t0")")
	log_ms '"@message":"config loaded"' "$n"
	loaded+=("$((at_ms - t0 / 1000000))")
	log_ms "\"@message\":\"updated in place[^\"]*\",.*\"pool\":\"$id\"" "$n"
	updated+=("$((at_ms - t0 / 1000000))")
	[ "$(field "$id" pid)" = "$old" ] || fail "$id: the in-place update restarted its engine"
	sleep 0.3
done
row "in-place (restart.initialBackoff), write -> \"config loaded\"" "$(stats "${loaded[@]}") ms"
# a config load takes about this long: the pickup less the 200 ms debounce
load_ms=$(printf '%s\n' "${loaded[@]}" | sort -n | awk '{ v[NR] = $1 } END { m = v[int((NR + 1) / 2)] - 200; print (m > 0) ? m : 0 }')
row "in-place, write -> lastGoodLoad moved + Ready (API)" "$(stats "${applied[@]}") ms"
row "in-place, write -> \"updated in place\" in the log" "$(stats "${updated[@]}") ms"

# 3. A new daemon adopts the running engines, after SIGTERM (quiet, then in the
# middle of a pass) and after kill -9.
wait_all_ready 30
read -r n s <<<"$(passes)"
row "first daemon: reconcile passes so far, mean pass time" "$(awk -v n="$n" -v s="$s" 'BEGIN{printf "%d, %.0f ms", n, 1000 * s / n}')"
for sig in TERM TERM-mid-pass KILL; do
	before=$(table)
	spawns_before=$(spawns)
	case $sig in
	TERM-mid-pass) stop_during_pass ;;
	*) stop_daemon "$sig" ;;
	esac
	t0=$(now_ns)
	start_daemon "$work/daemon-after-$sig.log"
	wait_readyz
	readyz_ms=$(ms_since "$t0")
	wait_all_ready 30
	ready_ms=$(ms_since "$t0")
	sleep 1 # a restart, had there been one, would show by now
	after=$(table)
	[ "$before" = "$after" ] || fail "after SIG$sig: pids or restarts changed: $(diff <(echo "$before") <(echo "$after") | head -6 | tr '\n' ';')"
	[ "$spawns_before" = "$(spawns)" ] || fail "after SIG$sig: an engine was spawned again: $(diff <(echo "$spawns_before") <(spawns) | head -6 | tr '\n' ';')"
	! grep -q '"phase":"Preloading"' "$log" || fail "after SIG$sig: the new daemon started an engine: $(grep -m1 '"phase":"Preloading"' "$log")"
	row "restart after SIG$sig: old daemon exited in" "$stopped_ms ms"
	row "restart after SIG$sig: new daemon -> /readyz 200" "$readyz_ms ms"
	row "restart after SIG$sig: new daemon -> $pools pools Ready (API)" "$ready_ms ms"
	row "restart after SIG$sig: engines restarted (pids, restarts, spawns)" "0 of $pools"
	row "restart after SIG$sig: new daemon's threads (adopted engines)" "$(kb Threads)"
done

cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo
echo "pool-managerd serve at $pools pools ($ngpus simulated A100 80 GiB, stand-in engine, load delay $load_delay)"
echo "machine: $(nproc) CPUs, $cpu_model, $(uname -r); load average $load_before at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
printf '%-76s %s\n' "measure" "value"
printf '%s\n' "${results[@]}"
