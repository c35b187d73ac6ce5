#!/usr/bin/env bash
# The two-datacenter profile of the local stack (`scripts/stack.sh up --profile dc`, `make dc-up`):
# datacenters `east` and `west`, active-active over MirrorMaker 2, on 127.0.0.1, without Docker.
#   - Each datacenter: a single-node Kafka, a FerretDB and a Redis (scripts/stack.sh with the
#     datacenter's own directory and ports), and the pipeline's `produce` and `consume`
#     (config/dev.toml layered with config/dc-<dc>.toml).
#             Kafka (controller)   FerretDB   Redis   API    consumer metrics
#     east    9592 (9593)          27517      6779    8581   9581
#     west    9692 (9693)          27617      6879    8681   9781
#     (clear of the shared stack, 9092/27017/6379, the Redis Cluster, 7001-7006, and the private
#     clusters the tests start at offset 12000)
#   - MirrorMaker 2, dedicated mode (org.apache.kafka.connect.mirror.MirrorMaker, 4.3.1 from Maven
#     Central), one process for both directions: `activities` of east -> west as `east.activities`,
#     of west -> east as `west.activities` (the default replication policy). Only `activities`:
#     retry topics and the DLQ stay in their datacenter.
#
# Usage: scripts/dc.sh up|down|status|reset
#        scripts/dc.sh kill east|west|mirror   (SIGKILL: every process of a datacenter, or MirrorMaker 2;
#                                                `up` brings them back on the same disks)
#   up      start what is not running, then wait until ready: both brokers, stores and APIs answer,
#           MirrorMaker 2 has created each mirrored topic, and an activity posted in each datacenter
#           has arrived in the other's store (read back through the other's API). Idempotent.
#   down    stop the pipeline, MirrorMaker 2, then each datacenter's services; data kept.
#   status  one line per process; always exits 0.
#   reset   down, then delete ${AP_DC_DIR} (everything the profile wrote).
#
# Environment:
#   AP_DC_DIR        data, logs, pid files of both datacenters (default: <repo>/.stack-dc, git-ignored)
#   AP_DC_BIN        the activity-pipeline binary (default: <repo>/target/debug/activity-pipeline;
#                    `make dc-up` builds it)
#   AP_DC_TIMEOUT    readiness timeout in seconds (default 240)
#   AP_DC_PORT_OFFSET  added to every port above (default 0; at most 5000, so every port stays below
#                    the kernel's ephemeral range); with AP_DC_DIR, a private two-datacenter stack
#                    beside the default one (the failover drill, `make dc-drill`, runs one)
#   AP_DC_CONFIG     a config file layered over each datacenter's (tenants, partitions, ...), for
#                    both datacenters' roles (default: none)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HOST=127.0.0.1
DC_DIR=${AP_DC_DIR:-${AP_REPO_ROOT}/.stack-dc}
[[ "${DC_DIR}" == /* ]] || DC_DIR="${PWD}/${DC_DIR}"
BIN=${AP_DC_BIN:-${AP_REPO_ROOT}/target/debug/activity-pipeline}
TIMEOUT=${AP_DC_TIMEOUT:-240}
[[ "${TIMEOUT}" =~ ^[0-9]+$ ]] || ap_die "AP_DC_TIMEOUT must be a number, got '${TIMEOUT}'"
OFFSET=${AP_DC_PORT_OFFSET:-0}
[[ "${OFFSET}" =~ ^[0-9]+$ ]] && ((OFFSET <= 5000)) \
    || ap_die "AP_DC_PORT_OFFSET must be a number from 0 to 5000, got '${OFFSET}'"
EXTRA_CONFIG=${AP_DC_CONFIG:-}
[[ -z "${EXTRA_CONFIG}" || "${EXTRA_CONFIG}" == /* ]] || EXTRA_CONFIG="${PWD}/${EXTRA_CONFIG}"
[[ -z "${EXTRA_CONFIG}" || -f "${EXTRA_CONFIG}" ]] || ap_die "AP_DC_CONFIG: no file at '${EXTRA_CONFIG}'"
DCS=(east west)
TOPIC=activities
API_KEY=demo-key-acme

kafka_port() { case $1 in east) printf %s $((9592 + OFFSET)) ;; west) printf %s $((9692 + OFFSET)) ;; esac; }
mongo_port() { case $1 in east) printf %s $((27517 + OFFSET)) ;; west) printf %s $((27617 + OFFSET)) ;; esac; }
redis_port() { case $1 in east) printf %s $((6779 + OFFSET)) ;; west) printf %s $((6879 + OFFSET)) ;; esac; }
api_port() { case $1 in east) printf %s $((8581 + OFFSET)) ;; west) printf %s $((8681 + OFFSET)) ;; esac; }
metrics_port() { case $1 in east) printf %s $((9581 + OFFSET)) ;; west) printf %s $((9781 + OFFSET)) ;; esac; }
other_dc() { case $1 in east) printf west ;; west) printf east ;; esac; }
dc_dir() { printf '%s/%s' "${DC_DIR}" "$1"; }
app_dir() { printf '%s/%s/app' "${DC_DIR}" "$1"; }
mirror_dir() { printf '%s/mirrormaker' "${DC_DIR}"; }

# stack DC CMD...: scripts/stack.sh for datacenter DC's Kafka, FerretDB and Redis.
# The services it starts must not inherit this script's lock (they would hold it for their life).
stack() {
    local dc=$1
    shift
    local -a run=(env AP_STACK_DIR="$(dc_dir "${dc}")" AP_STACK_KAFKA_PORT="$(kafka_port "${dc}")"
        AP_STACK_KAFKA_ADVERTISED_PORT="$(kafka_port "${dc}")"
        AP_STACK_MONGO_PORT="$(mongo_port "${dc}")" AP_STACK_REDIS_PORT="$(redis_port "${dc}")"
        AP_STORE_BACKEND=sqlite "${AP_SCRIPTS_DIR}/stack.sh" "$@")
    if [[ -n "${STACK_LOCK_FD:-}" ]]; then
        "${run[@]}" {STACK_LOCK_FD}>&-
    else
        "${run[@]}"
    fi
}

# pipeline_args DC: the binary's configuration arguments for datacenter DC, one per line. The
# addresses are set here too (the same as config/dc-<dc>.toml's at offset 0), so an offset moves them.
pipeline_args() {
    local dc=$1
    printf '%s\n' --config "${AP_REPO_ROOT}/config/dev.toml" --config "${AP_REPO_ROOT}/config/dc-${dc}.toml"
    [[ -z "${EXTRA_CONFIG}" ]] || printf '%s\n' --config "${EXTRA_CONFIG}"
    printf '%s\n' --set "kafka.brokers=${HOST}:$(kafka_port "${dc}")" \
        --set "mongo.uri=mongodb://${HOST}:$(mongo_port "${dc}")" \
        --set "redis.url=redis://${HOST}:$(redis_port "${dc}")" \
        --set "http.listen=${HOST}:$(api_port "${dc}")" \
        --set "consumer.metrics_listen=${HOST}:$(metrics_port "${dc}")"
}

# pipeline DC ARGS...: the binary with datacenter DC's configuration.
pipeline() {
    local dc=$1
    shift
    local -a args
    mapfile -t args < <(pipeline_args "${dc}")
    "${BIN}" "${args[@]}" "$@"
}

fail() {
    local what=$1 log=$2
    {
        printf '[dc] ERROR: %s\n' "${what}"
        printf '[dc]        log: %s\n' "${log}"
        [[ -f "${log}" ]] && { printf -- '---- last 20 lines of %s ----\n' "${log}"; tail -n 20 "${log}"; }
        printf -- '----\n'
    } >&2
    exit 1
}

# ---- the pipeline of a datacenter --------------------------------------------------------------

role_pidfile() { printf '%s/%s.pid' "$(app_dir "$1")" "$2"; }
role_log() { printf '%s/%s.log' "$(app_dir "$1")" "$2"; }

start_role() {
    local dc=$1 role=$2
    if live_pid "$(role_pidfile "${dc}" "${role}")" activity-pipeline >/dev/null; then
        ap_log "${dc}: ${role} already running"
        return 0
    fi
    mkdir -p "$(app_dir "${dc}")"
    ap_log "${dc}: starting ${role} (log: $(role_log "${dc}" "${role}"))"
    local -a args
    mapfile -t args < <(pipeline_args "${dc}")
    spawn "$(role_pidfile "${dc}" "${role}")" "$(role_log "${dc}" "${role}")" "${BIN}" "${args[@]}" "${role}"
}

api() { printf 'http://%s:%s' "${HOST}" "$(api_port "$1")"; }

# ---- MirrorMaker 2 -----------------------------------------------------------------------------

write_mirror_config() {
    local dir
    dir=$(mirror_dir)
    mkdir -p "${dir}/config"
    cat >"${dir}/config/mm2.properties" <<EOF
# Generated by scripts/dc.sh on each start: edit the script, not this file.
clusters = east, west
east.bootstrap.servers = ${HOST}:$(kafka_port east)
west.bootstrap.servers = ${HOST}:$(kafka_port west)

# Each direction mirrors only the activities topic: retry topics and the DLQ stay in their datacenter.
# The default replication policy names the copy <source>.activities and never mirrors a copy back.
east->west.enabled = true
east->west.topics = ${TOPIC}
west->east.enabled = true
west->east.topics = ${TOPIC}

# Single brokers: every topic MirrorMaker 2 creates has one replica.
replication.factor = 1
checkpoints.topic.replication.factor = 1
heartbeats.topic.replication.factor = 1
offset-syncs.topic.replication.factor = 1
offset.storage.replication.factor = 1
status.storage.replication.factor = 1
config.storage.replication.factor = 1

# No consumer group moves between datacenters (each reads its local and mirrored topics), so no
# offsets are translated: the checkpoint connector's group sync stays off.
sync.group.offsets.enabled = false
emit.checkpoints.enabled = false
# Topic ACLs are not in use here; copying topic configs is (retention of the mirrored topic).
sync.topic.acls.enabled = false
# New and changed source topics are noticed within seconds (the default is ten minutes).
refresh.topics.interval.seconds = 5
# Records are flushed and offsets committed often, so a restart re-mirrors little (at-least-once).
# A worker setting, read per target cluster: in dedicated mode MirrorMaker 2 builds each herder's
# worker config from the target's `<cluster>.` settings and only a few top-level prefixes
# (offset.storage, config.storage, status.storage, converters, task, worker), so a top-level
# offset.flush.interval.ms is ignored and the default 60 s applies (the failover drill measured a
# restarted MirrorMaker 2 copying about three quarters of a topic again).
east.offset.flush.interval.ms = 2000
west.offset.flush.interval.ms = 2000
EOF
    ap_write_kafka_log4j2 "${dir}" activity-pipeline-mirrormaker
}

mirror_pidfile() { printf '%s/mirrormaker.pid' "$(mirror_dir)"; }
mirror_log() { printf '%s/server.log' "$(mirror_dir)"; }

start_mirror() {
    local dir
    dir=$(mirror_dir)
    if live_pid "$(mirror_pidfile)" connect.mirror.MirrorMaker >/dev/null; then
        ap_log "mirrormaker: already running"
        return 0
    fi
    ap_ensure_mirror_libs
    write_mirror_config
    ap_log "mirrormaker: starting (log: $(mirror_log), config: ${dir}/config/mm2.properties)"
    printf '\n==== %s starting MirrorMaker 2\n' "$(date -Is)" >>"${dir}/mirrormaker.out"
    spawn "$(mirror_pidfile)" "${dir}/mirrormaker.out" \
        java -Xms256m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="${dir}/config/log4j2.xml" \
        -cp "${AP_MIRROR_LIBS}/*" org.apache.kafka.connect.mirror.MirrorMaker "${dir}/config/mm2.properties"
}

# ---- readiness ---------------------------------------------------------------------------------

# topic_exists DC TOPIC: TOPIC is in DC's cluster metadata.
topic_exists() {
    timeout 10 kcat -b "${HOST}:$(kafka_port "$1")" -L -t "$2" 2>/dev/null | grep -q "topic \"$2\" with [1-9]"
}

# wait_until WHAT DEADLINE CMD...: poll CMD every second until it succeeds or SECONDS passes DEADLINE.
wait_until() {
    local what=$1 deadline=$2 start=${SECONDS}
    shift 2
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
    ap_log "${what} ($((SECONDS - start)) s)"
}

api_answers() { curl -fsS -o /dev/null "$(api "$1")/healthz" 2>/dev/null; }

# stored_in DC KEY: the activity KEY of tenant acme is in DC's store (read through its API).
stored_in() {
    curl -fsS -o /dev/null -H "Authorization: Bearer ${API_KEY}" "$(api "$1")/activities/$2" 2>/dev/null
}

post_probe() {
    local dc=$1 key=$2 status
    status=$(curl -sS -o /dev/null -w '%{http_code}' -X POST "$(api "${dc}")/activities" \
        -H "Authorization: Bearer ${API_KEY}" -H "X-Idempotency-Key: ${key}" \
        -H 'Content-Type: application/json' \
        -d "{\"actorId\":\"dc-probe\",\"actorName\":\"Readiness probe\",\"type\":\"dc.probe\",\"entityId\":\"${dc}\"}" 2>/dev/null) || true
    [[ "${status}" == 202 ]]
}

wait_ready() {
    local deadline=$((SECONDS + TIMEOUT)) dc other key
    for dc in "${DCS[@]}"; do
        wait_until "${dc}: API answers on $(api "${dc}")" "${deadline}" api_answers "${dc}" \
            || fail "${dc}: the API did not answer within ${TIMEOUT} s" "$(role_log "${dc}" produce)"
    done
    for dc in "${DCS[@]}"; do
        other=$(other_dc "${dc}")
        wait_until "mirrormaker: ${other}.${TOPIC} exists in ${dc}" "${deadline}" topic_exists "${dc}" "${other}.${TOPIC}" \
            || fail "mirrormaker: ${other}.${TOPIC} did not appear in ${dc} within ${TIMEOUT} s" "$(mirror_log)"
    done
    # The end-to-end proof: a probe accepted in each datacenter is stored in the other one.
    for dc in "${DCS[@]}"; do
        key="dc-probe-${dc}-$(date +%s%N)"
        wait_until "${dc}: probe ${key} accepted" "${deadline}" post_probe "${dc}" "${key}" \
            || fail "${dc}: the API did not accept a probe within ${TIMEOUT} s" "$(role_log "${dc}" produce)"
        other=$(other_dc "${dc}")
        wait_until "${other}: probe ${key} from ${dc} stored" "${deadline}" stored_in "${other}" "${key}" \
            || fail "${other}: the probe accepted in ${dc} was not stored within ${TIMEOUT} s" "$(role_log "${other}" consume)"
    done
}

# ---- commands ----------------------------------------------------------------------------------

cmd_up() {
    local dc
    [[ -x "${BIN}" ]] || ap_die "no binary at ${BIN}: run 'cargo build' (make dc-up does) or set AP_DC_BIN"
    ap_ensure_mirror_libs
    for dc in "${DCS[@]}"; do
        ap_log "${dc}: Kafka ${HOST}:$(kafka_port "${dc}"), FerretDB ${HOST}:$(mongo_port "${dc}"), Redis ${HOST}:$(redis_port "${dc}")"
        stack "${dc}" up
        mkdir -p "$(app_dir "${dc}")"
        pipeline "${dc}" topics create >>"$(role_log "${dc}" topics)" 2>&1 \
            || fail "${dc}: topics create failed" "$(role_log "${dc}" topics)"
    done
    start_mirror
    for dc in "${DCS[@]}"; do
        start_role "${dc}" consume
        start_role "${dc}" produce
    done
    wait_ready
    cmd_where
}

cmd_where() {
    local dc
    printf '\n  Two datacenters on %s (data and logs under %s):\n' "${HOST}" "${DC_DIR}"
    for dc in "${DCS[@]}"; do
        printf '    %-5s API %s   Kafka %s:%s   FerretDB mongodb://%s:%s   Redis redis://%s:%s   consumer metrics http://%s:%s/metrics\n' \
            "${dc}" "$(api "${dc}")" "${HOST}" "$(kafka_port "${dc}")" "${HOST}" "$(mongo_port "${dc}")" \
            "${HOST}" "$(redis_port "${dc}")" "${HOST}" "$(metrics_port "${dc}")"
        printf '          config: config/dev.toml + config/dc-%s.toml%s; logs: %s/{produce,consume}.log\n' "${dc}" \
            "${EXTRA_CONFIG:+ + ${EXTRA_CONFIG}}" "$(app_dir "${dc}")"
    done
    printf '    MirrorMaker 2: %s/config/mm2.properties, log %s\n' "$(mirror_dir)" "$(mirror_log)"
    printf '\n  Post in east, read it in west:\n'
    printf "    curl -X POST %s/activities -H 'Authorization: Bearer %s' -H 'X-Idempotency-Key: k1' -H 'Content-Type: application/json' -d '{\"actorId\":\"u1\",\"actorName\":\"Alice\",\"type\":\"login\"}'\n" "$(api east)" "${API_KEY}"
    printf "    curl %s/activities/k1 -H 'Authorization: Bearer %s'\n\n" "$(api west)" "${API_KEY}"
}

# stop_pid PIDFILE TOKEN NAME: SIGTERM, then SIGKILL after 20 s.
stop_pid() {
    local pid deadline
    if ! pid=$(live_pid "$1" "$2"); then
        rm -f "$1"
        return 0
    fi
    ap_log "$3: stopping pid ${pid}"
    kill -TERM "${pid}" 2>/dev/null || true
    deadline=$((SECONDS + 20))
    while pid_alive "${pid}" && ((SECONDS < deadline)); do sleep 0.2; done
    pid_alive "${pid}" && kill -KILL "${pid}" 2>/dev/null || true
    rm -f "$1"
}

cmd_down() {
    local dc
    for dc in "${DCS[@]}"; do
        stop_pid "$(role_pidfile "${dc}" produce)" activity-pipeline "${dc}: produce"
        stop_pid "$(role_pidfile "${dc}" consume)" activity-pipeline "${dc}: consume"
    done
    stop_pid "$(mirror_pidfile)" connect.mirror.MirrorMaker mirrormaker
    for dc in "${DCS[@]}"; do
        [[ -d "$(dc_dir "${dc}")" ]] && stack "${dc}" down
    done
    return 0
}

# kill_pidfile PIDFILE TOKEN: SIGKILL of the process, if it runs.
kill_pidfile() {
    local pid
    pid=$(live_pid "$1" "$2") || return 0
    kill -KILL "${pid}" 2>/dev/null || true
    ap_log "killed pid ${pid} ($1)"
}

cmd_kill() {
    local what=${1:-}
    case ${what} in
        east | west)
            kill_pidfile "$(role_pidfile "${what}" produce)" activity-pipeline
            kill_pidfile "$(role_pidfile "${what}" consume)" activity-pipeline
            kill_pidfile "$(dc_dir "${what}")/kafka/kafka.pid" kafka.Kafka
            kill_pidfile "$(dc_dir "${what}")/mongo/ferretdb.pid" ferretdb
            kill_pidfile "$(dc_dir "${what}")/redis/redis.pid" redis-server
            ;;
        mirror) kill_pidfile "$(mirror_pidfile)" connect.mirror.MirrorMaker ;;
        *) ap_die "kill what? east, west or mirror (got '${what}')" ;;
    esac
}

cmd_status() {
    local dc role pid
    for dc in "${DCS[@]}"; do
        printf -- '-- %s\n' "${dc}"
        stack "${dc}" status
        for role in produce consume; do
            pid=$(live_pid "$(role_pidfile "${dc}" "${role}")" activity-pipeline) || pid=-
            printf '%-8s %-16s %-9s pid=%-8s log=%s\n' "${role}" "" "$([[ ${pid} == - ]] && echo stopped || echo running)" "${pid}" "$(role_log "${dc}" "${role}")"
        done
    done
    pid=$(live_pid "$(mirror_pidfile)" connect.mirror.MirrorMaker) || pid=-
    printf -- '-- both\nmirrormaker %-13s %-9s pid=%-8s log=%s\n' "" "$([[ ${pid} == - ]] && echo stopped || echo running)" "${pid}" "$(mirror_log)"
}

cmd_reset() {
    cmd_down
    [[ -n "${DC_DIR}" && "${DC_DIR}" != / ]] || ap_die "refusing to delete '${DC_DIR}'"
    rm -rf "${DC_DIR}"
    ap_log "deleted ${DC_DIR}"
}

main() {
    local cmd=${1:-}
    [[ -n "${cmd}" ]] || { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2; exit 2; }
    shift
    case ${cmd} in
        up | down | reset | kill)
            mkdir -p "${DC_DIR}"
            # Named like stack.sh's lock, so `spawn` (lib.sh) keeps it from the processes it starts.
            exec {STACK_LOCK_FD}>"${DC_DIR}/.lock"
            flock "${STACK_LOCK_FD}"
            ;;
    esac
    case ${cmd} in
        up) cmd_up ;;
        down) cmd_down ;;
        status) cmd_status ;;
        reset) cmd_reset ;;
        kill) cmd_kill "$@" ;;
        where) cmd_where ;;
        *) ap_die "unknown command '${cmd}' (up, down, status, reset, kill east|west|mirror, where)" ;;
    esac
}

main "$@"
