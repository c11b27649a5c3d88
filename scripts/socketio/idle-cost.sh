#!/usr/bin/env bash
# What an idle Socket.IO session costs the server, WebSocket against long-polling:
# starts BINARY (anonymous main namespace, nothing else), measures its RSS, connects N
# idle socket.io-client sessions of one transport, measures again after they settle,
# prints bytes per session; once per transport, a fresh server each.
# Usage: scripts/socketio/idle-cost.sh BINARY [N=2000]   (loopback only; Node needed,
# socket.io-client from control-plane/tests/clients/node: `npm ci` there first)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$(dirname "$here")")"
binary="${1:?usage: idle-cost.sh BINARY [N]}"
n="${2:-2000}"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
for transport in websocket polling; do
  cat > "$work/cfg.toml" <<TOML
[engine]
listen = "127.0.0.1:7450"
# Node's polling client opens a TCP connection per request: no per-address rate here.
max_connection_rate_per_ip = 0
[admin]
listen = "127.0.0.1:0"
[store]
path = "$work/$transport.db"
[socketio.namespaces."/"]
anonymous = true
TOML
  SWITCHBOARD_LOG__LEVEL=warn "$binary" serve --config "$work/cfg.toml" > "$work/server.log" 2>&1 &
  server=$!
  sleep 1.5
  before=$(rss_kb "$server")
  (cd "$root/control-plane/tests/clients/node" && node "$here/idle-clients.mjs" http://127.0.0.1:7450 "$n" "$transport") > "$work/clients.log" 2>&1 &
  clients=$!
  for _ in $(seq 1 600); do grep -q ready "$work/clients.log" && break; sleep 0.1; done
  grep -q ready "$work/clients.log" || { cat "$work/clients.log" >&2; exit 1; }
  sleep 3
  after=$(rss_kb "$server")
  echo "$transport: $n sessions, server RSS ${before} -> ${after} KiB, $(( (after - before) * 1024 / n )) B per session"
  kill "$clients" "$server"; wait "$clients" "$server" 2>/dev/null || true
  sleep 1
done
