#!/usr/bin/env bash
# The pool-managerd demo: a narrated walk through what the project does today.
# Usage: scripts/demo.sh PATH-TO-pool-managerd
set -euo pipefail

pm=${1:-bin/pool-managerd}
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

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
grep -h -A3 'gpus' examples/mixed-24-12/nodes/*.cue | head -8
grep -h -B2 -A2 'split' examples/mixed-24-12/pools/*.cue | head -12

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
(cd "$work" && "$pm" validate --format json broken | head -20)
echo "   ..."

say "Usage mistakes are told apart from invalid configs" "A directory that does not exist is a usage error: exit status 2."
run "$pm" validate "$work/does-not-exist"

printf '\n%sDone.%s validate is ready for PR checks; see README.md for the config reference.\n' "$bold" "$plain"
