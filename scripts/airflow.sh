#!/usr/bin/env bash
# Local Airflow for the embedded stack: the api-server (UI + REST API v2, on 127.0.0.1 only), the
# scheduler (LocalExecutor), the dag-processor and the triggerer, each a separate process run from
# the virtualenv, with its own process group, pid file and log under $AIRFLOW_HOME; started,
# awaited until healthy, and stopped by process group.
#
#   scripts/airflow.sh start | stop | status
#
# Environment (all optional):
#   STRATA_HOME                 <repo>/.strata     local state; AIRFLOW_HOME defaults to $STRATA_HOME/airflow
#   STRATA_AIRFLOW_PORT         8080               api-server port (UI at http://127.0.0.1:PORT)
#   STRATA_AIRFLOW_PARALLELISM  CPUs, at least 2   task processes the LocalExecutor runs at once
#   STRATA_AIRFLOW_SPARK_SLOTS  2                  slots of the `spark` pool (Spark-using tasks)
#   STRATA_AIRFLOW_TIMEOUT      300                seconds to wait for the UI and the scheduler
#
# Metadata in SQLite ($AIRFLOW_HOME/airflow.db, migrated on every start), LocalExecutor, the
# SimpleAuthManager with one user `admin` whose password this script generates into a 0600 file.
# Task logs stay local: no log server is started (it cannot bind to loopback only), the api-server
# reads the task log files directly. Nothing listens on anything but 127.0.0.1.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
[ -x "$venv/bin/airflow" ] || { echo "airflow.sh: $venv/bin/airflow missing; run make setup" >&2; exit 1; }

# The virtualenv first: Airflow starts task processes with `airflow` and `python` from PATH.
export PATH="$venv/bin:$PATH"
# This checkout's code, even when the venv's editable install points at another checkout.
export PYTHONPATH="$root/include:$root${PYTHONPATH:+:$PYTHONPATH}"
export STRATA_HOME=${STRATA_HOME:-$root/.strata}
export AIRFLOW_HOME=${AIRFLOW_HOME:-$STRATA_HOME/airflow}

port=${STRATA_AIRFLOW_PORT:-8080}
cpus=$(nproc 2>/dev/null || echo 2)
parallelism=${STRATA_AIRFLOW_PARALLELISM:-$((cpus > 2 ? cpus : 2))}
spark_slots=${STRATA_AIRFLOW_SPARK_SLOTS:-2}
timeout=${STRATA_AIRFLOW_TIMEOUT:-300}
url="http://127.0.0.1:$port"
run_dir="$AIRFLOW_HOME/run"
log_dir="$AIRFLOW_HOME/logs"
pwfile="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"

# Settings every component (and every task process they start) must share.
export AIRFLOW__CORE__DAGS_FOLDER="$root/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
# The Strata plugin: report pages under /strata in the api-server (the extra links open them).
export AIRFLOW__CORE__PLUGINS_FOLDER="$root/include/orchestration/plugins"
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__PARALLELISM=$parallelism
export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=False
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$pwfile"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="$url/execution/"
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT=$port
export AIRFLOW__API__BASE_URL=$url
export AIRFLOW__API__WORKERS=${AIRFLOW__API__WORKERS:-1}
# The scheduler's own health server would listen on 0.0.0.0; health comes from the api-server.
export AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK=False
# No telemetry leaves the machine: Airflow usage data, Cosmos (Scarf), dbt, GX.
export AIRFLOW__USAGE_DATA_COLLECTION__ENABLED=False
export AIRFLOW__COSMOS__ENABLE_TELEMETRY=False
export DO_NOT_TRACK=1 SCARF_ANALYTICS=false
export DBT_SEND_ANONYMOUS_USAGE_STATS=false GX_ANALYTICS_ENABLED=false
export SPARK_LOCAL_IP=127.0.0.1

components=(api-server scheduler dag-processor triggerer)

command_of() {
  case "$1" in
    api-server) echo "api-server --host 127.0.0.1 --port $port" ;;
    scheduler) echo "scheduler --skip-serve-logs" ;;
    dag-processor) echo "dag-processor" ;;
    triggerer) echo "triggerer --skip-serve-logs" ;;
  esac
}

pidfile() { echo "$run_dir/$1.pid"; }
# A component is running when its pid is alive and still an Airflow process (not a reused pid).
running() {
  local f; f=$(pidfile "$1")
  [ -f "$f" ] && ps -o args= -p "$(cat "$f")" 2>/dev/null | grep -q airflow
}
# The process group a pid file names still holds Airflow processes (the component or its tasks).
group_alive() { pgrep -g "$1" -f airflow >/dev/null; }

port_taken() {
  python - "$port" <<'EOF'
import socket, sys
with socket.socket() as s:
    s.settimeout(1)
    sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
EOF
}

