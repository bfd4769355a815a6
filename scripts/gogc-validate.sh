#!/usr/bin/env bash
# Times `pool-managerd validate` at several GOGC values against `cue vet -c`
# (the cue of go.mod's version) on the same generated fleet repository, in one
# run, the commands alternating so that load from elsewhere hits them alike.
# Prints wall, CPU (user+sys) and peak RSS (/usr/bin/time's maximum resident
# set size) of each run and the median of each, and each median's ratio to cue
# vet's. GOGC=default means GOGC unset: validate's own setting (tuneGCForOneShot).
#
# Usage: scripts/gogc-validate.sh BIN [POOLS [FILES]]
#
# Environment: RUNS=3 timed runs of each (after one untimed warm-up of each);
# GOGCS="default 100 150 200 400" the values to time. Needs GNU time (/usr/bin/time).
set -euo pipefail
bin=$(realpath "${1:?usage: $0 BIN [POOLS [FILES]]}")
pools=${2:-10000}
files=${3:-$((pools / 10))}
runs=${RUNS:-3}
gogcs=${GOGCS:-"default 100 150 200 400"}
cd "$(dirname "$0")/.."
[ -x /usr/bin/time ] || { echo "$0: needs GNU time at /usr/bin/time" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/pm-gogc.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
go build -o "$work/cue" cuelang.org/go/cmd/cue
go run ./tools/genconfig -pools "$pools" -files "$files" -out "$work/repo"
mapfile -t cue_files < <(find -L "$work/repo" -name '*.cue' -not -path '*/.*' -not -path '*/cue.mod/*' | LC_ALL=C sort)

# once LABEL GOGC CMD...: one run; appends "LABEL WALL CPU RSS_MIB" to $work/runs.
once() {
	local label=$1 gogc=$2 rc=0
	shift 2
	if [ "$gogc" = default ]; then
		env -u GOGC /usr/bin/time -f '%e %U %S %M' -o "$work/time" "$@" >"$work/out" 2>&1 || rc=$?
	else
		GOGC=$gogc /usr/bin/time -f '%e %U %S %M' -o "$work/time" "$@" >"$work/out" 2>&1 || rc=$?
	fi
	if [ "$rc" -ne 0 ]; then
		echo "$0: $label exited $rc:" >&2
		head -c 2000 "$work/out" >&2
		exit 1
	fi
	awk -v l="$label" '{ printf "%s %.2f %.2f %.0f\n", l, $1, $2 + $3, $4 / 1024 }' "$work/time" | tee -a "$work/runs"
}

vet=("$work/cue" vet -c schema/poolmanagerd.cue "${cue_files[@]}")
echo "pools=$pools files=$files runs=$runs; $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "label wall_s cpu_s peak_rss_mib"
once warmup-cue default "${vet[@]}" >/dev/null
once warmup-validate default "$bin" validate "$work/repo" >/dev/null
: >"$work/runs"
for ((i = 0; i < runs; i++)); do
	once cue-vet default "${vet[@]}"
	for g in $gogcs; do
		once "validate-GOGC=$g" "$g" "$bin" validate "$work/repo"
	done
done
echo
echo "median of $runs: label wall_s cpu_s peak_rss_mib (ratio to cue vet)"
awk '
	{ n[$1]++; w[$1, n[$1]] = $2; c[$1, n[$1]] = $3; r[$1, n[$1]] = $4; if (!seen[$1]++) order[++k] = $1 }
	function med(a, l,   i, j, t, v, m) {
		m = n[l]
		for (i = 1; i <= m; i++) v[i] = a[l, i]
		for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
		return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
	}
	END {
		cw = med(w, "cue-vet"); cc = med(c, "cue-vet"); cr = med(r, "cue-vet")
		for (i = 1; i <= k; i++) {
			l = order[i]
			printf "%-22s %6.2f (%.2fx)  %6.2f (%.2fx)  %6.0f (%.2fx)\n", l, med(w, l), med(w, l) / cw, med(c, l), med(c, l) / cc, med(r, l), med(r, l) / cr
		}
	}' "$work/runs"
