#!/usr/bin/env bash
# Runs the official Socket.IO and Engine.IO protocol test suites (../shared/conformance,
# or $CONFORMANCE_DIR) against the `switchboard` binary given as $1:
#   1. the Socket.IO suite (32 tests) against `switchboard serve` configured with the
#      echo application of scripts/socketio/ (a backend its hooks call);
#   2. the Engine.IO suite (24 tests) against the test-only raw Engine.IO echo example
#      ($2, default: the `engineio_echo` example next to the binary).
# Each suite is copied to a temporary folder, its port constant changed (nothing else),
# its npm packages installed (cached in $CONFORMANCE_CACHE). Exits non-zero on any
# failure; stops everything it started.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
binary="${1:?usage: socketio-conformance.sh SWITCHBOARD_BINARY [ENGINEIO_ECHO_BINARY]}"
echo_bin="${2:-$(dirname "$binary")/examples/engineio_echo}"
suites="${CONFORMANCE_DIR:-$root/../shared/conformance}"
cache="${CONFORMANCE_CACHE:-${CARGO_TARGET_DIR:-$root/target}/conformance-npm}"
for f in "$binary" "$echo_bin"; do
  [ -x "$f" ] || { echo "error: $f is not an executable" >&2; exit 1; }
done
[ -d "$suites/socket.io-protocol/test-suite" ] || { echo "error: no suites in $suites" >&2; exit 1; }
command -v node >/dev/null || { echo "error: node is required" >&2; exit 1; }

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "error: nothing listens on port $1" >&2
  return 1
}

# A suite, copied with only its URL constant changed, and its packages from npm.
prepare() {
  local name="$1" port="$2" dir="$work/$1"
  cp -r "$suites/$name/test-suite" "$dir"
  chmod -R u+w "$dir"
  sed -i "s#^const URL = \"http://localhost:3000\";#const URL = \"http://localhost:$port\";#" "$dir/test-suite.js"
  grep -q "localhost:$port" "$dir/test-suite.js" || { echo "error: URL constant not found in $name" >&2; exit 1; }
  mkdir -p "$cache/$name"
  if [ ! -d "$cache/$name/node_modules" ] || ! cmp -s "$dir/package-lock.json" "$cache/$name/package-lock.json"; then
    echo "== npm ci ($name)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || { echo "error: npm ci failed for $name" >&2; exit 1; }
    rm -rf "$cache/$name/node_modules"
    cp -r "$dir/node_modules" "$cache/$name/"
    cp "$dir/package-lock.json" "$cache/$name/"
  else
    cp -r "$cache/$name/node_modules" "$dir/"
  fi
}

status=0

# 1. Socket.IO: the server with the echo application behind its hooks.
port="$(free_port)"
hooks_port="$(free_port)"
prepare socket.io-protocol "$port"
node "$here/socketio/echo-backend.mjs" "$hooks_port" > "$work/backend.log" 2>&1 &
pids+=($!)
wait_port "$hooks_port"
sed -e "s#@PORT@#$port#; s#@HOOKS@#http://127.0.0.1:$hooks_port#g; s#@STORE@#$work/store.db#" \
  "$here/socketio/conformance.toml" > "$work/switchboard.toml"
"$binary" serve --config "$work/switchboard.toml" > "$work/switchboard.log" 2>&1 &
pids+=($!)
wait_port "$port"
echo "== Socket.IO protocol suite (switchboard serve + echo hooks, port $port)"
(cd "$work/socket.io-protocol" && npx mocha --exit test-suite.js) || { status=1; tail -30 "$work/switchboard.log" >&2; }
kill "${pids[@]}" 2>/dev/null || true
wait 2>/dev/null || true
pids=()

# 2. Engine.IO: the raw echo example.
port="$(free_port)"
prepare engine.io-protocol "$port"
"$echo_bin" "127.0.0.1:$port" > "$work/echo.log" 2>&1 &
pids+=($!)
wait_port "$port"
echo "== Engine.IO protocol suite (engineio_echo example, port $port)"
(cd "$work/engine.io-protocol" && npx mocha --exit test-suite.js) || { status=1; tail -30 "$work/echo.log" >&2; }

exit $status
