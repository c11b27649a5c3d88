#!/usr/bin/env bash
# Criterion before/after on the same machine, alternating: the bench binary of an
# older build (BASE_BENCH=<path to its hot_paths bench executable>) and this build's,
# ROUNDS times each (default 2), for the groups in FILTER (a criterion regex; default
# the groups issue 15 names). Prints one line per bench and run: who, round, median.
# Usage: BASE_BENCH=/path/to/hot_paths-xxxx benches/compare.sh [FILTER]
set -euo pipefail
cd "$(dirname "$0")/.."
# The binaries are where cargo puts them (CARGO_TARGET_DIR is honoured).
RELEASE=${CARGO_TARGET_DIR:-target}/release
FILTER=${1:-'^(frame_decode|fanout|rate_limits)/'}
ROUNDS=${ROUNDS:-2}
: "${BASE_BENCH:?set BASE_BENCH to the hot_paths bench executable of the older build}"
cargo bench --locked -p switchboard-benches --no-run >&2
HEAD_BENCH=$(ls -t "$RELEASE"/deps/hot_paths-* | grep -v '\.d$' | head -1)
run() { # who round binary
  "$3" --bench "$FILTER" --noplot 2>/dev/null |
    awk -v who="$1" -v round="$2" '
      /^[a-z_]+\/[^ ]+$/ { name = $1 }
      /^[a-z_]+\/[^ ]+ +time:/ { name = $1 }
      /change:/ { change = ($0 !~ /\[/); next }
      /time:/ && change { change = 0; next }
      /time:/ { sub(/.*time: *\[/, ""); split($0, t, " "); printf "%-6s %s %-58s %s %s\n", who, round, name, t[3], t[4] }'
}
for round in $(seq "$ROUNDS"); do
  run base "$round" "$BASE_BENCH"
  run head "$round" "$HEAD_BENCH"
done
