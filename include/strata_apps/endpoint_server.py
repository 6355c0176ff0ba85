"""The device-register endpoint as deployed: nginx on the port, uvicorn behind it on a socket.

uvicorn alone bounds idle keep-alive connections and concurrent requests, but not how long a
client may take to send its headers or its body, nor how many connections it may hold: a thousand
half-sent requests stay open for ever. nginx in front is what production teams run for that
(uvicorn's own deployment guide puts it there): it reads every request completely before the
app sees it, with a total deadline on the headers (``client_header_timeout``), a deadline
between body reads (``client_body_timeout``), a body size limit, a cap on the connections it
holds (``worker_connections``) and on the requests in flight (``limit_conn``), all in C and
event-driven, so slow clients cost a few hundred bytes each and never a Python coroutine.
docs/lookup.md has the comparison with hypercorn, granian and gunicorn.

Every answer nginx itself gives is one a client can act on, in seed 004's envelope: 400 for a
request it cannot parse (a NUL in the path, say), 413 for a body over 16 KiB, and 503 with
``Retry-After`` when the request limit is reached or the app is down or too slow (nginx's own
500/502/504 are all mapped to that 503). The app's answers pass through unchanged. (The error
pages are internal URI locations, not named ones: nginx cannot redirect a request whose URI it
could not parse to a named location, and answers 500 instead.)

``serve()`` (what ``strata serve`` and ``scripts/endpoint.sh start`` run) starts nginx as a child
process and uvicorn in-process on ``<STRATA_HOME>/endpoint/serve-<port>/app.sock``; it stops both
on SIGTERM/SIGINT, and exits 1 when nginx cannot start (the port is taken) or dies. nginx is
found as ``STRATA_NGINX``, on ``PATH`` or in ``/usr/sbin`` (``scripts/install-system.sh``
installs Debian's package).

``python -m strata_apps.endpoint_server ready --port P --pid PID --home H`` waits until the server
started as PID (a process and its children) holds the listening socket and its app answers, so a
script never mistakes another process on the port for its own server.

Usage:
    >>> limits = Limits(header_timeout_s=2)
    >>> conf = nginx_conf(Path("/run/x"), "127.0.0.1", 8090, Path("/run/x/app.sock"), limits)
    >>> "client_header_timeout 2s;" in conf and "listen 127.0.0.1:8090" in conf
    True
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

#: Largest body nginx passes on (strata_apps.endpoint.MAX_BODY_BYTES; not imported: no FastAPI).
MAX_BODY_BYTES = 16 * 1024
RETRY_AFTER_S = 1
#: Seconds uvicorn keeps an idle upstream connection: longer than nginx's (60 s), so nginx always
#: closes first and never sends a request on a connection uvicorn is closing (a 502 on a POST).
APP_KEEPALIVE_S = 75


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a client may take, each from ``STRATA_ENDPOINT_<NAME>`` when set.

    header_timeout_s: total time to send the request line and headers (then closed).
    body_timeout_s: time between two reads of the body (with 16 KiB at most).
    keepalive_timeout_s: an idle keep-alive connection is closed after this.
    max_connections: connections nginx holds at once, clients and upstream together
        (``worker_connections``); past it nginx closes new connections at once.
    max_requests: requests in flight (headers read, not yet answered); past it a 503 with
        ``Retry-After``.
    app_timeout_s: time the app has to answer; past it a 503 with ``Retry-After``.
    """

    header_timeout_s: float = dataclasses.field(
        default_factory=lambda: _env_float("STRATA_ENDPOINT_HEADER_TIMEOUT", 5)
    )
    body_timeout_s: float = dataclasses.field(
        default_factory=lambda: _env_float("STRATA_ENDPOINT_BODY_TIMEOUT", 5)
    )
    keepalive_timeout_s: float = dataclasses.field(
        default_factory=lambda: _env_float("STRATA_ENDPOINT_KEEPALIVE_TIMEOUT", 5)
    )
    max_connections: int = dataclasses.field(
        default_factory=lambda: _env_int("STRATA_ENDPOINT_MAX_CONNECTIONS", 1024)
    )
    max_requests: int = dataclasses.field(
        default_factory=lambda: _env_int("STRATA_ENDPOINT_MAX_REQUESTS", 256)
    )
    app_timeout_s: float = dataclasses.field(
        default_factory=lambda: _env_float("STRATA_ENDPOINT_APP_TIMEOUT", 5)
    )


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms" if seconds % 1 else f"{int(seconds)}s"


