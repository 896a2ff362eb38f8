#!/usr/bin/env bash
# Builds everything a GPU host without a Rust toolchain needs and collects it in one git-ignored
# folder (default .device/): the release `tilemux` binary, every test executable, and run.sh.
#
#   scripts/bundle.sh            # build and collect into .device/
#   (copy .device/ to the GPU host, e.g. the device tool's `carry`)
#   .device/run.sh tests         # run every test executable (GPU variants included)
#   .device/run.sh tilemux ...   # run the binary, e.g. `.device/run.sh tilemux bench kernel`
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.device}
rm -rf "$out"
mkdir -p "$out/tests"
cargo build --release --bins
cp target/release/tilemux "$out/"
cargo test --release --no-run 2>&1 | tee /dev/stderr |
  sed -n 's/^ *Executable \(tests\/[^ ]*\)\.rs (\(.*\))$/\1 \2/p' |
  while read -r name path; do cp "$path" "$out/$name"; done
cp scripts/ncu.sh "$out/"
cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs a bundled tilemux program on a GPU host; cuBLAS comes from the CUDA toolkit.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
case "${1:-tests}" in
  tests)
    shift || true
    rc=0
    for t in "$here"/tests/*; do
      echo "== $(basename "$t")"
      # A watchdog: a hung kernel must not eat the whole device lease.
      timeout --signal=KILL "${TILEMUX_TEST_TIMEOUT:-300}" "$t" --test-threads=4 "$@" || rc=1
    done
    exit $rc ;;
  tilemux) shift; exec timeout --signal=KILL "${TILEMUX_TIMEOUT:-400}" "$here/tilemux" "$@" ;;
  *) echo "usage: run.sh tests [libtest args] | run.sh tilemux ARGS" >&2; exit 2 ;;
esac
RUN
chmod +x "$out/run.sh"
du -sh "$out"
