#!/usr/bin/env bash
# System packages the embedded stack needs, installed only when missing (Debian/Ubuntu, apt).
# Java 17 and Maven are expected on the machine (see README); redis-server and chromium are
# installed here.
set -euo pipefail

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
# Headless browser for the live Airflow UI test (tests/live): Debian's chromium and its driver.
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
# nginx fronts the reference endpoint (header/body timeouts, connection limits: docs/lookup.md).
# The endpoint runs its own nginx with its own config; the distribution's service is not needed.
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)

if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "system packages: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
if [[ " ${missing[*]} " == *" nginx "* ]] && command -v systemctl >/dev/null \
  && systemctl is-active --quiet nginx 2>/dev/null; then
  # Debian starts the default site on port 80 after installing: stop and disable it again.
  $sudo systemctl disable --now nginx || true
fi
