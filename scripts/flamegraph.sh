#!/usr/bin/env bash
# Turns a perf recording of a role (from `make bench BENCH_ARGS="--perf produce"`, next to the role's
# log under target/bench/<time>/) into a flame graph and a plain-text list of where the CPU went.
#
# Usage: scripts/flamegraph.sh PERF_DATA
#   writes PERF_DATA's name with .svg (the flame graph, inferno) and .top.txt (the 40 hottest
#   functions by self time, then by time including callees, perf report).
#
# perf comes from Debian (linux-perf); inferno (crates.io) is installed once under ${AP_CACHE_DIR}.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

INFERNO_VERSION=0.12.2
INFERNO_ROOT="${AP_CACHE_DIR}/inferno-${INFERNO_VERSION}"

log() { printf '[flamegraph] %s\n' "$*" >&2; }

[[ $# -eq 1 ]] || ap_die "usage: scripts/flamegraph.sh PERF_DATA"
data=$1
[[ -s ${data} ]] || ap_die "${data}: no such perf recording (or empty)"

ap_apt_install perf linux-perf
if ! [[ -x "${INFERNO_ROOT}/bin/inferno-flamegraph" ]]; then
    ap_lock inferno
    if ! [[ -x "${INFERNO_ROOT}/bin/inferno-flamegraph" ]]; then
        log "installing inferno ${INFERNO_VERSION} into ${INFERNO_ROOT} (once)"
        cargo install --quiet --locked --version "${INFERNO_VERSION}" --root "${INFERNO_ROOT}" inferno \
            || ap_die "cargo install inferno failed"
    fi
    ap_unlock
fi

base=${data%.data}
base=${base%.perf}
svg="${base}.svg"
top="${base}.top.txt"

perf script --input "${data}" 2>/dev/null \
    | "${INFERNO_ROOT}/bin/inferno-collapse-perf" \
    | "${INFERNO_ROOT}/bin/inferno-flamegraph" --title "$(basename "${base}")" >"${svg}"
{
    echo "# ${data}: self time (samples in the function itself)"
    perf report --input "${data}" --stdio --no-children --sort symbol --percent-limit 0.5 2>/dev/null \
        | grep -E '^ +[0-9]' | sed -E 's/ {2,}/  /g; s/ +- +- *$//' | head -40
    echo
    echo "# ${data}: time including callees"
    perf report --input "${data}" --stdio --children --sort symbol --percent-limit 2 -g none 2>/dev/null \
        | grep -E '^ +[0-9]' | sed -E 's/ {2,}/  /g; s/ +- +- *$//' | head -40
} >"${top}"
log "flame graph: ${svg}"
log "hottest functions: ${top}"
