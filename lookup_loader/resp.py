"""Writing a version: pre-encoded RESP on raw sockets, several connections, replies drained
concurrently.

redis-py would spend more CPU building commands than Redis spends running them; the encoder has
already laid out every ``HSET`` as RESP bytes, so each writer connection sends slices of that one
buffer while a thread checks the integer replies.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from lookup_loader.encode import Encoded
from lookup_loader.versions import PublicationError
from strata.config import Settings
from strata.errors import StackError, StrataError

#: HSET commands per socket write (about 100k units, a few MB).
COMMANDS_PER_CHUNK = 2000
#: Parallel writer connections (Redis is single-threaded; 2 keep it busy while one encodes).
DEFAULT_WRITERS = 2


def _resp(*args: str | bytes | int) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


class RespConnection:
    """A raw socket to Redis, authenticated from configuration (AUTH and SELECT from the URL)."""

    def __init__(self, settings: Settings, timeout: float = 60.0) -> None:
        from redis.connection import parse_url

        opts = parse_url(settings.redis_url)
        if "connection_class" in opts and "SSL" in opts["connection_class"].__name__:
            raise StackError("the raw-socket writer does not speak TLS; use a redis:// URL")
        host, port = opts.get("host", "127.0.0.1"), int(opts.get("port", 6379))
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise StackError(f"Redis at {host}:{port} is not reachable: {exc}") from exc
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""
        role_user, password = settings.redis_credentials("writer")
        password = password or opts.get("password")
        if password:
            user = role_user or opts.get("username")
            reply = self.call("AUTH", *([user] if user else []), password)
            if not reply.startswith(b"+OK"):
                raise StackError(f"Redis at {host}:{port} refused our credentials: {reply!r}")
        if opts.get("db"):
            self.call("SELECT", opts["db"])
        reply = self.call("PING")
        if not reply.startswith(b"+PONG"):
            raise StackError(f"Redis at {host}:{port} answered PING with {reply!r}")

    def call(self, *args: str | bytes | int) -> bytes:
        """Send one command, return its one-line reply (status, error or integer)."""
        self.sock.sendall(_resp(*args))
        while b"\r\n" not in self._buf:
            data = self.sock.recv(65536)
            if not data:
                raise StackError("Redis closed the connection")
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line

    def stream(self, chunks: list[memoryview], expected: int, on_chunk: Any = None) -> None:
        """Send pre-encoded commands while a thread drains and checks their integer replies."""
        errors: list[str] = []
        done = threading.Event()

        def drain() -> None:
            seen, tail = 0, b""
            try:
                while seen < expected:
                    data = self.sock.recv(1 << 20)
                    if not data:
                        errors.append("Redis closed the connection mid-publication")
                        return
                    data = tail + data
                    cut = data.rfind(b"\r\n") + 2
                    whole, tail = data[:cut], data[cut:]
                    if b"-" in whole:  # integer replies never contain '-'; errors start with it
                        line = whole[whole.index(b"-") :].split(b"\r\n", 1)[0]
                        errors.append(line.decode(errors="replace"))
                        return
                    seen += whole.count(b"\r\n")
            except OSError as exc:
                errors.append(f"reading replies failed: {exc}")
            finally:
                done.set()

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            for chunk in chunks:
                if errors:
                    break
                self.sock.sendall(chunk)
                if on_chunk is not None:
                    on_chunk()
        except OSError as exc:
            errors.append(f"sending failed: {exc}")
        reader.join()
        if errors:
            raise PublicationError(f"writing to Redis failed: {errors[0]}")

    def close(self) -> None:
        self.sock.close()


def _chunks(start: int, stop: int, size: int) -> Iterator[tuple[int, int]]:
    for a in range(start, stop, size):
        yield a, min(a + size, stop)


def _buffer(enc: Encoded, a: int, b: int) -> memoryview:
    """Zero-copy bytes of HSET commands a..b-1 (the stream's data buffer is contiguous)."""
    data = enc.stream.buffers()[2]
    return memoryview(data)[int(enc.command_bytes[a]) : int(enc.command_bytes[b])]


def write_version(
    settings: Settings,
    enc: Encoded,
    *,
    writers: int = DEFAULT_WRITERS,
    max_units_per_s: float | None = None,
    heartbeat: Any = None,
) -> int:
    """Send every bucket of the version; returns bytes sent. Raises on any Redis error reply."""
    n = len(enc.command_units)
    writers = max(1, min(writers, n or 1))
    bounds = [round(i * n / writers) for i in range(writers + 1)]
    failures: list[BaseException] = []
    total = [0]
    lock = threading.Lock()

    def run(lo: int, hi: int) -> None:
        conn = None
        try:
            conn = RespConnection(settings)
            parts = list(_chunks(lo, hi, COMMANDS_PER_CHUNK))
            views = [_buffer(enc, a, b) for a, b in parts]
            started = time.perf_counter()
            sent_units = [0]
            it = iter(parts)

            def pace() -> None:
                a, b = next(it)
                sent_units[0] += int(enc.command_units[a:b].sum())
                if max_units_per_s:
                    ahead = sent_units[0] / (max_units_per_s / writers) - (
                        time.perf_counter() - started
                    )
                    if ahead > 0:
                        time.sleep(ahead)

            conn.stream(views, expected=hi - lo, on_chunk=pace)
            with lock:
                total[0] += sum(len(v) for v in views)
        except BaseException as exc:
            failures.append(exc)
        finally:
            if conn is not None:
                conn.close()

    threads = [
        threading.Thread(target=run, args=(bounds[i], bounds[i + 1]), daemon=True)
        for i in range(writers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(timeout=1.0)
            if heartbeat is not None:
                heartbeat()
    if failures:
        exc = failures[0]
        if isinstance(exc, StrataError):
            raise exc
        raise PublicationError(f"writing version {enc.version} failed: {exc}") from exc
    return total[0]
