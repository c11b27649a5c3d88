#!/usr/bin/env bash
# Reproduce docs/BENCHMARKS.md: build, start each server in turn, run the scenarios
# against it, keep JSON + HTML results in docs/benchmarks/ (or $OUT). Only the JSON is
# committed; `switchboard-loadtest report docs/benchmarks/*.json` remakes the HTML and text.
# Takes about 10 minutes; needs Node/npm for the comparison servers. Loopback only.
# Usage: loadtest/bench-all.sh [switchboard|backends|bun|socketio|ws ...]   (default: all)
#   switchboard  the scenarios on the epoll backend (2 shards and 1 shard), capacity model
#   backends     idle, fanout, rooms, echo, connect-storm on epoll and on io_uring, same
#                settings, back to back (docs/BENCHMARKS.md "io_uring vs epoll")
#   durability   fanout (100k and 1M deliveries/s) and acks with the lt namespace at
#                none, async and sync (docs/BENCHMARKS.md "What durability costs")
#   store        acks at sync without subscribers on SQLite and on PostgreSQL (a
#                throwaway server from scripts/with-postgres.sh, a fresh database per
#                run), alternating, STORE_ROUNDS rounds (default 2), at STORE_RATE
#                publishes/s (default the scenario's 50,000) (docs/BENCHMARKS.md "The
#                message store")
#   features     rooms plain / with presence / with presence and typing, idle with 20
#                channels per connection with and without presence (docs/BENCHMARKS.md
#                "What presence and typing cost")
#   reshape      fanout (100k and 1M deliveries/s) and echo on the BASE binary (the
#                commit before a refactor; BASE=<binary>, required) and on this build,
#                alternating, twice (docs/BENCHMARKS.md "Before and after the reshape";
#                ROUNDS, FIRST_ROUND and SCENARIOS pick more rounds of some)
#   sio          Switchboard's Socket.IO endpoint beside its native protocol (msgpack) and
#                Node Socket.IO 4.8: idle, fanout (100k and 1M deliveries/s), rooms,
#                echo; the three servers alternating, two rounds (docs/BENCHMARKS.md
#                "Socket.IO endpoint"; SIO_SCENARIOS="fanout-1m" picks some)
#   versus       Switchboard on epoll and on io_uring beside Bun 1.4 (uWebSockets), the
#                three alternating, PASSES passes (default 3): echo, echo with
#                publishes that ask for no reply, fanout 100k and 1M deliveries/s,
#                idle; connect-storm for Switchboard only (Bun verifies no JWT).
#                Results $VS_PREFIX-p<pass>-<server>-<scenario>.json (VS_PREFIX=vs),
#                then the ratios to Bun with their spread (`switchboard-loadtest
#                ratios`) in $VS_PREFIX-ratios.md
#                (docs/BENCHMARKS.md "Against uWebSockets"; VS_SCENARIOS picks some,
#                VS_SHARDS=1 runs Switchboard on one shard; VS_SERVERS="sio bun" adds
#                or picks servers: sio is Switchboard's Socket.IO endpoint, coalesce
#                is io_uring with engine.uring_coalesce_us=$VS_COALESCE_US, default 100;
#                SERVER_NICE=5 gives the generator priority over every server, as
#                for "fanout-1m with the generator first")
#   ai           rooms without and with an AI pipeline on every message against a slow
#                fake model (loadtest/servers/fake-openai.py, 2 s a call), alternating,
#                AI_ROUNDS rounds (default 3; AI_FIRST_ROUND numbers them on) (docs/
#                BENCHMARKS.md "AI on the message path")
#   protection   fanout and echo without and with rate limits on every command, twice
#                each, alternating (docs/BENCHMARKS.md "What rate limiting and metrics
#                cost"; the commit before them: BASE=<binary> runs it as a third server)
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."
# The binaries are where cargo puts them (CARGO_TARGET_DIR is honoured).
RELEASE=${CARGO_TARGET_DIR:-target}/release
OUT=${OUT:-docs/benchmarks}
SECRET=loadtest-secret-change-me-0123456789
mkdir -p "$OUT"
cargo build --release --locked -p switchboard-control-plane -p switchboard-loadtest >&2
LT="$RELEASE"/switchboard-loadtest
SERVER_PID=
# SERVER_NICE=n starts every server (Switchboard, Bun, Node) under `nice -n n`, so the
# generator, which shares this machine's cores, is not starved at saturation.
NICE=(env)
[ -n "${SERVER_NICE:-}" ] && NICE=(nice -n "$SERVER_NICE")

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "server on port $1 did not come up" >&2
  return 1
}

