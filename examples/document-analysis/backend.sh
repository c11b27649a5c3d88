#!/usr/bin/env bash
# The backend's side of the document-analysis flow (docs/AI.md "Backend-driven
# progress"): report progress of analysis DOC for USER as one notification that
# changes (same key), then publish the result on the user's personal channel as the
# event `analysis_complete`. Needs the server's API key (printed by `switchboard` in
# dev mode) in SWITCHBOARD_API_KEY.
#
#   SWITCHBOARD_API_KEY=… examples/document-analysis/backend.sh bob doc-7
set -euo pipefail
USER_ID=${1:-bob}
DOC=${2:-doc-7}
API=${SWITCHBOARD_API:-http://127.0.0.1:7401}
: "${SWITCHBOARD_API_KEY:?set SWITCHBOARD_API_KEY to the server API key}"
post() { # path body
  curl -fsS -H "Authorization: Bearer $SWITCHBOARD_API_KEY" \
    -H 'Content-Type: application/json' -d "$2" "$API$1"
  echo
}
for step in "10 running upload" "40 running OCR" "80 running entities" "100 complete done"; do
  set -- $step
  post /api/notifications "{\"user\":\"$USER_ID\",\"kind\":\"progress\",\"key\":\"analysis:$DOC\",\"data\":{\"percent\":$1,\"state\":\"$2\",\"label\":\"$3\"}}"
  sleep 0.2
done
post /api/publish "{\"channel\":\"user:$USER_ID\",\"event\":\"analysis_complete\",\"data\":{\"document\":\"$DOC\",\"pages\":12,\"summary\":\"Lease agreement, 2 parties, renewal in 2027\"}}"
