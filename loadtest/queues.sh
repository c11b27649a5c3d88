#!/usr/bin/env bash
# Where a backlog sits during a run: every INTERVAL seconds (default 2), SAMPLES times
# (default 10), the bytes waiting in the sockets of the server on PORT — unread by the
# clients (their receive queues), unsent or unacknowledged by the server (its send
# queues) — and, when ADMIN (host:port) is given, each shard's own outbound queue
# (`switchboard_outbound_queued_bytes` from /metrics). Start it beside a loadtest run;
# it stops by itself. Loopback only.
# Usage: loadtest/queues.sh PORT [ADMIN]     e.g. loadtest/queues.sh 7400 127.0.0.1:7401 &
set -euo pipefail
[ $# -ge 1 ] || { sed -n 2,8p "$0" >&2; exit 2; }
PORT=$1 ADMIN=${2:-}
for _ in $(seq "${SAMPLES:-10}"); do
  sleep "${INTERVAL:-2}"
  # ss columns with a state filter: Recv-Q Send-Q Local Peer.
  line=$(ss -tnH state established | awk -v p=":$PORT" '
    function ends(s) { return substr(s, length(s) - length(p) + 1) == p }
    ends($3) { sq += $2 }
    ends($4) { cr += $1 }
    END { printf "clients unread %d B  server send queues %d B", cr, sq }')
  if [ -n "$ADMIN" ]; then
    shards=$(curl -s -m 2 "http://$ADMIN/metrics" |
      awk '/^switchboard_outbound_queued_bytes\{/ { sub(/.*shard="/, ""); sub(/"\}/, ""); printf " shard %s %s B", $1, $2 }')
    line="$line  server queues:${shards:- (no answer)}"
  fi
  echo "$(date +%T)  $line"
done
