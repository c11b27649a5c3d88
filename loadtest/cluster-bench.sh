#!/usr/bin/env bash
# Scale-out through Redis (docs/BENCHMARKS.md "Nodes sharing Redis"): fanout and rooms
# with the same total connections on
#   sb-1node   one Switchboard node (2 shards), no Redis;
#   sb-2nodes  two Switchboard nodes (1 shard each) sharing a redis-server, the
#              connections (publishers too) spread over both;
#   node-2     two Node Socket.IO 4.8 servers sharing the same redis-server through
#              @socket.io/redis-adapter, spread the same way;
# alternating, ROUNDS rounds. The server CPU reported is every node's together
# (`--server-pid` twice); Redis's own CPU is reported apart (`redis` in the JSON, "redis"
# in the text). Keeps JSON + text in $OUT (docs/benchmarks). Loopback only; needs
# redis-server and Node/npm. About 8 minutes.
# Usage: loadtest/cluster-bench.sh   (OUT=…, ROUNDS=2, SCENARIOS="fanout rooms")
set -euo pipefail
cd "$(dirname "$0")/.."
# The binaries are where cargo puts them (CARGO_TARGET_DIR is honoured).
RELEASE=${CARGO_TARGET_DIR:-target}/release
OUT=${OUT:-docs/benchmarks}
ROUNDS=${ROUNDS:-2}
SCENARIOS=${SCENARIOS:-fanout rooms}
SECRET=loadtest-secret-change-me-0123456789
REDIS_PORT=7900
mkdir -p "$OUT"
command -v redis-server >/dev/null || { echo "redis-server is required (apt-get install -y redis-server)" >&2; exit 1; }
cargo build --release --locked -p switchboard-control-plane -p switchboard-loadtest >&2
LT="$RELEASE"/switchboard-loadtest
PIDS=()
REDIS_PID=

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  return 1
}

stop() {
  for p in "${PIDS[@]}" $REDIS_PID; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]}" $REDIS_PID; do
    wait "$p" 2>/dev/null || true
  done
  PIDS=()
  REDIS_PID=
  sleep 2
}
trap stop EXIT

start_redis() {
  redis-server --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no >"$OUT/cluster-redis.log" 2>&1 &
  REDIS_PID=$!
  wait_port $REDIS_PORT
}

start_switchboard() { # ws-port admin-port shards node-id [redis-url]
  SWITCHBOARD_STORE__PATH="$(mktemp -d)/switchboard.db" \
  SWITCHBOARD_AUTH__HMAC_SECRET=$SECRET SWITCHBOARD_LOG__LEVEL=warn \
  SWITCHBOARD_CLUSTER__REDIS_URL="${5:-}" SWITCHBOARD_CLUSTER__NODE_ID="$4" \
    "$RELEASE"/switchboard serve --listen "127.0.0.1:$1" --admin "127.0.0.1:$2" \
      --shards "$3" --io epoll --config loadtest/configs/durability-none.toml \
      >"$OUT/cluster-$4.log" 2>&1 &
  PIDS+=($!)
  wait_port "$1"
}

start_socketio() { # port redis-url
  loadtest/servers/run.sh socketio "$1" "$2" >"$OUT/cluster-socketio-$1.log" 2>&1 &
  PIDS+=($!)
  wait_port "$1"
  sleep 1 # the adapter connects to Redis
}

run() { # stem scenario [--set ...]
  local stem=$1 scenario=$2
  shift 2
  local pids=()
  for p in "${PIDS[@]}"; do pids+=(--server-pid "$p"); done
  [ -n "$REDIS_PID" ] && pids+=(--redis-pid "$REDIS_PID")
  echo "== $stem" >&2
  "$LT" run "$scenario" "${pids[@]}" --out "$OUT" --stem "$stem" --quiet "$@" | tee "$OUT/$stem.txt"
}

redis_url=redis://127.0.0.1:$REDIS_PORT
for round in $(seq "$ROUNDS"); do
  for sc in $SCENARIOS; do
    start_switchboard 7400 7401 0 solo
    run "cluster-r$round-sb-1node-$sc" "$sc" --set workers=2
    stop

    start_redis
    start_switchboard 7400 7401 1 n1 "$redis_url"
    start_switchboard 7410 7411 1 n2 "$redis_url"
    run "cluster-r$round-sb-2nodes-$sc" "$sc" --set workers=2 \
      --set 'urls=["ws://127.0.0.1:7410/"]'
    stop

    start_redis
    start_socketio 7500 "$redis_url"
    start_socketio 7510 "$redis_url"
    run "cluster-r$round-node-2-$sc" "$sc" --set workers=2 --set protocol=socketio \
      --set url=ws://127.0.0.1:7500/ --set 'urls=["ws://127.0.0.1:7510/"]'
    stop
  done
done
echo "results in $OUT" >&2
