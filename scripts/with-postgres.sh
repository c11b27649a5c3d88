#!/usr/bin/env bash
# Run a command with a throwaway PostgreSQL server: a fresh cluster in a temporary
# directory (initdb, trust authentication, 127.0.0.1 only) on a free port, stopped by
# its PID and removed when the command ends, however it ends. The command sees the
# server's URL in SWITCHBOARD_TEST_POSTGRES (postgres://postgres@127.0.0.1:PORT/postgres).
#
#   bash scripts/with-postgres.sh cargo test -p switchboard-control-plane --test revisions
#
# Needs the Debian postgresql package (bash .ci/run installs it); as root the server
# runs as its postgres user (PostgreSQL refuses to run as root).
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$bin" ]; then
  bin=$(dirname "$(command -v postgres 2>/dev/null || true)")
fi
[ -x "$bin/postgres" ] && [ -x "$bin/initdb" ] \
  || { echo "error: PostgreSQL is not installed (apt-get install -y postgresql)" >&2; exit 1; }

dir=$(mktemp -d /tmp/sb-pg-XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || { echo "error: as root, PostgreSQL needs the postgres user" >&2; exit 1; }
  chown postgres: "$dir"
  as=(setpriv --reuid=postgres --regid=postgres --init-groups)
fi
pid=""
stop() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap stop EXIT
trap 'exit 130' INT TERM

"${as[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
  || { cat "$dir/initdb.log" >&2; echo "error: initdb failed" >&2; exit 1; }
"${as[@]}" "$bin/postgres" -D "$dir/data" -p "$port" -k "$dir" \
  -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=on >"$dir/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do
  if python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $port)))"; then
    break
  fi
  kill -0 "$pid" 2>/dev/null || { cat "$dir/server.log" >&2; echo "error: postgres did not start" >&2; exit 1; }
  sleep 0.1
done
echo "== PostgreSQL on 127.0.0.1:$port (pid $pid)"
export SWITCHBOARD_TEST_POSTGRES="postgres://postgres@127.0.0.1:$port/postgres"
"$@"
