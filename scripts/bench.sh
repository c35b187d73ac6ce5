#!/usr/bin/env bash
# `make bench`: the pipeline bench (benches/pipeline) against a private stack, release build.
#
# Usage: scripts/bench.sh [bench options...]
#   scripts/bench.sh                                  3 runs of every figure (about 6 minutes)
#   scripts/bench.sh --rounds 1 --duration 4          a quick look
#   scripts/bench.sh --phases single,drain            some figures only
#   scripts/bench.sh --subject before@/tmp/ap-old --subject current    before/after in one run
#   scripts/bench.sh --phases single --rounds 1 --perf produce         a perf recording of produce
#                                                     (then: scripts/flamegraph.sh <its .perf.data>)
#   scripts/bench.sh --phases reads --rounds 1        reads: one tenant seeded to 10^4, 10^5, 10^6
#                                                     documents, pages/by key/SSE resume p50 and p99
#                                                     at each size, the store's explain (about 15 min;
#                                                     --read-sizes 10000,100000 for a shorter run)
#   scripts/bench.sh --phases hot --subject spread1 --subject spread4+tenants.bench00.partition_spread=4
#                                                     one tenant's drain by 1 and 2 consumers, per spread
#   scripts/bench.sh --phases scaling                 ingest by 1 and 2 APIs, drain by 1 and 2 consumers,
#                                                     on a private three-broker cluster (RF 3), with the
#                                                     CPU per activity of every process
#   scripts/bench.sh --help                           every option
# The report goes to target/bench/<time>/report.{md,json} (and is printed).
#
# Environment:
#   AP_BENCH_STACK       private (default): a stack of its own on other ports, started here and
#                        reset afterwards; shared: the stack on the default ports (make stack-up),
#                        used with names unique to the run, cleaned up afterwards.
#   AP_BENCH_STACK_DIR   the private stack's data (default <repo>/.stack-bench, git-ignored)
#   AP_BENCH_KAFKA_PORT, AP_BENCH_MONGO_PORT, AP_BENCH_REDIS_PORT, AP_BENCH_POSTGRES_PORT
#                        the private stack's ports (default 19092 (+19093), 27117, 16479, 15433)
#   AP_STORE_BACKEND     the private stack's FerretDB backend, as for scripts/stack.sh
#   AP_BENCH_KEEP_STACK  1: leave the private stack running (and its data) for the next run
#   AP_BENCH_CLUSTER_DIR, AP_BENCH_CLUSTER_PORT_OFFSET
#                        with `--phases scaling`: the private cluster's data (default
#                        <repo>/.stack-bench-cluster) and the offset added to the cluster profile's
#                        ports (default 15700: brokers on 24892-24894, Redis Cluster on 22701-22706,
#                        its buses on 32701-32706: below the kernel's ephemeral range, 32768 and up,
#                        where any connection's local end may hold a port; at 30000, as before, a
#                        Redis node once failed to start with "Address already in use" while
#                        nothing listened there);
#                        its Kafka and Redis Cluster are started here and reset afterwards like the
#                        private stack (kept with AP_BENCH_KEEP_STACK=1); FerretDB is the private
#                        stack's
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "${AP_REPO_ROOT}"

for arg in "$@"; do
    if [[ "${arg}" == -h || "${arg}" == --help ]]; then
        sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
        exec cargo bench --locked --bench pipeline -- --help
    fi
done

