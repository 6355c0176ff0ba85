#!/usr/bin/env bash
# Local Redis lifecycle for the embedded stack: a redis-server on 127.0.0.1, on the project port,
# with its own directory and a generated password; started, awaited, and stopped by its pid.
#
#   scripts/redis.sh start | stop | status
#
# Persistence: append-only file (AOF, fsync every second, RDB preamble), so a restarted server comes
# back with the live lookup version; see docs/lookup.md "Persistence" for the trade-off with RDB.
# Data files are named after the port (appendonlydir-<port>, dump-<port>.rdb), so servers on other
# ports may share one STRATA_HOME.
#
# Least privilege: besides the default (admin) user, two ACL users with generated passwords in
# 0600 files (never on a command line; the config reaches redis-server on stdin, with SHA-256
# digests of the passwords only): strata-writer (the loader: read, write, scripts; nothing
# @dangerous such as FLUSHALL, CONFIG, SHUTDOWN, REPLICAOF, ACL, INFO) and strata-reader (readers
# and the endpoint: read commands on read-only keys, EVALSHA_RO and SCRIPT LOAD). Needs Redis 7.0.
#
# Environment: STRATA_HOME (default <repo>/.strata), STRATA_REDIS_PORT (default 6390),
# STRATA_REDIS_EXTRA_CONF (optional: a redis.conf file included last, e.g. maxmemory settings).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
home=${STRATA_HOME:-$root/.strata}
port=${STRATA_REDIS_PORT:-6390}
dir="$home/redis"
pidfile="$dir/redis-$port.pid"
pwfile="$dir/password"
writerfile="$dir/writer.password"
readerfile="$dir/reader.password"

# A random password into a file only its owner can read (created once, kept across restarts).
secret() { [ -s "$1" ] || ( umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$1" ); }
digest() { printf '%s' "$(cat "$1")" | sha256sum | cut -d' ' -f1; }

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

start() {
  command -v redis-server >/dev/null || { echo "redis.sh: redis-server not installed (make setup installs it)" >&2; exit 1; }
  mkdir -p "$dir"
  if running; then echo "redis: already running on 127.0.0.1:$port (pid $(cat "$pidfile"))"; return; fi
  secret "$pwfile"; secret "$writerfile"; secret "$readerfile"
  # The password goes in through a config file on stdin, never on the command line (ps shows it).
  {
    echo "bind 127.0.0.1"
    echo "port $port"
    echo "protected-mode yes"
    echo "dir $dir"
    echo "pidfile $pidfile"
    echo "logfile $dir/redis-$port.log"
    echo "daemonize yes"
    echo "save \"\""
    echo "appendonly yes"
    echo "appendfsync everysec"
    echo "aof-use-rdb-preamble yes"
    echo "appenddirname appendonlydir-$port"
    echo "appendfilename appendonly-$port.aof"
    echo "dbfilename dump-$port.rdb"
    echo "requirepass $(cat "$pwfile")"
    echo "user strata-writer reset on #$(digest "$writerfile") ~* resetchannels -@all +@read +@write +@scripting +@transaction +@connection -@dangerous -function -script|flush -script|kill -script|debug"
    echo "user strata-reader reset on #$(digest "$readerfile") %R~* resetchannels -@all +@read +@connection +evalsha_ro +script|load -@dangerous"
    if [ -n "${STRATA_REDIS_EXTRA_CONF:-}" ]; then echo "include $STRATA_REDIS_EXTRA_CONF"; fi
  } | redis-server -
  # A server replaying a large AOF answers LOADING until it is done: wait for PONG, up to
  # STRATA_REDIS_START_TIMEOUT seconds (default 60).
  local limit=$(( ${STRATA_REDIS_START_TIMEOUT:-60} * 10 ))
  for _ in $(seq 1 "$limit"); do
    if REDISCLI_AUTH=$(cat "$pwfile") redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
      echo "redis: ready on 127.0.0.1:$port (pid $(cat "$pidfile"), data in $dir)"; return
    fi
    sleep 0.1
  done
  echo "redis.sh: redis-server did not answer PONG on 127.0.0.1:$port within $(( limit / 10 )) s; see $dir/redis-$port.log" >&2
  exit 1
}

stop() {
  if ! running; then echo "redis: not running"; rm -f "$pidfile"; return; fi
  pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || { echo "redis: stopped (pid $pid)"; return; }; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  echo "redis: killed (pid $pid)"
}

status() { if running; then echo "redis: running on 127.0.0.1:$port (pid $(cat "$pidfile"))"; else echo "redis: not running"; exit 3; fi; }

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
