#!/usr/bin/env bash
# Installs Debian's Chromium and its WebDriver (chromedriver), if missing: the console's browser tests
# (tests/integration/console_browser.rs) drive a headless Chromium over WebDriver.
set -euo pipefail

exec "$(dirname "${BASH_SOURCE[0]}")/install-debian-packages.sh" "the browser tests' Chromium" \
    chromium chromium-driver
