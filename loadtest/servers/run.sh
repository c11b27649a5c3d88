#!/usr/bin/env bash
# Install (once) and start one comparison server in the foreground.
# Usage: loadtest/servers/run.sh socketio|bun|ws [PORT] [REDIS_URL (socketio)]
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -d node_modules/socket.io ] || [ ! -d node_modules/ws ] || [ ! -x node_modules/.bin/bun ] \
  || [ ! -d node_modules/@socket.io/redis-adapter ]; then
  npm install --no-audit --no-fund --loglevel=error >&2
fi
case "${1:-}" in
  socketio) exec node socketio-server.js "${2:-7500}" ${3:+"$3"} ;;
  bun) exec node_modules/.bin/bun bun-server.js "${2:-7600}" ;;
  ws) exec node ws-server.js "${2:-7700}" ;;
  *) echo "usage: $0 socketio|bun|ws [PORT]" >&2; exit 2 ;;
esac
