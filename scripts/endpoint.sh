#!/usr/bin/env bash
# The reference device-register endpoint on 127.0.0.1: `strata serve` (nginx on the port, bounding
# slow and numerous clients, in front of uvicorn on a unix socket; see strata_apps.endpoint_server),
# started in the background in its own process group, ready once THAT process holds the port and
# its app answers (another process on the port is an error, never "ready"), stopped by its group.
#
#   scripts/endpoint.sh start | stop | status
#
# Environment: STRATA_HOME (default <repo>/.strata), STRATA_ENDPOINT_PORT (default 8090),
# STRATA_LOOKUP_PREFIX (Redis key prefix, default strata:lk), STRATA_ENDPOINT_HEADER_TIMEOUT,
# _BODY_TIMEOUT, _KEEPALIVE_TIMEOUT, _MAX_CONNECTIONS, _MAX_REQUESTS, _APP_TIMEOUT (docs/lookup.md),
# plus the usual STRATA_REDIS_* settings.
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
ready() {  # the server started as $1 holds the port and its app answers (waits up to $2 s)
  "$python" -m strata_apps.endpoint_server ready --port "$port" --pid "$1" --home "$home" --timeout "$2"
}

start() {
  mkdir -p "$dir"
  if running; then echo "endpoint: already running on 127.0.0.1:$port (pid $(cat "$pidfile"))"; return; fi
  # setsid: the server, nginx and its worker form one process group, stopped together.
  STRATA_HOME="$home" setsid nohup "$python" -m strata_apps.cli serve --host 127.0.0.1 --port "$port" \
    >"$logfile" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$pidfile"
  local why
  if why=$(ready "$pid" 15 2>&1); then
    echo "endpoint: ready on http://127.0.0.1:$port (pid $pid, nginx in front of uvicorn, log $logfile)"
    return
  fi
  echo "endpoint.sh: not started on 127.0.0.1:$port: $why; see $logfile" >&2
  tail -5 "$logfile" >&2 || true
  kill -- "-$pid" 2>/dev/null || true  # whatever of ours is left
  rm -f "$pidfile"
  exit 1
}

stop() {
  if ! running; then echo "endpoint: not running"; rm -f "$pidfile"; return; fi
  pid=$(cat "$pidfile")
  kill -- "-$pid" 2>/dev/null || kill "$pid"
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; echo "endpoint: stopped (pid $pid)"; return; }
    sleep 0.1
  done
  kill -9 -- "-$pid" 2>/dev/null || true
  rm -f "$pidfile"
  echo "endpoint: killed (pid $pid)"
}

status() {
  if running && ready "$(cat "$pidfile")" 1 >/dev/null 2>&1; then
    echo "endpoint: running on http://127.0.0.1:$port (pid $(cat "$pidfile"))"
  elif running; then echo "endpoint: pid $(cat "$pidfile") alive but not serving port $port"; exit 3
  else echo "endpoint: not running"; exit 3; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
