#!/usr/bin/env bash
# Times `pool-managerd validate` against `cue vet` (the CUE command of the
# version in go.mod) on generated config repositories of 100, 1,000 and
# 10,000 pools (in 10, 100 and 1,000 pool files), and prints the ratio.
#
# Usage: scripts/bench-validate.sh BIN
#
#   BIN           the pool-managerd binary to time (make bench passes bin/pool-managerd)
#
# Environment:
#   RUNS=3        timed runs of each command per size, after one untimed
#                 warm-up run of each; the two commands alternate (so that
#                 load from elsewhere hits both alike) and the best run counts,
#                 for each of wall time, CPU time and peak memory apart
#   SIZES="100:10 1000:100 10000:1000"
#                 POOLS:FILES pairs to generate and time, smallest first
#   BENCH_STRICT=1
#                 exit 1 when a target below is missed at the largest size,
#                 or validate grows more than 1.5 times linearly between the
#                 last two sizes
#
# Both commands read the same files: `cue vet -c schema/poolmanagerd.cue` gets
# every .cue file that validate reads (the find in schema/poolmanagerd.cue).
# Each run is measured by tools/rusage: wall-clock seconds, cpu_s (user+sys,
# which the Go GC spreads over both cores of a 2-core machine) and peak RSS.
#
# Targets (issue 12), at the largest size: validate at most 0.7 times cue
# vet's wall time, and at most 1.0 times its CPU time and peak RSS; growing
# linearly. Needs bash 4.4+, coreutils, awk and Go; nothing else.
set -euo pipefail
shopt -s inherit_errexit

