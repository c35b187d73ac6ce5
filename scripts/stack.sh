#!/usr/bin/env bash
# Local service stack without Docker: Redis, FerretDB (MongoDB wire protocol) on SQLite or on a
# PostgreSQL cluster of the stack's own, and a single-node KRaft Kafka, all on 127.0.0.1.
#
# Usage: scripts/stack.sh up|down|status|reset [redis|postgres|mongo|kafka ...]
#        (no names = all of them; `postgres` only with AP_STORE_BACKEND=postgresql)
#        scripts/stack.sh up|down|status|reset --profile cluster   (three Kafka brokers, a Redis
#        Cluster; scripts/cluster.sh says more)
#        scripts/stack.sh up|down|status|reset --profile dc   (two datacenters, east and west, each
#        with its Kafka, FerretDB, Redis, produce and consume, and MirrorMaker 2 between them;
#        scripts/dc.sh says more)
#
#   up      start what is not running and wait until each service really answers
#           (Redis PING, pg_isready and the `ferretdb` database, a MongoDB OP_MSG hello+ping, a
#           Kafka metadata request). Idempotent: a service that answers is left alone; one whose
#           pid file points to a dead process is restarted. `mongo` on PostgreSQL starts `postgres`
#           first. Fetches/builds what is missing first (apt: redis-server, kcat, postgresql; Maven
#           Central: the Kafka jars; Go module proxy: FerretDB).
#   down    stop the services (SIGTERM, PostgreSQL SIGINT, then SIGKILL after a timeout); their
#           data is kept.
#   status  one line per service: name, port, running/stopped, pid, log; always exits 0.
#   reset   down, then delete the services' data, logs and config under the stack dir.
#
# Environment:
#   AP_STORE_BACKEND     FerretDB's backend: sqlite (default) or postgresql. Each keeps its own data;
#                        switching needs `scripts/stack.sh down mongo` first (up refuses otherwise).
#   AP_STACK_DIR         runtime data, logs, pid files   (default: <repo>/.stack, git-ignored)
#   AP_CACHE_DIR         downloads and builds            (default: ~/.cache/activity-pipeline)
#   AP_STACK_KAFKA_PORT  Kafka broker port (default 9092; the KRaft controller uses port+1)
#   AP_STACK_KAFKA_ADVERTISED_PORT  port the broker tells clients to connect to (default: the broker
#                        port); a fault proxy in front of the broker listens there (make faults)
#   AP_STACK_MONGO_PORT  FerretDB port (default 27017)
#   AP_STACK_REDIS_PORT  Redis port (default 6379)
#   AP_STACK_POSTGRES_PORT  the stack's PostgreSQL port (default 5433; Debian's own cluster has 5432)
#   AP_STACK_KAFKA_TIMEOUT, AP_STACK_TIMEOUT  readiness timeouts in seconds (default 90 and 30)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HOST=127.0.0.1
STORE_BACKEND=${AP_STORE_BACKEND:-sqlite}
case ${STORE_BACKEND} in
    sqlite) ALL_SERVICES=(redis mongo kafka) ;;
    postgresql) ALL_SERVICES=(redis postgres mongo kafka) ;;
    *) ap_die "AP_STORE_BACKEND must be sqlite or postgresql, got '${STORE_BACKEND}'" ;;
