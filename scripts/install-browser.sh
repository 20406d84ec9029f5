#!/usr/bin/env bash
# Installs Debian's Chromium (package chromium, /usr/bin/chromium) for the test that loads every
# report in a headless browser (crates/seli-cli/tests/report.rs, reports_read_well_in_a_browser;
# the page check is scripts/figure-check.js). Does nothing when Chromium is already there.
# About a minute and 150 MB of packages from the Debian mirrors.
set -euo pipefail
if [[ -x /usr/bin/chromium || -n "${SELI_CHROMIUM:-}" ]]; then
    exit 0
fi
sudo=()
if [[ "$(id -u)" != 0 ]]; then
    sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
if ! "${sudo[@]}" apt-get install -y -q chromium >/dev/null; then
    "${sudo[@]}" apt-get update -q >/dev/null
    "${sudo[@]}" apt-get install -y -q chromium >/dev/null
fi
/usr/bin/chromium --version
