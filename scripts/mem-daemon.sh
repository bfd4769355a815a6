#!/usr/bin/env bash
# Measures the daemon's memory on one node of a generated fleet repository:
# RSS (VmRSS) and peak RSS (VmHWM) after start and after each edit of a pool
# file of its own, and the time from the edit to "config loaded".
#
# Usage: scripts/mem-daemon.sh BIN_DIR [POOLS [FILES [EDITS]]]
#
#   BIN_DIR   holds pool-managerd and fake-engine (make build writes bin/)
#   POOLS     pools in the fleet repository (default 10000)
#   FILES     pool files (default POOLS/10)
#   EDITS     edits of the node's own pool file (default 2)
#
# Environment: SETTLE=30 seconds to wait after start and after each edit before
# reading RSS (the resync runs every 30 s); LOG_LEVEL=info the daemon's log
# level (debug shows when it returns memory to the OS); GODEBUG/GOGC pass to the
# daemon. Needs bash, awk, Go.
set -euo pipefail
bin=$(realpath "${1:?usage: $0 BIN_DIR [POOLS [FILES [EDITS]]]}")
pools=${2:-10000}
files=${3:-$((pools / 10))}
edits=${4:-2}
settle=${SETTLE:-30}
cd "$(dirname "$0")/.."

work=$(mktemp -d "${TMPDIR:-/tmp}/pm-mem.XXXXXX")
daemon=
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
		kill -TERM "$daemon" 2>/dev/null || true
		wait "$daemon" 2>/dev/null || true
	fi
	rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

go run ./tools/genconfig -pools "$pools" -files "$files" -out "$work/config"
gpus=()
for _ in $(seq 8); do gpus+=(--gpu "NVIDIA H100=80Gi"); done
"$bin/pool-managerd" sim init "$work/node" "${gpus[@]}" >/dev/null
own=$(grep -l '"gpu-0000"' "$work"/config/pools/*.cue | head -1)

log=$work/daemon.log
loaded() { grep -c '"@message":"config loaded"' "$log" || true; }
rss() { awk '/^VmRSS|^VmHWM/ {printf "%s %.0f MiB  ", $1, $2/1024}' "/proc/$daemon/status"; }
wait_loaded() { # wait_loaded N: until N "config loaded" lines
	for _ in $(seq 1200); do
		[ "$(loaded)" -ge "$1" ] && return 0
		kill -0 "$daemon" 2>/dev/null || { tail -5 "$log" >&2; exit 1; }
		sleep 0.05
	done
	echo "no config loaded #$1 within 60 s" >&2
	tail -5 "$log" >&2
	exit 1
}

t0=$(date +%s%N)
"$bin/pool-managerd" serve --config "$work/config" --node gpu-0000 --gpus "sim:$work/node" \
	--state-dir "$work/state" --listen 127.0.0.1:0 --log-format json \
	--llama-server "$bin/fake-engine" --log-level "${LOG_LEVEL:-info}" >"$log" 2>&1 &
daemon=$!
wait_loaded 1
echo "start → config loaded: $(( ($(date +%s%N) - t0) / 1000000 )) ms; $(rss)"
sleep "$settle"
echo "${settle}s after start: $(rss)"
for i in $(seq "$edits"); do
	n=$(loaded)
	t0=$(date +%s%N)
	# A change of this node's pool: the context size of its first pool.
	sed -i "0,/ctx: \([0-9]*\)}/s//ctx: $((4096 + i))}/" "$own"
	wait_loaded $((n + 1))
	echo "edit $i → config loaded: $(( ($(date +%s%N) - t0) / 1000000 )) ms; $(rss)"
	sleep "$settle"
	echo "${settle}s after edit $i: $(rss)"
done
if [ "${LOG_LEVEL:-info}" = debug ]; then
	grep -o '"@message":"returned free memory to the OS".*' "$log" || true
fi
