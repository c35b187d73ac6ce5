#!/usr/bin/env bash
# Installs Toxiproxy's server (the TCP fault proxy `make faults` puts between the roles and Kafka,
# MongoDB and Redis) into ${AP_CACHE_DIR}/bin/toxiproxy-server when it is absent, with `go install`
# from the Go module proxy, and prints its path.
#
# Usage: scripts/install-toxiproxy.sh
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

AP_TOXIPROXY_MODULE=github.com/Shopify/toxiproxy/v2
AP_TOXIPROXY_VERSION=v2.12.0
AP_TOXIPROXY_BIN="${AP_CACHE_DIR}/bin/toxiproxy-server"

toxiproxy_ok() {
    [[ -x "${AP_TOXIPROXY_BIN}" ]] &&
        "${AP_TOXIPROXY_BIN}" -version 2>&1 | grep -qF "${AP_TOXIPROXY_VERSION}"
}

if ! toxiproxy_ok; then
    command -v go >/dev/null 2>&1 || ap_die "toxiproxy: must be built but 'go' is not installed"
    ap_lock toxiproxy
    if ! toxiproxy_ok; then
        # The module's server command lives in cmd/server, so `go install` names the binary `server`:
        # build into a scratch GOBIN, then move it to its real name. The version is stamped in with
        # -X (the module's own Version says "git").
        tmp="${AP_CACHE_DIR}/build/toxiproxy.$$"
        log="${AP_CACHE_DIR}/build/toxiproxy-build.log"
        mkdir -p "${tmp}" "${AP_CACHE_DIR}/bin"
        ap_log "building Toxiproxy ${AP_TOXIPROXY_VERSION} into ${AP_TOXIPROXY_BIN} (first time: about a minute; log: ${log})"
        if ! (cd / && GOBIN="${tmp}" GOFLAGS=-buildvcs=false go install \
            -ldflags "-X ${AP_TOXIPROXY_MODULE}.Version=${AP_TOXIPROXY_VERSION}" \
            "${AP_TOXIPROXY_MODULE}/cmd/server@${AP_TOXIPROXY_VERSION}") >"${log}" 2>&1 </dev/null; then
            tail -n 30 "${log}" >&2
            rm -rf "${tmp}"
            ap_die "toxiproxy: go install failed (full log: ${log})"
        fi
        mv -f "${tmp}/server" "${AP_TOXIPROXY_BIN}"
        rm -rf "${tmp}"
        toxiproxy_ok || ap_die "toxiproxy: the binary built at ${AP_TOXIPROXY_BIN} does not report ${AP_TOXIPROXY_VERSION}"
    fi
    ap_unlock
fi
printf '%s\n' "${AP_TOXIPROXY_BIN}"