def _envelope_json(status: str, err: str, message: str) -> str:
    """Seed 004's error envelope as an nginx string (its variables give ts and resmsgid)."""
    code = "CLIENT_ERROR" if status.startswith("4") else "SERVER_ERROR"
    return (
        '{"id":"api.device.register","ver":"1.0","ts":"$time_iso8601","params":'
        '{"resmsgid":"$request_id","msgid":null,"status":"failed","client_key":null,'
        f'"err":"{err}","errmsg":"{message}"}},"responseCode":"{code}","result":{{}}}}'
    )


def nginx_conf(run_dir: Path, host: str, port: int, app_socket: Path, limits: Limits) -> str:
    """The nginx configuration: one worker, the limits, the app as a keep-alive upstream."""
    import grp
    import pwd

    user = ""
    if os.geteuid() == 0:  # workers would run as nobody and could not reach the app's socket
        user = f"user {pwd.getpwuid(0).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
    tmp = run_dir / "tmp"
    retry = f"add_header Retry-After {RETRY_AFTER_S} always;"
    too_large = _envelope_json("413", "BODY_TOO_LARGE", f"body exceeds {MAX_BODY_BYTES} bytes")
    bad = _envelope_json("400", "INVALID_REQUEST", "malformed HTTP request")
    busy = _envelope_json("503", "OVERLOADED", "too many requests in flight; retry")
    down = _envelope_json("503", "UNAVAILABLE", "the app is down or too slow; retry")
    return f"""# written by strata_apps.endpoint_server for {host}:{port}; rewritten at every start
{user}
worker_processes 1;
daemon off;
pid {run_dir}/nginx.pid;
error_log {run_dir}/nginx-error.log warn;
events {{ worker_connections {limits.max_connections}; }}
http {{
  access_log off;
  server_tokens off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  upstream strata_app {{
    server unix:{app_socket} max_fails=0;
    keepalive 32;
    keepalive_timeout 60s;
  }}
  limit_conn_zone $server_port zone=in_flight:1m;
  server {{
    listen {host}:{port} backlog=1024;
    client_header_timeout {_ms(limits.header_timeout_s)};
    client_body_timeout {_ms(limits.body_timeout_s)};
    keepalive_timeout {_ms(limits.keepalive_timeout_s)};
    send_timeout {_ms(limits.body_timeout_s)};
    reset_timedout_connection on;
    client_max_body_size {MAX_BODY_BYTES};
    client_body_buffer_size {MAX_BODY_BYTES};
    limit_conn in_flight {limits.max_requests};
    limit_conn_status 503;
    limit_conn_log_level warn;
    error_page 400 414 494 /_strata/bad_request;
    error_page 413 /_strata/too_large;
    error_page 503 /_strata/busy;
    error_page 500 502 504 =503 /_strata/unavailable;
    location / {{
      proxy_pass http://strata_app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_connect_timeout 1s;
      proxy_send_timeout {_ms(limits.app_timeout_s)};
      proxy_read_timeout {_ms(limits.app_timeout_s)};
      proxy_next_upstream off;
    }}
    location = /_strata/bad_request {{
      internal;
      default_type application/json;
      return 400 '{bad}';
    }}
    location = /_strata/too_large {{
      internal;
      default_type application/json;
      return 413 '{too_large}';
    }}
    location = /_strata/busy {{
      internal;
      default_type application/json;
      {retry}
      return 503 '{busy}';
    }}
    location = /_strata/unavailable {{
      internal;
      default_type application/json;
      {retry}
      return 503 '{down}';
    }}
  }}
}}
"""


