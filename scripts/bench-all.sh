#!/usr/bin/env bash
# Runs the whole benchmark suite on a GPU host from a bundle (scripts/bundle.sh) and leaves
# every output under $1 (default results/): CSV, markdown with the command line, PNG plots,
# and one log per mode. Each mode's defaults finish in under 3 minutes on an H100.
#
#   scripts/bundle.sh && (copy .device/ and scripts/ to the GPU host) && scripts/bench-all.sh out/
set -uo pipefail
out=${1:-results}
here=$(cd "$(dirname "$0")/.." && pwd)
run="$here/.device/run.sh tilemux"
mkdir -p "$out"
export TILEMUX_TIMEOUT=${TILEMUX_TIMEOUT:-400}
{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
} > "$out/machine.txt"
step() {
  name=$1; shift
  echo "== $name: tilemux $*" | tee -a "$out/commands.txt"
  start=$(date +%s)
  $run "$@" > "$out/$name.log" 2>&1
  echo "   rc=$? in $(( $(date +%s) - start )) s" | tee -a "$out/commands.txt"
}
step demo demo --seconds 5
step kernel bench kernel --kinds --out "$out/kernel"
step seed bench seed --out "$out/seed"
step mix bench mix --out "$out/mix"
step scale bench scale --out "$out/scale"
step latency bench latency --out "$out/latency"
step tune-conv bench tune --shape 256,128,1152 --count 120 --write "$out/tuning.txt" --out "$out/tune"
step tune-square bench tune --shape 256,256,256 --count 120 --write "$out/tuning.txt" --out "$out/tune"
step dispatch bench dispatch --out "$out/dispatch"
