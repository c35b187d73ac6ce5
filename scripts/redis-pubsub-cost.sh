#!/usr/bin/env bash
# The Redis CPU one live event costs on the local Redis Cluster (`make redis-cluster-up`), classic
# PUBLISH against sharded SPUBLISH, side by side: the measurement behind the live fan-out's choice of
# sharded Pub/Sub on a cluster (README, "Redis Cluster"). Sends N events of ~500 bytes (an activity's
# JSON) with redis-benchmark to the master that owns a tenant channel's slot, no subscribers, and
# reads the CPU (used_cpu_sys + used_cpu_user) of all six nodes before and after.
#
# Usage: scripts/redis-pubsub-cost.sh [rounds]     (N=200000 by default)
set -euo pipefail

ROUNDS=${1:-3}
N=${N:-200000}
PORTS=(7001 7002 7003 7004 7005 7006)
CHANNEL='activities:{acme}'

cluster_cpu() {
    local port
    for port in "${PORTS[@]}"; do redis-cli -p "${port}" info cpu; done |
        awk -F: '/^used_cpu_(sys|user):/ { total += $2 } END { printf "%.6f", total }'
}

owner=
for port in "${PORTS[@]}"; do
    # Only the master that owns the channel's slot takes SPUBLISH; the others answer MOVED.
    if [[ "$(redis-cli -p "${port}" role | head -n 1)" == master ]] &&
        ! redis-cli -p "${port}" spublish "${CHANNEL}" probe | grep -q MOVED; then
        owner=${port}
    fi
done
[[ -n "${owner}" ]] || { echo "no master owns ${CHANNEL}'s slot: is the cluster up?" >&2; exit 1; }
payload=$(printf 'x%.0s' $(seq 500))
echo "channel ${CHANNEL} on the master at port ${owner}; ${N} events per run"
for round in $(seq "${ROUNDS}"); do
    for command in PUBLISH SPUBLISH; do
        before=$(cluster_cpu)
        redis-benchmark -p "${owner}" -n "${N}" -c 8 -P 16 -q "${command}" "${CHANNEL}" "${payload}" >/dev/null
        sleep 1 # the replicas and the cluster bus finish their share
        after=$(cluster_cpu)
        awk -v round="${round}" -v command="${command}" -v before="${before}" -v after="${after}" -v n="${N}" \
            'BEGIN { printf "round %s %-8s %6.2f us of Redis CPU per event (all nodes)\n", round, command, (after - before) * 1e6 / n }'
    done
done