stop() {
  if [ -n "$SERVER_PID" ]; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
  sleep 2
}
trap stop EXIT

start_switchboard() { # shards [io backend: auto|uring|epoll] [durability: none|async|sync]
  # A fresh store per run, so no run inherits another's streams.
  SWITCHBOARD_STORE__PATH="$(mktemp -d)/switchboard.db" \
  SWITCHBOARD_AUTH__HMAC_SECRET=$SECRET SWITCHBOARD_LOG__LEVEL=warn \
    "${NICE[@]}" "$RELEASE"/switchboard serve --shards "$1" --io "${2:-epoll}" \
      --config "loadtest/configs/durability-${3:-none}.toml" >"$OUT/switchboard-server.log" 2>&1 &
  SERVER_PID=$!
  wait_port 7400
}

start_switchboard_with() { # config file under loadtest/configs (without .toml)
  SWITCHBOARD_STORE__PATH="$(mktemp -d)/switchboard.db" \
  SWITCHBOARD_AUTH__HMAC_SECRET=$SECRET SWITCHBOARD_LOG__LEVEL=warn \
    "$RELEASE"/switchboard serve --shards 0 --io epoll \
      --config "loadtest/configs/$1.toml" >"$OUT/switchboard-server.log" 2>&1 &
  SERVER_PID=$!
  wait_port 7400
}

start_node() { # socketio|bun|ws port
  "${NICE[@]}" loadtest/servers/run.sh "$1" "$2" >"$OUT/$1-server.log" 2>&1 &
  SERVER_PID=$!
  wait_port "$2"
  # run.sh execs the server, so $! is the server itself.
}

run() { # stem scenario [--set ...]
  local stem=$1 scenario=$2
  shift 2
  echo "== $stem" >&2
  "$LT" run "$scenario" --server-pid "$SERVER_PID" --out "$OUT" --stem "$stem" --quiet "$@" | tee "$OUT/$stem.txt"
}