if [[ $# -ne 1 ]]; then
	echo "usage: $0 BIN" >&2
	exit 2
fi
bin=$1
if [[ ! -f $bin || ! -x $bin ]]; then
	echo "$0: $bin is not an executable; build it first (make build)" >&2
	exit 2
fi
# Resolve BIN before moving to the repository root.
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
cd "$(dirname "$0")/.."

GO=${GO:-go}
RUNS=${RUNS:-3}
SIZES=${SIZES:-"100:10 1000:100 10000:1000"}
if ! [[ $RUNS =~ ^[1-9][0-9]*$ ]]; then
	echo "$0: RUNS must be a positive integer, not '$RUNS'" >&2
	exit 2
fi
for size in $SIZES; do
	if ! [[ $size =~ ^[1-9][0-9]*:[1-9][0-9]*$ ]]; then
		echo "$0: SIZES holds POOLS:FILES pairs, not '$size'" >&2
		exit 2
	fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/pool-managerd-bench.XXXXXX")
cleanup() { rm -rf -- "$work"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "building bin/cue (cuelang.org/go/cmd/cue at the version in go.mod), tools/genconfig and tools/rusage..." >&2
mkdir -p bin
"$GO" build -o bin/cue cuelang.org/go/cmd/cue
"$GO" build -o "$work/genconfig" ./tools/genconfig
"$GO" build -o "$work/rusage" ./tools/rusage
cue_bin=$PWD/bin/cue
schema_file=$PWD/schema/poolmanagerd.cue

# run_once LABEL CMD...: runs CMD once and prints "WALL CPU RSS_KIB"; if CMD
# does not exit 0, shows its output and fails the script.
run_once() {
	local label=$1 rc=0
	shift
	"$work/rusage" -o "$work/cost" -- "$@" >"$work/out" 2>&1 || rc=$?
	if [[ $rc -ne 0 ]]; then
		echo "$0: $label exited $rc:" >&2
		head -c 4000 "$work/out" >&2
		exit 1
	fi
	cat "$work/cost"
}

# best A B: the better of two runs "WALL CPU RSS", each figure apart (B may be empty).
best() {
	if [[ -z $2 ]]; then
		echo "$1"
		return
	fi
	awk -v a="$1" -v b="$2" 'BEGIN {
		split(a, x, " "); split(b, y, " ")
		for (i = 1; i <= 3; i++) m[i] = (x[i] < y[i] ? x[i] : y[i])
		printf "%s %s %s\n", m[1], m[2], m[3]
	}'
}

printf '%s; %s; %s CPUs; best of %d warm runs each (wall, CPU and RSS apart)\n\n' "$(bin/cue version | head -1)" "$("$GO" version)" \
	"$(nproc 2>/dev/null || echo '?')" "$RUNS"
printf '%7s %6s %11s %10s %6s %15s %14s %6s %12s %11s %6s\n' pools files validate_s cue_vet_s ratio \
	validate_cpu_s cue_vet_cpu_s ratio validate_MiB cue_vet_MiB ratio
declare -a sizes_done=() v_times=() c_times=() v_runs=() c_runs=()
for size in $SIZES; do
	pools=${size%%:*} files=${size##*:}
	dir=$work/repo-$pools
	"$work/genconfig" -pools "$pools" -files "$files" -out "$dir"
	mapfile -t cue_files < <(find -L "$dir" -name '*.cue' -not -path '*/.*' -not -path '*/cue.mod/*' | LC_ALL=C sort)
	vcmd=("$bin" validate "$dir")
	ccmd=("$cue_bin" vet -c "$schema_file" "${cue_files[@]}")
	run_once "pool-managerd validate ($pools pools)" "${vcmd[@]}" >/dev/null
	run_once "cue vet ($pools pools)" "${ccmd[@]}" >/dev/null
	v="" c=""
	for ((i = 0; i < RUNS; i++)); do
		v=$(best "$(run_once "pool-managerd validate ($pools pools)" "${vcmd[@]}")" "$v")
		c=$(best "$(run_once "cue vet ($pools pools)" "${ccmd[@]}")" "$c")
	done
	awk -v p="$pools" -v f="$files" -v v="$v" -v c="$c" 'BEGIN {
		split(v, vv, " "); split(c, cc, " ")
		printf "%7d %6d %11.3f %10.3f %6.2f %15.3f %14.3f %6.2f %12.0f %11.0f %6.2f\n",
			p, f, vv[1], cc[1], vv[1] / cc[1], vv[2], cc[2], vv[2] / cc[2], vv[3] / 1024, cc[3] / 1024, vv[3] / cc[3]
	}'
	sizes_done+=("$pools")
	v_times+=("${v%% *}")
	c_times+=("${c%% *}")
	v_runs+=("$v")
	c_runs+=("$c")
	rm -rf -- "$dir"
done

n=${#sizes_done[@]}
failed=0
echo
if ((n >= 2)); then
	p0=${sizes_done[n - 2]} p1=${sizes_done[n - 1]}
	for tool in validate "cue vet"; do
		if [[ $tool == validate ]]; then
			t0=${v_times[n - 2]} t1=${v_times[n - 1]}
		else
			t0=${c_times[n - 2]} t1=${c_times[n - 1]}
		fi
		# Roughly linear: the time grows by at most 1.5 times the pool growth.
		if ! awk -v tool="$tool" -v p0="$p0" -v p1="$p1" -v t0="$t0" -v t1="$t1" 'BEGIN {
			g = p1 / p0; r = t1 / t0
			printf "growth %-8s %d -> %d pools (x%g): time x%.2f, %.2f of linear: %s\n", tool ":", p0, p1, g, r, r / g,
				(r <= 1.5 * g ? "roughly linear" : "SUPERLINEAR")
			exit !(r <= 1.5 * g)
		}'; then
			if [[ $tool == validate ]]; then failed=1; fi
		fi
	done
fi
if ! awk -v p="${sizes_done[n - 1]}" -v v="${v_runs[n - 1]}" -v c="${c_runs[n - 1]}" 'BEGIN {
	split(v, vv, " "); split(c, cc, " ")
	split("wall time,CPU time,peak RSS", what, ",")
	split("0.7 1.0 1.0", limit, " ")
	ok = 1
	for (i = 1; i <= 3; i++) {
		r = vv[i] / cc[i]
		met = (r <= limit[i] + 1e-9)
		printf "target: validate %s at most %.1fx cue vet at %d pools: %.2fx: %s\n", what[i], limit[i], p, r, (met ? "met" : "NOT MET")
		if (!met) ok = 0
	}
	exit !ok
}'; then
	failed=1
fi
if ((failed)) && [[ ${BENCH_STRICT:-0} == 1 ]]; then
	exit 1
fi
