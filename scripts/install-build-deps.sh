#!/usr/bin/env bash
# Installs the Debian packages the Rust build needs, if any is missing: librdkafka is compiled from
# source by rdkafka's cmake-build feature (cmake, a C/C++ toolchain, curl and OpenSSL headers).
set -euo pipefail

# promtool, which the /metrics test runs (unpacked into the cache, not installed system-wide).
"$(dirname "${BASH_SOURCE[0]}")/install-promtool.sh"

packages=(cmake build-essential pkg-config libcurl4-openssl-dev libssl-dev zlib1g-dev)
missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
if ((${#missing[@]} == 0)); then
    exit 0
fi
echo "installing build dependencies: ${missing[*]}"
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
    sudo_cmd=(sudo)
fi
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
