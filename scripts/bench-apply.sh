#!/usr/bin/env bash
# Apply benchmarks, on a simulated node with the stand-in engine:
#  1. 8 independent pools whose engine takes 1 s to load: time until all are Ready
#     (parallel apply: well under 8 s);
#  2. the time from an engine's exit (SIGKILL during its preload) to apply
#     reporting its pool Unready.
# Usage: scripts/bench-apply.sh BINDIR   (BINDIR holds pool-managerd and fake-engine)
set -euo pipefail

bin=$(realpath "${1:-bin}")
pm=$bin/pool-managerd
work=$(mktemp -d)
cleanup() {
	"$pm" stop --all --state-dir "$work/state" >/dev/null 2>&1 || true
	"$pm" stop --all --state-dir "$work/state2" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/config" "$work/models"
: >"$work/models/m.gguf"
gpus=()
for i in $(seq 0 7); do gpus+=(--gpu "NVIDIA A100=80Gi"); done
"$pm" sim init "$work/node" "${gpus[@]}" >/dev/null
{
	echo 'nodes: "bench": gpus: ['
	for i in $(seq 0 7); do echo "  {index: $i, vram: 80Gi},"; done
	echo ']'
	for i in $(seq 0 7); do
		cat <<CUE
pools: "p$i": {node: "bench", engine: "llamacpp", model: path: "$work/models/m.gguf", devices: [$i], vram: 4Gi
	env: FAKE_ENGINE_LOAD_DELAY: "1s"}
CUE
	done
} >"$work/config/pools.cue"

start=$(date +%s.%N)
"$pm" apply "$work/config" --gpus "sim:$work/node" --state-dir "$work/state" --node bench \
	--llama-server "$bin/fake-engine" --auto-approve >"$work/apply.out"
end=$(date +%s.%N)
ready=$(grep -c ' Ready: ' "$work/apply.out")
printf 'parallel apply: %d of 8 pools (1 s load each) Ready in %.2f s (serial would be >= 8 s)\n' "$ready" "$(awk -v a="$start" -v b="$end" 'BEGIN{print b-a}')"
"$pm" stop --all --state-dir "$work/state" >/dev/null

# 2. exit → Unready: an engine that loads for 30 s is killed 0.5 s into its preload.
sed -i 's/FAKE_ENGINE_LOAD_DELAY: "1s"/FAKE_ENGINE_LOAD_DELAY: "30s"/' "$work/config/pools.cue"
sed -i '/"p[1-7]"/,+1d' "$work/config/pools.cue"
"$pm" apply "$work/config" --gpus "sim:$work/node" --state-dir "$work/state2" --node bench \
	--llama-server "$bin/fake-engine" --auto-approve >"$work/apply2.out" 2>&1 &
apply_pid=$!
for _ in $(seq 100); do
	pid=$(grep -o 'engine pid [0-9]*' "$work/apply2.out" 2>/dev/null | head -1 | grep -o '[0-9]*' || true)
	[ -n "$pid" ] && break
	sleep 0.05
done
sleep 0.5
killed=$(date +%H:%M:%S.%N | cut -c1-12)
kill -9 "$pid"
wait "$apply_pid" || true
unready=$(grep ' Unready ' "$work/apply2.out" | head -1 | cut -c1-12)
ms() { awk -F: '{print ($1*3600 + $2*60 + $3)*1000}' <<<"$1"; }
printf 'engine exit -> pool Unready: %.0f ms (killed %s, Unready at %s)\n' "$(awk -v a="$(ms "$killed")" -v b="$(ms "$unready")" 'BEGIN{print b-a}')" "$killed" "$unready"
