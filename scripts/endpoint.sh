#!/usr/bin/env bash
# The reference device-register endpoint (strata.endpoint, FastAPI on uvicorn) on 127.0.0.1:
# started in the background, awaited until /healthz answers, stopped by its pid.
#
#   scripts/endpoint.sh start | stop | status
#
# Environment: STRATA_HOME (default <repo>/.strata), STRATA_ENDPOINT_PORT (default 8090),
# STRATA_LOOKUP_PREFIX (Redis key prefix, default strata:lk), plus the usual STRATA_REDIS_* settings.
# Exposure LOG events land in $STRATA_HOME/landing/exposures/date=YYYY-MM-DD/*.jsonl.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
home=${STRATA_HOME:-$root/.strata}
port=${STRATA_ENDPOINT_PORT:-8090}
python=${STRATA_PYTHON:-$root/.venv/bin/python}
dir="$home/endpoint"
pidfile="$dir/endpoint-$port.pid"
logfile="$dir/endpoint-$port.log"

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
healthy() {
  if command -v curl >/dev/null; then curl -fsS --max-time 1 "http://127.0.0.1:$port/healthz" >/dev/null 2>&1
  else "$python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/healthz', timeout=1)" 2>/dev/null
  fi
}

start() {
  mkdir -p "$dir"
  if running; then echo "endpoint: already running on 127.0.0.1:$port (pid $(cat "$pidfile"))"; return; fi
  # uvloop + httptools (C event loop and HTTP parser) when installed, as uvicorn's "auto" would
  # pick them; named here so the choice is explicit and logged. No access log (a write per request).
  local fast=()
  if "$python" -c "import uvloop, httptools" 2>/dev/null; then fast=(--loop uvloop --http httptools); fi
  STRATA_HOME="$home" nohup "$python" -m uvicorn strata.endpoint:create_app --factory \
    --host 127.0.0.1 --port "$port" "${fast[@]}" \
    --no-access-log --no-server-header --log-level warning >"$logfile" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 150); do
    if healthy; then
      echo "endpoint: ready on http://127.0.0.1:$port (pid $(cat "$pidfile"), ${fast[*]:-default loop}, log $logfile)"
      return
    fi
    running || { echo "endpoint.sh: the server exited; see $logfile" >&2; tail -5 "$logfile" >&2; rm -f "$pidfile"; exit 1; }
    sleep 0.1
  done
  echo "endpoint.sh: no answer on 127.0.0.1:$port within 15 s; see $logfile" >&2
  exit 1
}

stop() {
  if ! running; then echo "endpoint: not running"; rm -f "$pidfile"; return; fi
  pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; echo "endpoint: stopped (pid $pid)"; return; }
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  echo "endpoint: killed (pid $pid)"
}

status() {
  if running && healthy; then echo "endpoint: running on http://127.0.0.1:$port (pid $(cat "$pidfile"))"
  elif running; then echo "endpoint: pid $(cat "$pidfile") alive but /healthz does not answer"; exit 3
  else echo "endpoint: not running"; exit 3; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
