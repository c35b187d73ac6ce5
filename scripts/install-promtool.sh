#!/usr/bin/env bash
# Puts `promtool` (Prometheus' linter, used by the /metrics test) in ${AP_CACHE_DIR}/bin, unless it is
# already on PATH or there. It comes from Debian's `prometheus` package, unpacked rather than
# installed: installing the package would also set up and start a Prometheus server, which a build
# machine does not want. Only promtool is kept.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

target="${AP_CACHE_DIR}/bin/promtool"
if command -v promtool >/dev/null 2>&1 || [[ -x "${target}" ]]; then
    exit 0
fi
command -v apt-get >/dev/null 2>&1 || ap_die "promtool is missing and there is no apt-get: put promtool on PATH"
ap_lock promtool
if [[ ! -x "${target}" ]]; then
    ap_log "promtool is missing: unpacking it from Debian's prometheus package"
    work=$(mktemp -d)
    trap 'rm -rf "${work}"' EXIT
    # apt-get download runs as the _apt user where it can: give it a directory it may write.
    chmod 0777 "${work}"
    sudo=()
    if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1; then
        sudo=(sudo -n)
    fi
    if ! (cd "${work}" && apt-get download -qq prometheus >&2); then
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || ap_die "apt-get update failed"
        (cd "${work}" && apt-get download -qq prometheus >&2) || ap_die "apt-get download prometheus failed"
    fi
    mkdir -p "${AP_CACHE_DIR}/bin"
    dpkg-deb --fsys-tarfile "${work}"/prometheus_*.deb | tar -xO ./usr/bin/promtool >"${target}.partial"
    chmod +x "${target}.partial"
    mv "${target}.partial" "${target}"
    "${target}" --version >&2
fi
ap_unlock
