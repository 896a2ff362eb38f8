#!/usr/bin/env bash
# Registers, spills and shared memory of every tile routine, as ptxas sees them, without a GPU.
#
#   scripts/ptx-report.sh [maxrregcount]      # default 128 (two 256-thread CTAs per SM)
#
# Builds kernels/ with the `probes` feature (one extra entry point per tile kind) and runs
# ptxas -v on it. Needs the kernel toolchain (see README) and ptxas: PTXAS=/path/to/ptxas, or
# one on PATH, or `pip install nvidia-cuda-nvcc` (the wheel ships bin/ptxas).
set -euo pipefail
cd "$(dirname "$0")/.."
regs=${1:-128}
sm=${TILEMUX_SM:-sm_80}
ptxas=${PTXAS:-$(command -v ptxas || find / -path '*nvidia/cu13/bin/ptxas' -print -quit 2>/dev/null || true)}
[ -x "$ptxas" ] || { echo "no ptxas: set PTXAS or pip install nvidia-cuda-nvcc" >&2; exit 1; }
out=target/ptx-report
mkdir -p "$out"
env -u CARGO -u RUSTC -u RUSTFLAGS -u CARGO_TARGET_DIR RUSTC_BOOTSTRAP=1 RUSTC=${TILEMUX_KERNEL_RUSTC:-/usr/bin/rustc} \
  RUSTFLAGS="-C target-cpu=$sm" ${TILEMUX_KERNEL_CARGO:-/usr/bin/cargo} rustc --release --quiet -p tilemux-kernels \
  --features probes --target nvptx64-nvidia-cuda -Zbuild-std=core --target-dir target/tilemux-kernels-probes -- \
  --emit=asm="$out/probes.ptx" -C codegen-units=1 -C debuginfo=0 -C llvm-args=-unroll-threshold=8000 -C llvm-args=-min-jump-table-entries=1000
"$ptxas" -arch=sm_90 -v --maxrregcount="$regs" "$out/probes.ptx" -o "$out/probes.cubin" 2>&1 |
  awk -F"'" '/Compiling entry/ {name=$2} /Used/ || /spill/ {sub(/^ptxas[^:]*: */, ""); sub(/^ptxas *\. */, ""); printf "%-24s %s\n", name, $0}'
