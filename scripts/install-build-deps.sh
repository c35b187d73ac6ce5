#!/usr/bin/env bash
# Installs the Debian packages the Rust build needs, if any is missing: librdkafka is compiled from
# source by rdkafka's cmake-build feature (cmake, a C/C++ toolchain, curl and OpenSSL headers).
set -euo pipefail

# promtool, which the /metrics test runs (unpacked into the cache, not installed system-wide).
"$(dirname "${BASH_SOURCE[0]}")/install-promtool.sh"

exec "$(dirname "${BASH_SOURCE[0]}")/install-debian-packages.sh" "build dependencies" \
    cmake build-essential pkg-config libcurl4-openssl-dev libssl-dev zlib1g-dev
