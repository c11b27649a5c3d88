#!/usr/bin/env bash
# Runs the fuzz targets (docs/RELIABILITY.md "Fuzzing").
#
#   fuzz/run.sh                      smoke: every target for $FUZZ_SMOKE_SECONDS (5) each
#   fuzz/run.sh TARGET SECONDS       a long run of one target (e.g. shard 3600)
#
# Each target starts from its checked-in seeds (fuzz/seeds/TARGET, read only) and a
# working corpus (fuzz/corpus/TARGET, not checked in) that keeps what earlier runs
# found. A crash stops the run with a non-zero status and leaves the input in
# fuzz/artifacts/TARGET/; reproduce it with `cargo +nightly fuzz run TARGET FILE`.
# The last line of each target's output ("Done N runs in S second(s)") is the number
# of executions it survived. Needs the nightly toolchain and cargo-fuzz (installed
# here if missing).
set -euo pipefail
cd "$(dirname "$0")"

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "error: fuzzing needs the nightly toolchain (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi

TARGETS=(handshake frames envelope jwt config shard socketio eio_shard chat_wire)
if [[ $# -ge 1 ]]; then
  TARGETS=("$1")
  SECONDS_EACH=${2:-600}
else
  SECONDS_EACH=${FUZZ_SMOKE_SECONDS:-5}
fi

# One build for every target (debug assertions on, as the smoke run should catch
# overflow and bounds bugs too).
echo "== cargo fuzz build"
cargo +nightly fuzz build --debug-assertions

for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t"
  echo "== fuzz $t for ${SECONDS_EACH}s"
  # -rss_limit_mb: a target that holds more than 2 GB is a bug (memory without bound).
  if ! cargo +nightly fuzz run --debug-assertions "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      > "corpus/$t.log" 2>&1; then
    tail -60 "corpus/$t.log" >&2
    echo "error: fuzz target $t failed; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E '^Done [0-9]+ runs' "corpus/$t.log" | sed "s/^/$t: /"
done
