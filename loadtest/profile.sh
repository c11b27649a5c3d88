#!/usr/bin/env bash
# Where the server's CPU goes under a loadtest scenario: starts a release Switchboard
# (2 shards) or Bun (SERVER=bun, uWebSockets, the raw protocol), runs the scenario
# against it, samples the server with `perf record` for PROFILE_S seconds (default 10)
# in the middle of the measured run, counts its system calls over the same seconds
# (`perf stat`), and writes
#   docs/profiles/<stem>.txt   perf report text: the command, the machine, the share
#                              of user space vs kernel, system calls and context
#                              switches per second, the hottest symbols (self time)
#                              and the hottest kernel paths with their callers.
# The raw perf.data is deleted (large). Loopback only; stops by itself.
# Usage: loadtest/profile.sh STEM SCENARIO [--set key=value ...]
#   IO=epoll|uring (default epoll)   SHARDS=0 (one per core)   PROFILE_S=10
#   SERVER=switchboard|bun (default switchboard)
# Examples (docs/BENCHMARKS.md "Profiles"):
#   loadtest/profile.sh echo-epoll-before echo
#   IO=uring loadtest/profile.sh fanout-1m-uring-before fanout --set rate=100 --set workers=2
set -euo pipefail
cd "$(dirname "$0")/.."
# The binaries are where cargo puts them (CARGO_TARGET_DIR is honoured).
RELEASE=${CARGO_TARGET_DIR:-target}/release
[ $# -ge 2 ] || { sed -n 2,15p "$0" >&2; exit 2; }
STEM=$1 SCENARIO=$2
shift 2
IO=${IO:-epoll} SHARDS=${SHARDS:-0} SECONDS_SAMPLED=${PROFILE_S:-10}
SERVER=${SERVER:-switchboard}
OUT=docs/profiles
SECRET=loadtest-secret-change-me-0123456789
command -v perf >/dev/null || { echo "perf is required (apt-get install -y linux-perf)" >&2; exit 1; }
mkdir -p "$OUT"
cargo build --release --locked -p switchboard-control-plane -p switchboard-loadtest >&2
TMP=$(mktemp -d)
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT

PROTO=()
if [ "$SERVER" = bun ]; then
  loadtest/servers/run.sh bun 7600 >"$TMP/server.log" 2>&1 &
  SERVER_PID=$!
  PORT=7600 PROTO=(--set protocol=raw --set url=ws://127.0.0.1:7600/)
else
  SWITCHBOARD_STORE__PATH="$TMP/switchboard.db" \
  SWITCHBOARD_AUTH__HMAC_SECRET=$SECRET SWITCHBOARD_LOG__LEVEL=warn \
    "$RELEASE"/switchboard serve --shards "$SHARDS" --io "$IO" \
      --config loadtest/configs/durability-none.toml >"$TMP/server.log" 2>&1 &
  SERVER_PID=$!
  PORT=7400
fi
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
  sleep 0.1
done

"$RELEASE"/switchboard-loadtest run "$SCENARIO" --server-pid "$SERVER_PID" \
  --out "$TMP" --stem run --quiet "${PROTO[@]}" "$@" >"$TMP/run.txt" &
LT_PID=$!
# The ramp (connections / ramp_per_sec) plus a few seconds of steady traffic.
sleep 8
SYSCALLS=raw_syscalls:sys_enter,context-switches
for call in epoll_wait epoll_pwait epoll_pwait2 recvfrom read sendto sendmsg writev write \
  io_uring_enter futex accept4 close; do
  [ -e "/sys/kernel/tracing/events/syscalls/sys_enter_$call" ] \
    || [ -e "/sys/kernel/debug/tracing/events/syscalls/sys_enter_$call" ] \
    && SYSCALLS+=",syscalls:sys_enter_$call"
done
perf stat -x, -e "$SYSCALLS" -p "$SERVER_PID" -o "$TMP/stat.csv" -- sleep "$SECONDS_SAMPLED" \
  2>/dev/null &
STAT_PID=$!
perf record -q -F 499 -g -p "$SERVER_PID" -o "$TMP/perf.data" -- sleep "$SECONDS_SAMPLED" \
  2>"$TMP/perf.err"
wait "$STAT_PID" || true
wait "$LT_PID"

{
  echo "# profile $STEM"
  echo "# command: SERVER=$SERVER IO=$IO SHARDS=$SHARDS loadtest/profile.sh $STEM $SCENARIO $*"
  echo "# date: $(date -u +%Y-%m-%dT%H:%MZ); machine: $(nproc) vCPU, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
  echo "# sampled: perf record -F 499 -g, ${SECONDS_SAMPLED} s in the measured run"
  echo
  echo "## The run"
  cat "$TMP/run.txt"
  echo
  echo "## User space vs kernel (share of samples)"
  perf report -i "$TMP/perf.data" --stdio --no-children --sort dso -g none --percent-limit 0.5 \
    2>/dev/null | grep -v '^#' | grep -v '^$' | sed -n 1,20p
  echo
  echo "## System calls and context switches per second (perf stat, same seconds)"
  grep -v '^#' "$TMP/stat.csv" | grep -v '^$' | awk -F, -v s="$SECONDS_SAMPLED" \
    '$1 ~ /^[0-9]+$/ && $1 > 0 { printf "%12.0f/s  %s\n", $1 / s, $3 }'
  echo
  echo "## Hottest symbols (self time)"
  perf report -i "$TMP/perf.data" --stdio --no-children --sort symbol -g none \
    --percent-limit 0.4 2>/dev/null | grep -v '^#' | grep -v '^$' | sed -n 1,60p
  echo
  echo "## Hottest kernel paths, with callers (kernel stacks are exact; user frames"
  echo "## are partial: the release build has no frame pointers)"
  perf report -i "$TMP/perf.data" --stdio --no-children --sort symbol \
    -g caller,0.5,callee,function,percent --percent-limit 3 2>/dev/null \
    | grep -v '^$' | sed -n 1,150p
} >"$OUT/$STEM.txt"
echo "profile in $OUT/$STEM.txt" >&2
