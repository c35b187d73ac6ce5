#!/usr/bin/env bash
# Installs the Debian packages named after WHAT that are not installed yet (apt-get update first,
# only when something is missing; sudo when not root).
#
# Usage: scripts/install-debian-packages.sh WHAT PACKAGE...   e.g. "build dependencies" cmake ...
set -euo pipefail

what=$1
shift
missing=()
for package in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
if ((${#missing[@]} == 0)); then
    exit 0
fi
echo "installing ${what}: ${missing[*]}"
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
    sudo_cmd=(sudo)
fi
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
