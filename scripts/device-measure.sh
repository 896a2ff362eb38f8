#!/usr/bin/env bash
# One measuring run on a GPU host, from a bundle (scripts/bundle.sh) copied there with this
# script, the submit example builds and any A/B builds next to it:
#   .device/tilemux, .device/tests/*, .device/run.sh        (scripts/bundle.sh)
#   .device/submit-example, .device/submit-phases           (examples/submit, plain and --features phases)
#   .device/ab/submit-<commit> ...                          (examples/submit of earlier commits)
# Writes into $OUT: machine.txt, gpu-tests.log (unless TESTS=0), submit-ab.log (three interleaved
# rounds of every build in AB, then submit-example, 10^5 GEMVs each), phases.log, dispatch.log
# (+ dispatch/), latency.log (+ latency/).
#   OUT=/tmp/out AB="ab/submit-e53a492 ab/submit-a0055c5" TESTS=1 .device/device-measure.sh
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
O=${OUT:-/tmp/out}; mkdir -p "$O"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$O/machine.txt"; nproc >> "$O/machine.txt"; date -u >> "$O/machine.txt"
cat /sys/devices/system/clocksource/clocksource0/current_clocksource >> "$O/machine.txt"
if [ "${TESTS:-1}" != 0 ]; then
  TILEMUX_TEST_TIMEOUT=150 ./run.sh tests > "$O/gpu-tests.log" 2>&1; echo tests rc $?
  date -u >> "$O/machine.txt"
fi
for i in 1 2 3; do
  for b in ${AB:-} submit-example; do echo -n "$b: "; timeout -s KILL 60 "./$b" 100000; done
done > "$O/submit-ab.log" 2>&1
timeout -s KILL 60 ./submit-phases 100000 > "$O/phases.log" 2>&1
TILEMUX_TIMEOUT=200 ./run.sh tilemux bench dispatch --out "$O/dispatch" > "$O/dispatch.log" 2>&1; echo dispatch rc $?
date -u >> "$O/machine.txt"
TILEMUX_TIMEOUT=250 ./run.sh tilemux bench latency --out "$O/latency" > "$O/latency.log" 2>&1; echo latency rc $?
date -u >> "$O/machine.txt"
[ -f "$O/gpu-tests.log" ] && grep -E "^== |test result|FAILED|panicked" "$O/gpu-tests.log" | head -30
cat "$O/machine.txt" "$O/submit-ab.log" "$O/phases.log"
grep -v "^|" "$O/dispatch.log" | grep -v "^echo, 224\|^echo, 160\|cuStream" | head -30
sed -n '/## Summary/,/Rounds of/p' "$O/latency.log"
