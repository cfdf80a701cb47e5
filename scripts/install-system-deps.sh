#!/usr/bin/env bash
# Debian packages some integration tests drive for real (a Prometheus server scraping
# /metrics, headless Chromium rendering the load-test report, libb64 for Triton's
# perf_analyzer: see install-perf-analyzer.sh). Skipped when present; needs root (or
# passwordless sudo) otherwise, and the tests that need them say so.
set -uo pipefail
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
/sbin/ldconfig -p 2>/dev/null | grep -q libb64.so.0d || need+=(libb64-0d)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
if $SUDO true 2>/dev/null; then
  $SUDO apt-get update -qq >/dev/null && \
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || echo "install-system-deps: could not install ${need[*]}" >&2
else
  echo "install-system-deps: not root; missing ${need[*]}" >&2
fi
exit 0