TARGETS=("$@")
has() { [ ${#TARGETS[@]} -eq 0 ] || [[ " ${TARGETS[*]} " == *" $1 "* ]]; }
# The store runs need a PostgreSQL server for the whole script: start one around it.
if has store && [ -z "${SWITCHBOARD_TEST_POSTGRES:-}" ]; then
  exec bash scripts/with-postgres.sh bash "$SELF" "$@"
fi

# Every run gets a fresh server process: an overloaded run must not leave a backlog
# that the next scenario pays for.
if has switchboard; then
  for shards in 0 1; do
    prefix=switchboard; [ "$shards" = 1 ] && prefix=switchboard-1shard
    if [ "$shards" = 0 ]; then
      start_switchboard 0; run switchboard-idle idle; stop
      start_switchboard 0; run switchboard-connect-storm connect-storm; stop
        start_switchboard 0; run switchboard-slow-consumers slow-consumers --metrics-url http://127.0.0.1:7401/metrics; stop
    fi
    start_switchboard "$shards"; run "$prefix-fanout" fanout --set workers=2; stop
    start_switchboard "$shards"; run "$prefix-fanout-1m" fanout --set rate=100 --set workers=2; stop
    start_switchboard "$shards"; run "$prefix-rooms" rooms --set workers=2; stop
        start_switchboard "$shards"; run "$prefix-echo" echo; stop
  done
  start_switchboard 0; run switchboard-idle-19k idle --set connections=19000 --set duration_s=10; stop
  # The capacity model's validation: fit on 2k and 5k subscribers, predict the 10k run.
  start_switchboard 0; run capacity-fanout-2k fanout --set connections=2000 --set workers=2; stop
  start_switchboard 0; run capacity-fanout-5k fanout --set connections=5000 --set workers=2; stop
  "$LT" capacity "$OUT/capacity-fanout-2k.json" "$OUT/capacity-fanout-5k.json" \
    --connections 10010 --deliveries-per-s 100000 --utilisation 1.0 | tee "$OUT/capacity-prediction.txt"
fi
# io_uring vs epoll: the same scenarios and settings on each backend, default shards.
if has backends; then
  for io in epoll uring; do
    start_switchboard 0 $io; run "$io-idle" idle; stop
    start_switchboard 0 $io; run "$io-fanout" fanout --set workers=2; stop
    start_switchboard 0 $io; run "$io-fanout-1m" fanout --set rate=100 --set workers=2; stop
    start_switchboard 0 $io; run "$io-rooms" rooms --set workers=2; stop
    start_switchboard 0 $io; run "$io-echo" echo; stop
    start_switchboard 0 $io; run "$io-connect-storm" connect-storm; stop
  done
fi
# What durability costs: the lt namespace memory-only, stored async, stored sync.
if has durability; then
  for d in none async sync; do
    start_switchboard 0 epoll $d; run "durability-$d-fanout" fanout --set workers=2; stop
    start_switchboard 0 epoll $d; run "durability-$d-fanout-1m" fanout --set rate=100 --set workers=2; stop
    start_switchboard 0 epoll $d; run "durability-$d-acks" acks; stop
  done
fi
if has store; then
  for round in $(seq 1 "${STORE_ROUNDS:-2}"); do
    rate=(); [ -n "${STORE_RATE:-}" ] && rate=(--set "rate=$STORE_RATE")
    start_switchboard 0 epoll sync
    run "store-sqlite-r$round-acks${STORE_RATE:+-$STORE_RATE}" acks --set connections=0 "${rate[@]}"; stop
    db="sb_bench_${round}_$$"
    psql -q "$SWITCHBOARD_TEST_POSTGRES" -c "CREATE DATABASE $db"
    SWITCHBOARD_STORE__BACKEND=postgres \
    SWITCHBOARD_STORE__POSTGRES_URL="${SWITCHBOARD_TEST_POSTGRES%/*}/$db" \
      start_switchboard 0 epoll sync
    run "store-postgres-r$round-acks${STORE_RATE:+-$STORE_RATE}" acks --set connections=0 "${rate[@]}"; stop
  done
fi
start_base() { # the $BASE binary (an older build) with the plain loadtest config
  SWITCHBOARD_STORE__PATH="$(mktemp -d)/switchboard.db" \
  SWITCHBOARD_AUTH__HMAC_SECRET=$SECRET SWITCHBOARD_LOG__LEVEL=warn \
    "$BASE" serve --shards 0 --io epoll --config loadtest/configs/durability-none.toml \
    >"$OUT/switchboard-server.log" 2>&1 &
  SERVER_PID=$!
  wait_port 7400
}

if has reshape; then
  if [ -z "${BASE:-}" ]; then
    echo "reshape needs BASE=<switchboard binary of the commit before>" >&2
    exit 2
  fi
  first=${FIRST_ROUND:-1}
  for round in $(seq "$first" $((first + ${ROUNDS:-2} - 1))); do
    for who in base head; do
      for scenario in ${SCENARIOS:-fanout fanout-1m echo}; do
        case $scenario in
          fanout) args=(fanout --set workers=2) ;;
          fanout-1m) args=(fanout --set rate=100 --set workers=2) ;;
          echo) args=(echo) ;;
        esac
        if [ "$who" = base ]; then start_base; else start_switchboard 0; fi
        run "reshape-$who-$scenario-$round" "${args[@]}"
        stop
      done
    done
  done
fi
if has protection; then
  for round in 1 2; do
    for cfg in durability-none rate-limits; do
      start_switchboard_with "$cfg"; run "protection-fanout-$cfg-$round" fanout; stop
      start_switchboard_with "$cfg"; run "protection-echo-$cfg-$round" echo; stop
      if [ -n "${BASE:-}" ] && [ "$cfg" = durability-none ]; then
        start_base; run "protection-fanout-base-$round" fanout; stop
        start_base; run "protection-echo-base-$round" echo; stop
      fi
    done
  done
fi
if has ai; then
  python3 loadtest/servers/fake-openai.py 7480 --delay-ms "${AI_DELAY_MS:-2000}" \
    >"$OUT/fake-openai.log" 2>&1 &
  FAKE_PID=$!
  wait_port 7480
  first=${AI_FIRST_ROUND:-1}
  for round in $(seq "$first" $((first + ${AI_ROUNDS:-3} - 1))); do
    for cfg in ai-off ai-rooms; do
      start_switchboard_with "$cfg"; run "$cfg-r$round" rooms --set workers=2
      curl -s http://127.0.0.1:7401/metrics | grep '^switchboard_ai_' \
        >"$OUT/$cfg-r$round.ai-metrics.txt" || true
      stop
    done
  done
  kill "$FAKE_PID" 2>/dev/null || true
  wait "$FAKE_PID" 2>/dev/null || true