esac
# The PostgreSQL database FerretDB keeps its collections in (one schema per MongoDB database).
POSTGRES_DATABASE=ferretdb
STACK_DIR=${AP_STACK_DIR:-${AP_REPO_ROOT}/.stack}
[[ "${STACK_DIR}" == /* ]] || STACK_DIR="${PWD}/${STACK_DIR}"
KAFKA_PORT=${AP_STACK_KAFKA_PORT:-9092}
KAFKA_ADVERTISED_PORT=${AP_STACK_KAFKA_ADVERTISED_PORT:-${KAFKA_PORT}}
MONGO_PORT=${AP_STACK_MONGO_PORT:-27017}
REDIS_PORT=${AP_STACK_REDIS_PORT:-6379}
POSTGRES_PORT=${AP_STACK_POSTGRES_PORT:-5433}
KAFKA_TIMEOUT=${AP_STACK_KAFKA_TIMEOUT:-90}
OTHER_TIMEOUT=${AP_STACK_TIMEOUT:-30}
for v in KAFKA_PORT KAFKA_ADVERTISED_PORT MONGO_PORT REDIS_PORT POSTGRES_PORT KAFKA_TIMEOUT OTHER_TIMEOUT; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || ap_die "${v} must be a number, got '${!v}'"
done
KAFKA_CONTROLLER_PORT=$((KAFKA_PORT + 1))

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit 2
}

# ---- per-service facts -------------------------------------------------------------------------

svc_dir() { printf '%s/%s' "${STACK_DIR}" "$1"; }
svc_pidfile() {
    case $1 in
        redis) printf '%s/redis.pid' "$(svc_dir redis)" ;;
        postgres) printf '%s/postgres.pid' "$(svc_dir postgres)" ;;
        mongo) printf '%s/ferretdb.pid' "$(svc_dir mongo)" ;;
        kafka) printf '%s/kafka.pid' "$(svc_dir kafka)" ;;
    esac
}
# The log to read first; kafka also has kafka.out (the JVM's own stdout/stderr).
svc_log() {
    case $1 in
        redis) printf '%s/redis.log' "$(svc_dir redis)" ;;
        postgres) printf '%s/postgres.log' "$(svc_dir postgres)" ;;
        mongo) printf '%s/ferretdb.log' "$(svc_dir mongo)" ;;
        kafka) printf '%s/server.log' "$(svc_dir kafka)" ;;
    esac
}
svc_port() {
    case $1 in
        redis) printf '%s' "${REDIS_PORT}" ;;
        postgres) printf '%s' "${POSTGRES_PORT}" ;;
        mongo) printf '%s' "${MONGO_PORT}" ;;
        kafka) printf '%s' "${KAFKA_PORT}" ;;
    esac
}
svc_timeout() {
    case $1 in
        kafka) printf '%s' "${KAFKA_TIMEOUT}" ;;
        *) printf '%s' "${OTHER_TIMEOUT}" ;;
    esac
}
# A word that the process's command line contains (guards against a recycled pid).
svc_cmd_token() {
    case $1 in
        redis) printf 'redis-server' ;;
        postgres) printf 'postgres' ;;
        mongo) printf 'ferretdb' ;;
        kafka) printf 'kafka.Kafka' ;;
    esac
}

# ---- processes ---------------------------------------------------------------------------------

# spawned_pid_died PIDFILE: the pid file names a process that is gone.
spawned_pid_died() {
    local pid
    [[ -s "$1" ]] || return 1
    pid=$(head -n 1 "$1" 2>/dev/null | tr -dc '0-9')
    [[ -n "${pid}" ]] && ! pid_alive "${pid}"
}

# svc_pid SVC: prints the pid of the service's live process, per its pid file; fails otherwise.
svc_pid() {
    local pidfile pid
    pidfile=$(svc_pidfile "$1")
    [[ -s "${pidfile}" ]] || return 1
    pid=$(head -n 1 "${pidfile}" 2>/dev/null | tr -dc '0-9')
    [[ -n "${pid}" ]] && pid_alive "${pid}" || return 1
    tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null | grep -qF -- "$(svc_cmd_token "$1")" || return 1
    printf '%s' "${pid}"
}

port_open() {
    (exec 3<>"/dev/tcp/${HOST}/$1") 2>/dev/null
}

port_owner() {
    command -v ss >/dev/null 2>&1 || return 0
    ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*users:(\(.*\))$/\1/p' | head -n 1
}

# ---- readiness checks (0 = answers) ------------------------------------------------------------

check_redis() {
    [[ "$(timeout 5 redis-cli -h "${HOST}" -p "${REDIS_PORT}" ping 2>/dev/null)" == PONG ]]
}
check_postgres() {
    local bin
    bin=${AP_POSTGRES_BIN:-$(ap_postgres_bindir)} || return 1
    timeout 5 "${bin}/pg_isready" -q -h "${HOST}" -p "${POSTGRES_PORT}" -U postgres -d postgres -t 3 || return 1
    [[ "$(timeout 5 "${bin}/psql" -h "${HOST}" -p "${POSTGRES_PORT}" -U postgres -d postgres -XtAc \
        "SELECT 1 FROM pg_database WHERE datname = '${POSTGRES_DATABASE}'" 2>/dev/null)" == 1 ]]
}
check_mongo() {
    timeout 10 python3 "${AP_SCRIPTS_DIR}/mongo-ping.py" "${HOST}" "${MONGO_PORT}" 3 >/dev/null 2>&1
}
check_kafka() {
    local out
    port_open "${KAFKA_PORT}" || return 1
    out=$(timeout 10 kcat -b "${HOST}:${KAFKA_PORT}" -L -m 3 2>/dev/null) || return 1
    grep -q "broker 1 at ${HOST}:${KAFKA_ADVERTISED_PORT}" <<<"${out}"
}
svc_check() { "check_$1"; }

# ---- preparing and starting --------------------------------------------------------------------

prepare_redis() {
    ap_apt_install redis-server redis-server
    ap_apt_install redis-cli redis-tools
}
prepare_postgres() {
    ap_ensure_postgres
    if [[ $(id -u) -eq 0 ]]; then
        # PostgreSQL refuses to run as root: the cluster belongs to the `postgres` user that Debian's
        # package creates, who must be able to enter the stack dir.
        id -u postgres >/dev/null 2>&1 || ap_die "postgres: there is no 'postgres' user (Debian's postgresql package creates it)"
        mkdir -p "${STACK_DIR}"
        as_postgres test -x "${STACK_DIR}" \
            || ap_die "postgres: the 'postgres' user cannot enter ${STACK_DIR} (PostgreSQL refuses to run as root); give its parent directories o+x or set AP_STACK_DIR to a place it can reach"
    fi
}
prepare_mongo() {
    ap_apt_install python3 python3
    ap_ensure_ferretdb
}
prepare_kafka() {
    ap_apt_install kcat kcat
    ap_require_java
    ap_ensure_kafka_libs
}

start_redis() {
    local dir
    dir=$(svc_dir redis)
    mkdir -p "${dir}"
    spawn "$(svc_pidfile redis)" "$(svc_log redis)" \
        redis-server --bind "${HOST}" --port "${REDIS_PORT}" --save '' --appendonly yes \
        --dir "${dir}" --daemonize no --pidfile "$(svc_pidfile redis)" --logfile "$(svc_log redis)"
}

# as_postgres CMD...: CMD as the `postgres` user when we are root (PostgreSQL refuses root), else as
# ourselves. setpriv execs, so a spawned server keeps the pid the pid file names (runuser would stay
# in between as its parent).
AS_POSTGRES=()
[[ $(id -u) -eq 0 ]] && AS_POSTGRES=(setpriv --reuid=postgres --regid=postgres --init-groups --)
as_postgres() { "${AS_POSTGRES[@]}" "$@"; }

# init_postgres DIR: a cluster in DIR/data with the `ferretdb` database, made once. It is made in
# DIR/data.init and renamed, so a DIR/data that exists is complete.
init_postgres() {
    local dir=$1 tmp="${1}/data.init" initlog="${1}/init.log"
    [[ -f "${dir}/data/PG_VERSION" ]] && return 0
    ap_log "postgres: initialising a cluster in ${dir}/data (once; log: ${initlog})"
    rm -rf "${tmp}" "${dir}/data"
    : >"${initlog}"
    [[ $(id -u) -eq 0 ]] && chown postgres: "${dir}" "${initlog}"
    # Trust authentication: the server listens on 127.0.0.1 only and holds test data.
    as_postgres "${AP_POSTGRES_BIN}/initdb" -D "${tmp}" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
        >>"${initlog}" 2>&1 </dev/null \
        || { tail -n 20 "${initlog}" >&2; ap_die "postgres: initdb failed (log: ${initlog})"; }
    # Single-user mode: the database exists before the server first listens, so readiness is one check.
    as_postgres "${AP_POSTGRES_BIN}/postgres" --single -D "${tmp}" postgres \
        <<<"CREATE DATABASE ${POSTGRES_DATABASE};" >>"${initlog}" 2>&1 \
        || { tail -n 20 "${initlog}" >&2; ap_die "postgres: creating the ${POSTGRES_DATABASE} database failed (log: ${initlog})"; }
    if grep -qE '^(ERROR|FATAL|PANIC):' "${initlog}"; then
        tail -n 20 "${initlog}" >&2
        ap_die "postgres: creating the ${POSTGRES_DATABASE} database failed (log: ${initlog})"
    fi
    mv "${tmp}" "${dir}/data"
}

start_postgres() {
    local dir
    dir=$(svc_dir postgres)
    mkdir -p "${dir}"
    [[ $(id -u) -eq 0 ]] && chown postgres: "${dir}"
    init_postgres "${dir}"
    # TCP on 127.0.0.1 only, no Unix socket (its default directory belongs to Debian's cluster, and
    # a socket path under a deep stack dir can pass the 107-byte limit); logs to stderr, the log file.
    spawn "$(svc_pidfile postgres)" "$(svc_log postgres)" \
        "${AS_POSTGRES[@]}" "${AP_POSTGRES_BIN}/postgres" -D "${dir}/data" -p "${POSTGRES_PORT}" \
        -c listen_addresses="${HOST}" -c unix_socket_directories= -c logging_collector=off
}

start_mongo() {
    local dir
    local -a backend
    dir=$(svc_dir mongo)
    mkdir -p "${dir}/state"
    case ${STORE_BACKEND} in
        sqlite)
            mkdir -p "${dir}/data"
            backend=(--handler=sqlite --sqlite-url="file:${dir}/data/")
            ;;
        postgresql)
            backend=(--handler=postgresql
                --postgresql-url="postgres://postgres@${HOST}:${POSTGRES_PORT}/${POSTGRES_DATABASE}")
            ;;
    esac
    spawn "$(svc_pidfile mongo)" "$(svc_log mongo)" \
        "${AP_FERRETDB_BIN}" "${backend[@]}" \
        --listen-addr="${HOST}:${MONGO_PORT}" --state-dir="${dir}/state" \
        --debug-addr=- --telemetry=disable --log-level=warn
}

# mongo_backend PID: the --handler a running FerretDB was started with.
mongo_backend() {
    tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | sed -n 's/^--handler=//p' | head -n 1
}

write_kafka_config() {
    local dir=$1
    mkdir -p "${dir}/config" "${dir}/data"
    cat >"${dir}/config/server.properties" <<EOF
# Generated by scripts/stack.sh on each start: edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=${HOST}:${KAFKA_CONTROLLER_PORT}
listeners=PLAINTEXT://${HOST}:${KAFKA_PORT},CONTROLLER://${HOST}:${KAFKA_CONTROLLER_PORT}
advertised.listeners=PLAINTEXT://${HOST}:${KAFKA_ADVERTISED_PORT},CONTROLLER://${HOST}:${KAFKA_CONTROLLER_PORT}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=${dir}/data
num.partitions=12
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
    ap_write_kafka_log4j2 "${dir}" activity-pipeline-kafka
}

format_kafka() {
    local dir=$1 cid formatlog="${1}/format.log"
    local -a java=(java -Dlog4j2.configurationFile="${AP_SCRIPTS_DIR}/kafka/log4j2-tools.xml" -cp "${AP_KAFKA_LIBS}/*")
    # Formatted once; a later change of AP_STACK_KAFKA_PORT works on the same storage (checked).
    [[ -f "${dir}/data/meta.properties" ]] && return 0
    ap_log "kafka: formatting storage in ${dir}/data (once)"
    cid=$("${java[@]}" kafka.tools.StorageTool random-uuid 2>"${formatlog}") \
        || { cat "${formatlog}" >&2; ap_die "kafka: StorageTool random-uuid failed (log: ${formatlog})"; }
    printf '%s\n' "${cid}" >"${dir}/cluster.id"
    if ! "${java[@]}" kafka.tools.StorageTool format --standalone -t "${cid}" \
        -c "${dir}/config/server.properties" >>"${formatlog}" 2>&1; then
        cat "${formatlog}" >&2
        ap_die "kafka: StorageTool format failed (log: ${formatlog})"
    fi
}

start_kafka() {
    local dir
    dir=$(svc_dir kafka)
    write_kafka_config "${dir}"
    format_kafka "${dir}"
    printf '\n==== %s starting kafka.Kafka\n' "$(date -Is)" >>"${dir}/kafka.out"
    KAFKA_LOG_START=$(stat -c %s "$(svc_log kafka)" 2>/dev/null || echo 0)
    spawn "$(svc_pidfile kafka)" "${dir}/kafka.out" \
        java -Xms1g -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="${dir}/config/log4j2.xml" -Dkafka.logs.dir="${dir}" \
        -cp "${AP_KAFKA_LIBS}/*" kafka.Kafka "${dir}/config/server.properties"
}

# ---- failure report ----------------------------------------------------------------------------

fail_service() {
    local svc=$1 why=$2 log port owner pid
    log=$(svc_log "${svc}")
    port=$(svc_port "${svc}")
    {
        printf '[stack] ERROR: %s (port %s) %s\n' "${svc}" "${port}" "${why}"
        printf '[stack]        log: %s\n' "${log}"
        if [[ -f "${log}" ]]; then
            printf -- '---- last 20 lines of %s ----\n' "${log}"
            tail -n 20 "${log}"
        else
            printf -- '---- %s does not exist ----\n' "${log}"
        fi
        if [[ "${svc}" == kafka && -f "${log}" ]]; then
            # Kafka's last lines are shutdown noise: show the errors of this start, with their cause.
            printf -- '---- ERROR lines of this start in %s ----\n' "${log}"
            tail -c +"$((${KAFKA_LOG_START:-0} + 1))" "${log}" | tail -n 5000 |
                grep -E -A1 '\] (ERROR|FATAL) ' | grep -vE '^[[:space:]]+at |^--$' | head -n 12 || true
        fi
        if [[ "${svc}" == kafka && -s "$(svc_dir kafka)/kafka.out" ]]; then
            printf -- '---- last 20 lines of %s (JVM stdout/stderr) ----\n' "$(svc_dir kafka)/kafka.out"
            tail -n 20 "$(svc_dir kafka)/kafka.out"
        fi
        printf -- '----\n'
        pid=$(svc_pid "${svc}" || true)
        owner=$(port_owner "${port}")
        if [[ -n "${owner}" && ( -z "${pid}" || "${owner}" != *"pid=${pid},"* ) ]]; then
            printf '[stack]        port %s is held by another process: %s\n' "${port}" "${owner}"
        fi
    } >&2
    exit 1
}

# wait_ready SVC: poll until the service answers, its process dies, or the timeout passes.
wait_ready() {
    local svc=$1 timeout start pid="" pidfile
    timeout=$(svc_timeout "${svc}")
    pidfile=$(svc_pidfile "${svc}")
    start=${SECONDS}
    while true; do
        if pid=$(svc_pid "${svc}"); then
            if svc_check "${svc}"; then
                ap_log "${svc}: ready on ${HOST}:$(svc_port "${svc}") (pid ${pid}, $((SECONDS - start)) s)"
                return 0
            fi
        elif spawned_pid_died "${pidfile}" || { ((SECONDS - start >= 5)) && [[ ! -s "${pidfile}" ]]; }; then
            # The pid file is written right after the spawn, so a missing or dead pid means it
            # exited. A live pid whose command line is not the service's yet is still on its way
            # through `exec` (slow on a loaded machine): keep waiting.
            rm -f "${pidfile}"
            fail_service "${svc}" "exited during startup"
        fi
        if ((SECONDS - start >= timeout)); then
            fail_service "${svc}" "did not answer within ${timeout} s (process ${pid:-?} left running; 'scripts/stack.sh down ${svc}' stops it)"
        fi
        sleep 0.5
    done
}

# ---- commands ----------------------------------------------------------------------------------

cmd_up() {
    local svc pid pidfile backend
    local -a waiting=()
    for svc in "$@"; do
        pidfile=$(svc_pidfile "${svc}")
        if [[ "${svc}" == mongo && "${STORE_BACKEND}" == postgresql && " ${waiting[*]} " == *" postgres "* ]]; then
            # FerretDB needs its database answering before it can serve a query.
            wait_ready postgres
            waiting=("${waiting[@]/postgres/}")
        fi
        if pid=$(svc_pid "${svc}"); then
            backend=""
            [[ "${svc}" == mongo ]] && backend=$(mongo_backend "${pid}")
            if [[ -n "${backend}" && "${backend}" != "${STORE_BACKEND}" ]]; then
                ap_die "mongo: FerretDB (pid ${pid}) runs on the ${backend} backend, not on ${STORE_BACKEND} (AP_STORE_BACKEND); 'scripts/stack.sh down mongo' and up again switch it (each backend keeps its own data)"
            fi
            if svc_check "${svc}"; then
                ap_log "${svc}: already running on ${HOST}:$(svc_port "${svc}") (pid ${pid})"
            else
                ap_log "${svc}: pid ${pid} is running but not answering yet; waiting for it"
                waiting+=("${svc}")
            fi
            continue
        fi
        if [[ -f "${pidfile}" ]]; then
            ap_log "${svc}: pid file ${pidfile} points to a dead process; restarting"
            rm -f "${pidfile}"
        fi
        "prepare_${svc}"
        if svc_check "${svc}"; then
            ap_log "WARNING: ${svc}: something not started from ${STACK_DIR} already answers on ${HOST}:$(svc_port "${svc}"); leaving it alone"
            continue
        fi
        ap_log "${svc}: starting on ${HOST}:$(svc_port "${svc}") (log: $(svc_log "${svc}"))"
        "start_${svc}"
        waiting+=("${svc}")
    done
    for svc in "${waiting[@]}"; do
        [[ -n "${svc}" ]] && wait_ready "${svc}"
    done
    return 0
}

svc_stop() {
    local svc=$1 pid pidfile grace signal
    pidfile=$(svc_pidfile "${svc}")
    if ! pid=$(svc_pid "${svc}"); then
        if [[ -f "${pidfile}" ]]; then
            ap_log "${svc}: not running (removing stale pid file)"
        else
            ap_log "${svc}: not running"
        fi
        rm -f "${pidfile}"
        return 0
    fi
    grace=15
    [[ "${svc}" == kafka ]] && grace=60
    # PostgreSQL's SIGTERM is a "smart" shutdown that waits for every client to leave (FerretDB's
    # pool never does); SIGINT is its "fast" shutdown: clients cut off, a clean checkpoint.
    signal=TERM
    [[ "${svc}" == postgres ]] && signal=INT
    ap_log "${svc}: stopping pid ${pid}"
    kill "-${signal}" "${pid}" 2>/dev/null || true
    local deadline=$((SECONDS + grace))
    while pid_alive "${pid}" && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if pid_alive "${pid}"; then
        ap_log "${svc}: still running after ${grace} s; sending SIGKILL"
        kill -KILL "${pid}" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "${pidfile}"
    ap_log "${svc}: stopped"
}

cmd_down() {
    local svc
    for svc in "$@"; do
        svc_stop "${svc}"
    done
}

cmd_status() {
    local svc pid state
    for svc in "$@"; do
        if pid=$(svc_pid "${svc}"); then
            if svc_check "${svc}"; then state=running; else state="running (not answering)"; fi
        else
            pid=-
            state=stopped
            svc_check "${svc}" && state="stopped (port answered by a process not started here)"
        fi
        printf '%-8s port=%-6s %-9s pid=%-8s log=%s\n' "${svc}" "$(svc_port "${svc}")" "${state}" "${pid}" "$(svc_log "${svc}")"
    done
}

cmd_reset() {
    local svc
    cmd_down "$@"
    for svc in "$@"; do
        [[ -n "${STACK_DIR}" && "${STACK_DIR}" != / ]] || ap_die "refusing to delete under '${STACK_DIR}'"
        rm -rf "$(svc_dir "${svc}")"
        ap_log "${svc}: data deleted ($(svc_dir "${svc}"))"
    done
    # Nothing left but the lock file: remove the stack dir itself.
    if [[ -d "${STACK_DIR}" && -z "$(find "${STACK_DIR}" -mindepth 1 -maxdepth 1 ! -name .lock -print -quit)" ]]; then
        rm -f "${STACK_DIR}/.lock"
        rmdir "${STACK_DIR}" 2>/dev/null || true
    fi
}

main() {
    [[ $# -ge 1 ]] || usage
    local cmd=$1 svc
    shift
    if [[ "${1:-}" == --profile ]]; then
        case ${2:-} in
            cluster) exec "${AP_SCRIPTS_DIR}/cluster.sh" "${cmd}" "${@:3}" ;;
            dc) exec "${AP_SCRIPTS_DIR}/dc.sh" "${cmd}" "${@:3}" ;;
            single) shift 2 ;;
            *) ap_die "unknown profile '${2:-}' (known: single, the default; cluster; dc)" ;;
        esac
    fi
    local -a services=("$@")
    for svc in "${services[@]}"; do
        case ${svc} in
            redis | postgres | mongo | kafka) ;;
            *) ap_die "unknown service '${svc}' (known: redis postgres mongo kafka)" ;;
        esac
    done
    if [[ ${#services[@]} -eq 0 ]]; then
        services=("${ALL_SERVICES[@]}")
        # down and reset also take a PostgreSQL left by an earlier AP_STORE_BACKEND=postgresql run,
        # after the FerretDB that uses it; status shows it when it is there.
        if [[ "${STORE_BACKEND}" == sqlite && -d "$(svc_dir postgres)" ]]; then
            case ${cmd} in
                down | reset) services+=(postgres) ;;
                status) services=(redis postgres mongo kafka) ;;
            esac
        fi
    elif [[ "${cmd}" == up && "${STORE_BACKEND}" == postgresql && " ${services[*]} " == *" mongo "* && " ${services[*]} " != *" postgres "* ]]; then
        # FerretDB on PostgreSQL: its database comes up first.
        local -a with_postgres=()
        for svc in "${services[@]}"; do
            [[ "${svc}" == mongo ]] && with_postgres+=(postgres)
            with_postgres+=("${svc}")
        done
        services=("${with_postgres[@]}")
    fi
    if [[ "${cmd}" == down || "${cmd}" == reset ]]; then
        # FerretDB stops before the PostgreSQL under it.
        local -a ordered=()
        for svc in redis mongo kafka postgres; do
            [[ " ${services[*]} " == *" ${svc} "* ]] && ordered+=("${svc}")
        done
        services=("${ordered[@]}")
    fi
    case ${cmd} in
        up | down | reset)
            # One up/down/reset at a time per stack dir.
            mkdir -p "${STACK_DIR}"
            exec {STACK_LOCK_FD}>"${STACK_DIR}/.lock"
            flock "${STACK_LOCK_FD}"
            ;;
        status) ;;
        -h | --help | help) usage ;;
        *) usage ;;
    esac
    "cmd_${cmd}" "${services[@]}"
}

main "$@"