def find_nginx() -> str:
    """The nginx binary: ``STRATA_NGINX``, else on PATH, else Debian's /usr/sbin/nginx."""
    for candidate in (os.environ.get("STRATA_NGINX"), shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    from strata.errors import StackError

    raise StackError("nginx not found (set STRATA_NGINX, or run scripts/install-system.sh)")


def run_dir_for(home: Path, port: int) -> Path:
    return home / "endpoint" / f"serve-{port}"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM when the server process dies, even by SIGKILL."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def serve(host: str = "127.0.0.1", port: int = 8090, limits: Limits | None = None) -> int:
    """Run nginx on ``host:port`` in front of the app until SIGTERM/SIGINT; 1 if nginx fails."""
    import uvicorn

    from strata.config import get_settings
    from strata.errors import StackError

    limits = limits or Limits()
    run_dir = run_dir_for(get_settings().home, port)
    (run_dir / "tmp").mkdir(parents=True, exist_ok=True)
    with socket.socket() as probe:  # the clear message; nginx's bind is the authoritative check
        if probe.connect_ex((host, port)) == 0:
            raise StackError(f"{host}:{port} is already in use by another process")
    app_socket = run_dir / "app.sock"
    app_socket.unlink(missing_ok=True)
    conf = run_dir / "nginx.conf"
    conf.write_text(nginx_conf(run_dir, host, port, app_socket, limits))
    nginx = subprocess.Popen(
        [find_nginx(), "-p", str(run_dir), "-c", str(conf), "-e", str(run_dir / "nginx-error.log")],
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,  # the server has no threads yet
    )
    stopping = threading.Event()

    def watch() -> None:  # nginx gone (cannot bind, killed, stopped with the group): stop too
        nginx.wait()
        if not stopping.is_set():
            if nginx.returncode:
                print(f"strata serve: nginx exited with {nginx.returncode}; see "
                      f"{run_dir / 'nginx-error.log'}", file=sys.stderr, flush=True)  # fmt: skip
            os.kill(os.getpid(), signal.SIGTERM)

    fast: dict[str, Any] = {}
    with contextlib.suppress(ImportError):
        import httptools  # noqa: F401
        import uvloop  # noqa: F401

        fast = {"loop": "uvloop", "http": "httptools"}
    config = uvicorn.Config("strata_apps.endpoint:create_app", factory=True, uds=str(app_socket),
                            access_log=False, server_header=False, log_level="warning",
                            timeout_keep_alive=APP_KEEPALIVE_S, **fast)  # fmt: skip
    server = uvicorn.Server(config)

    def stop(*_: object) -> None:
        server.should_exit = True

    # Before uvicorn installs its handlers (and again after it restores ours and re-raises the
    # signal it handled): a signal stops the server, then nginx is stopped below, never left.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    threading.Thread(target=watch, name="nginx-watch", daemon=True).start()
    try:
        server.run()
        if not server.started:  # the app did not start (its lifespan failed, say)
            return 1
    finally:
        stopping.set()
        if nginx.poll() is None:
            nginx.send_signal(signal.SIGQUIT)  # graceful: finish the requests in flight
            try:
                nginx.wait(10)
            except subprocess.TimeoutExpired:
                nginx.kill()
                nginx.wait()
        app_socket.unlink(missing_ok=True)
    return 0 if nginx.returncode in (0, -signal.SIGQUIT) else 1


# --------------------------------------------------------------------------------------------
# Readiness: the server this script started, not whatever answers on the port
# --------------------------------------------------------------------------------------------


def _descendants(pid: int) -> set[int]:
    """``pid`` and every process below it (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in found:
            found.add(p)
            todo.extend(children.get(p, []))
    return found


def _listening_inodes(port: int) -> set[str]:
    """Inodes of the TCP sockets listening on ``port`` (any address, IPv4 or IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                    inodes.add(cols[9])
    return inodes


def listener_owned_by(port: int, pid: int) -> bool | None:
    """True when ``pid`` or a child holds the listening socket of ``port``, False when someone
    else does, None when nobody listens yet."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for p in _descendants(pid):
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{p}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        return True
    return False


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 1.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.path))


def app_answers(app_socket: Path) -> bool:
    """True when the app answers ``GET /healthz`` on its socket (any HTTP status: it is up)."""
    conn = _UnixHTTPConnection(app_socket)
    try:
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


def wait_ready(port: int, pid: int, app_socket: Path, timeout_s: float = 15) -> tuple[int, str]:
    """(0, message) once ``pid``'s server holds ``port`` and its app answers; (1, why) when the
    process died or another process holds the port; (2, why) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return 1, f"the server (pid {pid}) exited"
        owned = listener_owned_by(port, pid)
        if owned is False:
            return 1, f"port {port} is in use by another process, not by the server (pid {pid})"
        if owned and app_answers(app_socket):
            return 0, f"pid {pid} holds port {port} and its app answers"
        time.sleep(0.1)
    return 2, f"the server (pid {pid}) was not ready on port {port} within {timeout_s:g} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strata_apps.endpoint_server")
    sub = parser.add_subparsers(dest="command", required=True)
    ready = sub.add_parser("ready", help="wait until the server started as PID is ready")
    ready.add_argument("--port", type=int, required=True)
    ready.add_argument("--pid", type=int, required=True)
    ready.add_argument("--home", type=Path, required=True, help="its STRATA_HOME")
    ready.add_argument("--timeout", type=float, default=15)
    args = parser.parse_args(argv)
    code, message = wait_ready(
        args.port, args.pid, run_dir_for(args.home, args.port) / "app.sock", args.timeout
    )
    print(message, file=sys.stderr if code else sys.stdout)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