# Exit 0 when the api-server answers /api/v2/monitor/health and every component reports healthy.
healthy() {
  python - "$url/api/v2/monitor/health" <<'EOF'
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        health = json.load(r)
except Exception:
    sys.exit(1)
parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
sys.exit(0 if all((health.get(p) or {}).get("status") == "healthy" for p in parts) else 1)
EOF
}

write_password_file() {
  if [ -s "$pwfile" ]; then
    chmod 600 "$pwfile"
    return
  fi
  # The format SimpleAuthManager reads: a JSON object of user name -> password.
  (umask 077 && python -c 'import json, secrets; print(json.dumps({"admin": secrets.token_urlsafe(18)}))' > "$pwfile")
}

banner() {
  echo "airflow: UI and REST API at $url (user admin, password in $pwfile)"
  echo "airflow: home $AIRFLOW_HOME, component logs in $log_dir/<component>.log; stop with make airflow-stop"
}

start_component() {
  local name=$1 log="$log_dir/$1.log"
  # setsid: each component leads its own process group, so stop() reaches its children too.
  # shellcheck disable=SC2046
  setsid airflow $(command_of "$name") >>"$log" 2>&1 </dev/null &
  echo $! >"$(pidfile "$name")"
  echo "airflow: started $name (pid $!, log $log)"
}

start() {
  mkdir -p "$run_dir" "$log_dir"
  local todo=() name
  for name in "${components[@]}"; do running "$name" || todo+=("$name"); done
  if [ ${#todo[@]} -eq 0 ]; then
    echo "airflow: already running"
    banner
    return
  fi
  if [[ " ${todo[*]} " == *" api-server "* ]] && port_taken; then
    echo "airflow.sh: 127.0.0.1:$port is in use by another program; set STRATA_AIRFLOW_PORT" >&2
    exit 1
  fi
  echo "airflow: migrating the metadata database ($AIRFLOW_HOME/airflow.db)"
  airflow db migrate >>"$log_dir/db-migrate.log" 2>&1 ||
    { echo "airflow.sh: airflow db migrate failed; see $log_dir/db-migrate.log" >&2; exit 1; }
  airflow pools set spark "$spark_slots" \
    "Spark-using tasks (one Spark driver each); STRATA_AIRFLOW_SPARK_SLOTS" >/dev/null
  echo "airflow: pool spark = $spark_slots slot(s), LocalExecutor parallelism $parallelism"
  write_password_file
  for name in "${todo[@]}"; do start_component "$name"; done

  local deadline=$((SECONDS + timeout))
  until healthy; do
    for name in "${components[@]}"; do
      if ! running "$name"; then
        echo "airflow.sh: $name exited during start-up; last lines of $log_dir/$name.log:" >&2
        tail -n 20 "$log_dir/$name.log" >&2 || true
        stop >&2
        exit 1
      fi
    done
    if [ $SECONDS -ge $deadline ]; then
      echo "airflow.sh: not healthy within ${timeout}s; see the logs in $log_dir" >&2
      stop >&2
      exit 1
    fi
    sleep 2
  done
  echo "airflow: ready (api-server, scheduler, dag-processor and triggerer healthy)"
  banner
}

stop() {
  local name pid pids=() stopped=()
  for name in "${components[@]}"; do
    [ -f "$(pidfile "$name")" ] || continue
    pid=$(cat "$(pidfile "$name")")
    # The component's process group (its pid): the component and every task process it started,
    # also when the component itself already exited.
    if group_alive "$pid"; then
      kill -TERM -- "-$pid" 2>/dev/null || true
      pids+=("$pid")
      stopped+=("$name")
    fi
    rm -f "$(pidfile "$name")"
  done
  if [ ${#pids[@]} -eq 0 ]; then
    echo "airflow: not running"
    return
  fi
  # Up to 30 s for a clean shutdown of each process group, then SIGKILL what is left of it.
  local group left
  for _ in $(seq 1 60); do
    left=0
    for group in "${pids[@]}"; do pgrep -g "$group" >/dev/null && left=1; done
    [ $left -eq 0 ] && break
    sleep 0.5
  done
  for group in "${pids[@]}"; do
    if pgrep -g "$group" >/dev/null; then
      kill -KILL -- "-$group" 2>/dev/null || true
      echo "airflow: killed process group $group"
    fi
  done
  echo "airflow: stopped ${stopped[*]}"
}

status() {
  local name down=0
  for name in "${components[@]}"; do
    if running "$name"; then
      echo "airflow: $name running (pid $(cat "$(pidfile "$name")"))"
    else
      echo "airflow: $name not running"
      down=1
    fi
  done
  if [ $down -eq 0 ]; then
    if healthy; then echo "airflow: healthy"; else echo "airflow: running, not (yet) healthy"; fi
    banner
  else
    exit 3
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