fi
if has features; then
  start_switchboard_with durability-none; run features-rooms rooms; stop
  start_switchboard_with presence; run features-rooms-presence rooms; stop
  start_switchboard_with presence; run features-rooms-presence-typing rooms --set typing_rate=0.2; stop
  start_switchboard_with durability-none; run features-idle-20ch idle --set extra_channels=20; stop
  start_switchboard_with presence; run features-idle-20ch-presence idle --set extra_channels=20; stop
  start_switchboard_with presence-quiet; run features-idle-20ch-presence-quiet idle --set extra_channels=20; stop
fi
if has versus; then
  VS=${VS_PREFIX:-vs}
  for pass in $(seq "${PASSES:-3}"); do
    for sc in ${VS_SCENARIOS:-echo echo-noreply fanout fanout-1m idle connect-storm}; do
      case $sc in
        echo) args=(echo) ;;
        echo-noreply) args=(echo --set publish_reply=false) ;;
        fanout) args=(fanout --set workers=2) ;;
        fanout-1m) args=(fanout --set rate=100 --set workers=2) ;;
        idle) args=(idle --set duration_s=10) ;;
        connect-storm) args=(connect-storm) ;;
        *) echo "unknown versus scenario $sc" >&2; exit 2 ;;
      esac
      for srv in ${VS_SERVERS:-epoll uring bun}; do
        if [ "$srv" = bun ]; then
          [ "$sc" = connect-storm ] && continue
          start_node bun 7600
          run "$VS-p$pass-bun-$sc" "${args[@]}" --set protocol=raw --set url=ws://127.0.0.1:7600/
        elif [ "$srv" = coalesce ]; then
          # io_uring with coalesced wake-ups (engine.uring_coalesce_us).
          SWITCHBOARD_ENGINE__URING_COALESCE_US=${VS_COALESCE_US:-100} \
            start_switchboard "${VS_SHARDS:-0}" uring
          run "$VS-p$pass-coalesce-$sc" "${args[@]}"
        elif [ "$srv" = sio ]; then
          # Switchboard's Socket.IO endpoint (default backend), its event vocabulary.
          start_switchboard "${VS_SHARDS:-0}" auto
          run "$VS-p$pass-sio-$sc" "${args[@]}" --set protocol=switchboard-socketio
        else
          start_switchboard "${VS_SHARDS:-0}" "$srv"
          run "$VS-p$pass-$srv-$sc" "${args[@]}"
        fi
        stop
      done
    done
  done
  "$LT" ratios "$OUT/$VS"-p*-*.json --baseline bun | tee "$OUT/$VS-ratios.md"
fi
# Switchboard's Socket.IO endpoint vs its native protocol vs Node Socket.IO, same
# scenarios and generator, alternating, two rounds.
if has sio; then
  for round in 1 2; do
    for sc in idle fanout fanout-1m rooms echo; do
      extra=(--set workers=2); [ "$sc" = idle ] && extra=(--set duration_s=10)
      [ "$sc" = echo ] && extra=()
      [ "$sc" = fanout-1m ] && extra=(--set rate=100 --set workers=2)
      [ -n "${SIO_SCENARIOS:-}" ] && [[ " $SIO_SCENARIOS " != *" $sc "* ]] && continue
      scenario=${sc%-1m}
      start_switchboard 0; run "sio-r$round-native-$sc" "$scenario" "${extra[@]}"; stop
      start_switchboard 0
      run "sio-r$round-endpoint-$sc" "$scenario" --set protocol=switchboard-socketio "${extra[@]}"
      stop
      start_node socketio 7500
      run "sio-r$round-node-$sc" "$scenario" --set protocol=socketio --set url=ws://127.0.0.1:7500/ "${extra[@]}"
      stop
    done
  done
fi
for srv in bun socketio ws; do
  has "$srv" || continue
  case $srv in
    bun) port=7600; proto=(--set protocol=raw --set url=ws://127.0.0.1:7600/) ;;
    ws) port=7700; proto=(--set protocol=raw --set url=ws://127.0.0.1:7700/) ;;
    socketio) port=7500; proto=(--set protocol=socketio --set url=ws://127.0.0.1:7500/) ;;
  esac
  start_node "$srv" "$port"; run "$srv-idle" idle "${proto[@]}" --set duration_s=10; stop
  start_node "$srv" "$port"; run "$srv-fanout" fanout "${proto[@]}" --set workers=2; stop
  start_node "$srv" "$port"; run "$srv-fanout-1m" fanout "${proto[@]}" --set rate=100 --set workers=2; stop
  start_node "$srv" "$port"; run "$srv-rooms" rooms "${proto[@]}" --set workers=2; stop
  start_node "$srv" "$port"; run "$srv-echo" echo "${proto[@]}"; stop
done
echo "results in $OUT" >&2