mode=${AP_BENCH_STACK:-private}
args=()
case ${mode} in
    private)
        export AP_STACK_DIR=${AP_BENCH_STACK_DIR:-${AP_REPO_ROOT}/.stack-bench}
        export AP_STACK_KAFKA_PORT=${AP_BENCH_KAFKA_PORT:-19092}
        export AP_STACK_MONGO_PORT=${AP_BENCH_MONGO_PORT:-27117}
        export AP_STACK_REDIS_PORT=${AP_BENCH_REDIS_PORT:-16479}
        export AP_STACK_POSTGRES_PORT=${AP_BENCH_POSTGRES_PORT:-15433}
        stop_stack() {
            if [[ "${AP_BENCH_KEEP_STACK:-0}" == 1 ]]; then
                ap_log "bench: leaving the private stack running (${AP_STACK_DIR}); 'AP_STACK_DIR=${AP_STACK_DIR} scripts/stack.sh reset' removes it"
            else
                scripts/stack.sh reset
            fi
        }
        scripts/stack.sh up
        trap stop_stack EXIT
        args+=(--stack private
            --brokers "127.0.0.1:${AP_STACK_KAFKA_PORT}"
            --mongo-uri "mongodb://127.0.0.1:${AP_STACK_MONGO_PORT}"
            --redis-url "redis://127.0.0.1:${AP_STACK_REDIS_PORT}")
        # The stack's processes, for the per-phase CPU breakdown.
        for pair in kafka:kafka/kafka.pid ferretdb:mongo/ferretdb.pid redis:redis/redis.pid; do
            pid=$(head -n 1 "${AP_STACK_DIR}/${pair#*:}" 2>/dev/null | tr -dc '0-9' || true)
            [[ -n "${pid}" ]] && args+=(--watch "${pair%%:*}=${pid}")
        done
        ;;
    shared)
        scripts/stack.sh up
        args+=(--stack shared)
        ;;
    *) ap_die "AP_BENCH_STACK must be private or shared, not '${mode}'" ;;
esac

# The scaling phase runs on a Kafka cluster of its own (scripts/cluster.sh), never the shared one.
wants_cluster=0
previous=
for arg in "$@"; do
    case ${arg} in
        --phases=*scaling*) wants_cluster=1 ;;
        *scaling*) [[ "${previous}" == --phases ]] && wants_cluster=1 ;;
    esac
    previous=${arg}
done
if ((wants_cluster)); then
    export AP_CLUSTER_DIR=${AP_BENCH_CLUSTER_DIR:-${AP_REPO_ROOT}/.stack-bench-cluster}
    export AP_CLUSTER_PORT_OFFSET=${AP_BENCH_CLUSTER_PORT_OFFSET:-15700}
    stop_cluster() {
        if [[ "${AP_BENCH_KEEP_STACK:-0}" == 1 ]]; then
            ap_log "bench: leaving the private cluster running (${AP_CLUSTER_DIR})"
        else
            scripts/cluster.sh reset
        fi
    }
    stop_all() {
        stop_cluster
        if [[ "${mode}" == private ]]; then stop_stack; fi
    }
    trap stop_all EXIT
    scripts/cluster.sh up kafka
    scripts/cluster.sh up redis
    brokers=()
    for node in 1 2 3; do
        brokers+=("127.0.0.1:$((9191 + AP_CLUSTER_PORT_OFFSET + node))")
        pid=$(head -n 1 "${AP_CLUSTER_DIR}/kafka-${node}/kafka.pid" 2>/dev/null | tr -dc '0-9' || true)
        [[ -n "${pid}" ]] && args+=(--cluster-watch "kafka-${node}=${pid}")
    done
    args+=(--cluster-brokers "$(IFS=,; printf '%s' "${brokers[*]}")")
    seeds=()
    for port in 7001 7002 7003 7004 7005 7006; do
        port=$((port + AP_CLUSTER_PORT_OFFSET))
        ((port - AP_CLUSTER_PORT_OFFSET <= 7003)) && seeds+=("redis://127.0.0.1:${port}")
        pid=$(head -n 1 "${AP_CLUSTER_DIR}/redis-${port}/redis.pid" 2>/dev/null | tr -dc '0-9' || true)
        [[ -n "${pid}" ]] && args+=(--cluster-watch "redis-${port}=${pid}")
    done
    args+=(--cluster-redis-url "$(IFS=,; printf '%s' "${seeds[*]}")")
fi

ap_log "bench: load average now: $(cut -d' ' -f1-3 /proc/loadavg) (figures are noisy while other work runs)"
cargo bench --locked --bench pipeline -- "${args[@]}" "$@"
