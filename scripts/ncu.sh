#!/usr/bin/env bash
# Nsight Compute profile of one megakernel launch (and optionally cuBLAS's) on a bench workload,
# run on the GPU host from the bundle (`scripts/bundle.sh` copies this script into .device/):
#
#   .device/ncu.sh WORKLOAD [KERNEL_REGEX] [OUT_DIR]
#     WORKLOAD      a `bench kernel --only` name (rnn512, rnn1024, conv2_2, square256, mix)
#     KERNEL_REGEX  default tilemux_round; `gemm` catches cuBLAS's SGEMM kernels
#     OUT_DIR       default /tmp/ncu: WORKLOAD.txt (sections, stall reasons per issued
#                   instruction) and WORKLOAD.sass.csv.gz (stall samples per SASS instruction)
#
# Skips four launches (warm-up) and profiles the fifth, with the clocks left alone
# (--clock-control none).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
w=${1:?usage: ncu.sh WORKLOAD [KERNEL_REGEX] [OUT_DIR]}
k=${2:-tilemux_round}
out=${3:-/tmp/ncu}
mkdir -p "$out"
ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
rep="$out/$w-$k"
"$ncu" --clock-control none --kernel-name "regex:$k" --launch-skip 4 --launch-count 1 \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section SchedulerStats \
  --section WarpStateStats --section InstructionStats --section SourceCounters \
  --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' \
  --import-source no -f -o "$rep" "$here/tilemux" bench kernel --only "$w" --counts 120 --reps 3 --warmup 2
"$ncu" -i "$rep.ncu-rep" --page details --print-details all > "$out/$w.txt"
"$ncu" -i "$rep.ncu-rep" --page source --csv --print-source sass | gzip > "$out/$w.sass.csv.gz"
grep -E "Duration|Issue Slots Busy|Registers Per Thread|Achieved Occupancy|per_issue_active" "$out/$w.txt"
