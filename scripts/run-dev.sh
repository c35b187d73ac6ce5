#!/usr/bin/env bash
# `make run`: create the topics, then run `produce`, `consume` and `console` with the dev config until
# Ctrl-C.
# Expects the stack to be up and the debug binary built (the Makefile does both first).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bin=target/debug/activity-pipeline
config=config/dev.toml

"$bin" --config "$config" topics create

"$bin" --config "$config" consume &
consume_pid=$!
"$bin" --config "$config" produce &
produce_pid=$!
"$bin" --config "$config" console &
console_pid=$!

stop() {
    kill -TERM "$produce_pid" "$consume_pid" "$console_pid" 2>/dev/null || true
    wait "$produce_pid" "$consume_pid" "$console_pid" 2>/dev/null || true
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

url=http://127.0.0.1:8080
console_url=http://127.0.0.1:8088/console
# The dev operators' tokens (config/dev.toml stores only their digests).
console_admin_token=dev-operator-admin
console_viewer_token=dev-operator-viewer
for _ in $(seq 1 100); do
    if curl -fsS "$url/healthz" >/dev/null 2>&1; then
        break
    fi
    if ! kill -0 "$produce_pid" 2>/dev/null; then
        echo "produce exited; see the log above" >&2
        exit 1
    fi
    sleep 0.1
done

cat <<MSG

  activity-pipeline is running: API at $url (consumer group activity-pipeline).

  Send an activity:
    curl -i -X POST $url/activities -H 'Authorization: Bearer demo-key-acme' -H 'Content-Type: application/json' -d '{"actorId":"u1","actorName":"Alice","type":"comment.created","entityId":"doc-42"}'

  Read it back, see the counters, watch new ones live (Ctrl-C ends the stream):
    curl -s $url/activities -H 'Authorization: Bearer demo-key-acme'
    curl -s $url/analytics -H 'Authorization: Bearer demo-key-acme'
    curl -N $url/activities/stream -H 'Authorization: Bearer demo-key-acme'

  Every endpoint: $url/openapi.json (and the README's API section).

  The operators' console: $console_url
    log in with the dev admin token:  $console_admin_token
    (or the read-only viewer token:   $console_viewer_token)
    its JSON API: curl -s $console_url/api/overview -H 'Authorization: Bearer $console_admin_token'

  See it in MongoDB (database activity_pipeline, collection activities), e.g. with mongosh:
    mongosh mongodb://127.0.0.1:27017/activity_pipeline --eval 'db.activities.find().sort({_id:-1}).limit(1)'

  Ctrl-C stops the three roles; 'make stack-down' stops Kafka, FerretDB and Redis.

MSG
wait -n "$produce_pid" "$consume_pid" "$console_pid"
