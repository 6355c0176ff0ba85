"""Reader client of the Redis lookup table: which experiments is this device / user / url in?

Every answer is read from exactly one version: one server-side Lua script resolves the live
pointer and reads the unit's buckets of that version in the same atomic step, and the version's
catalog (experiment names, dates, deployment keys, variant params) is immutable, so caching it per
version is safe. A reader therefore sees the old or the new version during a flip, never a mix.

The answer is seed 004's ``result.actions`` list: one ``{"type": "experiment", "data": {...}}``
per experiment (``id, name, startDate, endDate, key`` plus ``variantId, variantName, params``),
ordered by layer priority (highest first), then one ``{"type": "configUpdate", "data":
{"service": ..., "params": ...}}`` per service with the variants' params deep-merged in seed 002's
order, the same as ``strata.assignment.merge_order``: ascending layer priority, then layer id, the
later one winning; a layer without a service applies to every service (``service: null`` carries
the unscoped layers alone).

A shipped experiment's entry (``"shipped": true``: its ``shipped:<id>`` rows, served through the
launch layer) gives no experiment action (so no LOG event), only its params, merged at the launch
layer's priority before that layer's experiments; it neither takes nor loses the layer.

Seed 004's open question 2, the priority order when device id, user id and url all match: an
experiment, and a layer (whose experiments are mutually exclusive), is taken from the first unit
type in ``UNIT_PRIORITY`` = user_id, device_id, url; matches of the same experiment or layer
through a later unit type are ignored.

Params are merged with :func:`strata.assignment.deep_merge` in seed 002's order.

Failures are never answered as "no experiments": when no version is live (nothing published yet,
or a Redis server that lost its data) a lookup raises :class:`NoLiveVersionError`, and every Redis
failure (unreachable, timeout, ``LOADING``, ``BUSY``, ``OOM``, ``READONLY``, refused credentials or
permissions, any other error reply) raises :class:`LookupUnavailable` with a ``reason`` and a
suggested ``retry_after`` in seconds. Both are ``StackError``s; the endpoint answers them with 503
and ``Retry-After``.

Usage:
    from strata.lookup import lookup, LookupClient
    lookup("d-42", user_id="u-7")            # -> [{"type": "experiment", "data": {...}}, ...]
    LookupClient().lookup_many([("d-1", None, None), ("d-2", "u-9", "https://x/p")])
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import marshal
import re
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from strata.assignment import deep_merge
from strata.config import Settings, get_settings
from strata.errors import StackError
from strata.keyspace import (
    DEFAULT_PREFIX,
    MAX_UNIT_ID_BYTES,
    UNIT_CODES,
    UNIT_PRIORITY,
    KeySpace,
    check_unit_id,
    decode_tokens,
    normalize_url,
    unit_hash,
)
from strata.lookup_scripts import READ_LUA

if TYPE_CHECKING:
    import redis

#: Units per script call in ``lookup_many`` (each call is one atomic read of one version).
BATCH_UNITS = 3000
#: Catalogs of this many versions are cached (the live one and the one before it).
CACHED_VERSIONS = 2
#: Answers memoised per (version, stored values); cleared when full.
MEMO_ENTRIES = 50_000

#: Seconds a client is asked to wait (``Retry-After``) per failure reason; "error" for the rest.
RETRY_AFTER_S: dict[str, int] = {
    "no_live_version": 30,
    "loading": 5,
    "busy": 2,
    "timeout": 2,
    "unreachable": 5,
    "out_of_memory": 10,
    "read_only": 5,
    "master_down": 5,
    "auth": 60,
    "no_permission": 60,
    "error": 5,
}


class LookupUnavailable(StackError):
    """Redis could not answer a lookup. ``reason`` names the class of failure (a key of
    ``RETRY_AFTER_S``), ``retry_after`` is the suggested wait in seconds."""

    def __init__(self, message: str, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = RETRY_AFTER_S.get(reason, RETRY_AFTER_S["error"])


class NoLiveVersionError(LookupUnavailable):
    """No version is live: nothing was published yet, or the server lost its data (a restart
    without persistence, a replaced node). Not the same as "no experiments": run
    ``python -m lookup_loader recover`` (or wait for the next publication)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "no_live_version")


#: Error-reply codes (the first word of a Redis error) and their reasons.
_ERROR_CODES = {
    "BUSY": "busy",
    "LOADING": "loading",
    "OOM": "out_of_memory",
    "READONLY": "read_only",
    "MASTERDOWN": "master_down",
    "NOAUTH": "auth",
    "WRONGPASS": "auth",
    "NOPERM": "no_permission",
}


def redis_failure(exc: BaseException) -> str:
    """The reason (a key of ``RETRY_AFTER_S``) for a failure of a Redis call.

    Usage:
        >>> import redis
        >>> redis_failure(redis.exceptions.BusyLoadingError("LOADING Redis is loading"))
        'loading'
        >>> redis_failure(redis.ResponseError("BUSY Redis is busy running a script"))
        'busy'
        >>> redis_failure(redis.ResponseError("WRONGTYPE Operation against a key"))
        'error'
    """
    from redis import exceptions as ex

    # Subclasses first: redis-py derives AuthenticationError and BusyLoadingError (LOADING)
    # from ConnectionError, and NOPERM, OOM, READONLY and MASTERDOWN from ResponseError.
    for cls, reason in (
        (ex.AuthenticationError, "auth"),
        (ex.BusyLoadingError, "loading"),
        (ex.TimeoutError, "timeout"),
        (ex.ConnectionError, "unreachable"),
        (ex.NoPermissionError, "no_permission"),
        (ex.OutOfMemoryError, "out_of_memory"),
        (ex.ReadOnlyError, "read_only"),
        (ex.MasterDownError, "master_down"),
    ):
        if isinstance(exc, cls):
            return reason
    if isinstance(exc, OSError):  # a socket error outside redis-py's wrappers
        return "unreachable"
    words = str(exc).replace("-", " ").split()
    # a script's error names the code after "Error running script ...: @user_script:...: -OOM"
    return next((_ERROR_CODES[w] for w in words if w in _ERROR_CODES), "error")


def unavailable(exc: BaseException, what: str = "lookups") -> LookupUnavailable:
    """A :class:`LookupUnavailable` for a redis-py failure, its message naming the reason."""
    reason = redis_failure(exc)
    if reason == "auth":
        return LookupUnavailable(f"Redis refused the credentials for {what}: {exc}", reason)
    return LookupUnavailable(f"Redis cannot serve {what} ({reason}): {exc}", reason)


@dataclass(frozen=True)
class Answer:
    """One lookup's actions and the version they were read from."""

    version: str | None
    actions: list[dict[str, Any]]

    @property
    def experiments(self) -> list[tuple[str, int]]:
        """(experiment id, variant id) pairs, for logging exposures."""
        return [
            (a["data"]["id"], a["data"]["variantId"])
            for a in self.actions
            if a["type"] == "experiment"
        ]


#: (position in a request, unit type, what an error calls it), in ``UNIT_PRIORITY`` order.
_REQUEST_UNITS = tuple(
    (("device_id", "user_id", "url").index(t), t, t.replace("_", " ")) for t in UNIT_PRIORITY
)


#: ``check_unit_id``'s fast case in one call: a str of 1 to ``MAX_UNIT_ID_BYTES // 4`` characters
#: (at most 4 UTF-8 bytes each) without control characters; anything else goes through it.
_PLAIN_ID = re.compile(rf"[^\x00-\x1f\x7f]{{1,{MAX_UNIT_ID_BYTES // 4}}}").fullmatch
#: ``lookup_many`` parses a request without url inline (user id first, then device id) as long as
#: that is ``UNIT_PRIORITY``'s order; otherwise every request goes through ``_units``.
_FAST_PATH = UNIT_PRIORITY.index("user_id") < UNIT_PRIORITY.index("device_id")


def _units(device_id: str | None, user_id: str | None, url: str | None) -> list[tuple[str, str]]:
    """The request's units in priority order; empty strings mean absent (seed 004 sends "")."""
    given = (device_id, user_id, url)
    units = []
    for index, unit_type, what in _REQUEST_UNITS:
        value = given[index]
        if value is None or value == "":
            continue
        if unit_type == "url":
            value = _url_unit(value) if type(value) is str else _url_unit.__wrapped__(value)
        else:
            value = check_unit_id(value, what)
        units.append((unit_type, value))
    return units


@functools.lru_cache(maxsize=4096)
def _url_unit(url: str) -> str:
    """A request's url as looked up: checked, normalised, checked again (cached: a site's
    pages recur, and ``normalize_url`` costs more than the rest of a request's parsing)."""
    return check_unit_id(normalize_url(check_unit_id(url, "url")), "url")


def request_units(
    device_id: str | None, user_id: str | None = None, url: str | None = None
) -> list[tuple[str, str]]:
    """The request's ``(unit type, unit id)`` pairs in ``UNIT_PRIORITY`` order, as looked up
    (empty strings are absent, a url is normalised); raises ``DataError`` for an id the key
    scheme refuses."""
    return _units(device_id, user_id, url)


class LookupClient:
    """Reads the live version; thread-safe; one instance per process is enough."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        client: redis.Redis | None = None,
    ) -> None:
        from strata.stack import redis_client

        self.settings = settings or get_settings()
        self.prefix = prefix
        self.keys = KeySpace(prefix)
        self.redis = client or redis_client(self.settings, role="reader", socket_timeout=5)
        self._script = self.redis.register_script(READ_LUA)
        self._local = threading.local()  # one held connection per thread (see _eval)
        self._held: list[Any] = []
        self._catalogs: dict[str, dict[int, dict]] = {}
        self._memo: dict[str, dict[Any, Callable[[], list[dict]]]] = {}  # see _memo_of
        self._last_version = ""
        self._lock = threading.Lock()

    # -- reading ------------------------------------------------------------------------------
    def _read(self, units: list[tuple[str, str]]) -> tuple[str, list[bytes | None]]:
        """The live version and the units' stored values; raises when none can be read."""
        args: list[Any] = []
        for unit_type, unit_id in units:
            args += (UNIT_CODES[unit_type], unit_hash(unit_id), unit_id)
        return self._read_args(args)

    def _read_args(self, units_args: list[Any]) -> tuple[str, list[bytes | None]]:
        """:meth:`_read` of units given as the script's (code, hash, id) arguments."""
        import redis as redis_lib

        try:
            reply = self._eval([self.prefix, self._last_version, *units_args])
        except (redis_lib.RedisError, OSError) as exc:  # every Redis failure, never a bare error
            raise unavailable(exc) from exc
        decoded = self._decode(reply)
        if decoded is None:  # another thread's cache moved on; refetch
            with self._lock:
                self._last_version = ""
            return self._read_args(units_args)
        return decoded

    def _decode(self, reply: Any) -> tuple[str, list[bytes | None]] | None:
        """(version, values) of a script reply, caching a catalog it carries; None when the
        reply names a version whose catalog this client no longer holds (read it again)."""
        if not reply or reply[0] is None:
            if reply and len(reply) > 1 and reply[1] is not None:
                raise NoLiveVersionError(
                    f"the live pointer {self.keys.live} names version {reply[1].decode()}, "
                    "whose keys are gone; run `python -m lookup_loader recover`"
                )
            raise NoLiveVersionError(
                f"no lookup version is live under {self.prefix!r} (nothing published, or Redis "
                "lost its data); run `python -m lookup_loader recover`"
            )
        version = reply[0].decode()
        if reply[1] is not None:  # the script sent this version's catalog
            flat = reply[1]
            catalog = {int(flat[i]): json.loads(flat[i + 1]) for i in range(0, len(flat), 2)}
            with self._lock:
                self._catalogs[version] = catalog
                while len(self._catalogs) > CACHED_VERSIONS:
                    self._catalogs.pop(next(iter(self._catalogs)))
                self._last_version = version
        elif version not in self._catalogs:
            return None
        return version, reply[2:]

    def _eval(self, args: list[Any]) -> Any:
        """EVALSHA_RO of READ_LUA on this thread's own connection: one round trip, no pool
        traffic. The read-only form (Redis >= 7.0) is all the reader's ACL user may run.

        redis-py's pool checkout/return and command wrappers cost about as much CPU as the round
        trip itself (measured 75 us vs 35 us per call), so each thread keeps one connection from
        the client's pool. A connection that failed is dropped and the call retried once on a
        fresh one (a restarted server, an idle timeout); a flushed script cache is reloaded.
        """
        import redis as redis_lib

        reloaded = reconnected = False  # each at most once (a restarted server needs both)
        while True:
            conn = self._connection()
            try:
                conn.send_command("EVALSHA_RO", self._script.sha, 0, *args)
                return conn.read_response()
            except redis_lib.exceptions.NoScriptError:
                if reloaded:
                    raise
                reloaded = True
                self._script.sha = self.redis.script_load(READ_LUA)
            except (redis_lib.ConnectionError, redis_lib.TimeoutError, OSError):
                self._drop(conn)
                if reconnected:
                    raise
                reconnected = True
            except redis_lib.ResponseError:
                raise  # the reply was read whole: the connection stays usable
            except BaseException:
                self._drop(conn)  # an unknown state: never reuse a connection mid-reply
                raise

    def _connection(self) -> Any:
        """This thread's own connection (taken from the client's pool on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.redis.connection_pool.get_connection()
            self._local.conn = conn
            with self._lock:
                self._held.append(conn)
        return conn

    def _drop(self, conn: Any) -> None:
        self._local.conn = None
        with self._lock:
            if conn in self._held:
                self._held.remove(conn)
        conn.disconnect()
        self.redis.connection_pool.release(conn)

    def _actions(self, version: str, values: list[tuple[str, bytes | None]]) -> list[dict]:
        """Actions for a unit's stored values; memoised per version (few distinct combinations).

        The memo holds, per distinct answer, a :func:`copier` of the actions built once, so
        every caller gets its own objects to keep or mutate.
        """
        stored = tuple(v for _, v in values)
        return self._maker(version, stored[0] if len(stored) == 1 else stored, stored)()

    def _memo_of(self, version: str) -> dict[Any, Callable[[], list[dict]]]:
        """The memo of one version: its answers' copiers, keyed by the stored values (the raw
        value of a request's one unit, or the tuple of its units' values)."""
        memo = self._memo.get(version)
        if memo is None:
            with self._lock:
                memo = self._memo.setdefault(version, {})
                while len(self._memo) > CACHED_VERSIONS:
                    self._memo.pop(next(iter(self._memo)))
        return memo

    def _maker(
        self, version: str, key: Any, values: Sequence[bytes | None]
    ) -> Callable[[], list[dict]]:
        """The memo's copier of the actions for these stored values (built on a miss)."""
        memo = self._memo_of(version)
        make = memo.get(key)
        if make is None:
            make = copier(self._build_actions(version, [("", v) for v in values]))
            with self._lock:
                if len(memo) >= MEMO_ENTRIES:
                    memo.clear()
                memo[key] = make
        return make

    def _build_actions(
        self, version: str, values: Sequence[tuple[str, bytes | None]]
    ) -> list[dict]:
        catalog = self._catalogs[version]
        taken_experiments: set[str] = set()
        taken_layers: set[str] = set()
        chosen: list[tuple[dict, int]] = []
        for _unit_type, raw in values:  # already in UNIT_PRIORITY order
            if not raw:
                continue
            for index, variant in sorted(decode_tokens(raw)):
                exp = catalog[index]
                # a shipped experiment (served through the launch layer) is no experiment of its
                # layer: it neither takes the layer nor loses it to an experiment there
                shipped = bool(exp.get("shipped"))
                if exp["id"] in taken_experiments or (not shipped and exp["layer"] in taken_layers):
                    continue
                taken_experiments.add(exp["id"])
                if not shipped:
                    taken_layers.add(exp["layer"])
                chosen.append((exp, variant))
        return build_actions(chosen)

    def stored(
        self, units: list[tuple[str, str]]
    ) -> tuple[str, list[list[tuple[dict[str, Any], int]] | None]]:
        """The live version and, per ``(unit type, unit id)`` of ``units``, the unit's stored
        ``(catalog entry, variant id)`` pairs, or None when that version does not hold the unit
        (seed 002's evaluation API evaluates such units online). Catalog entries are shared and
        read-only. Raises like :meth:`lookup`."""
        version, values = self._read(units)
        catalog = self._catalogs[version]
        return version, [
            [(catalog[i], v) for i, v in sorted(decode_tokens(raw))] if raw else None
            for raw in values
        ]

    def answer(
        self, device_id: str | None, user_id: str | None = None, url: str | None = None
    ) -> Answer:
        """Like :meth:`lookup`, with the version the answer came from."""
        units = _units(device_id, user_id, url)
        if not units:
            return Answer(None, [])
        version, values = self._read(units)
        return Answer(
            version, self._actions(version, list(zip([u[0] for u in units], values, strict=True)))
        )

    def lookup(
        self, device_id: str | None, user_id: str | None = None, url: str | None = None
    ) -> list[dict[str, Any]]:
        """Seed 004's actions for one request (empty when no experiment matches).

        Raises :class:`NoLiveVersionError` when no version is live and
        :class:`LookupUnavailable` when Redis cannot answer.
        """
        return self.answer(device_id, user_id, url).actions

    def lookup_many(self, requests: Iterable[Sequence[str | None]]) -> list[list[dict[str, Any]]]:
        """Actions for many ``(device_id, user_id, url)`` requests, ``BATCH_UNITS`` per script
        call; the calls of one batch are pipelined on one connection. Each answer is the
        caller's own (new lists and dicts; the strings and numbers in them are shared).

        Each request's answer comes from one version (a batch is split into atomic script calls;
        a flip between two calls can put two requests of one batch on different versions).
        """
        return [actions for _, answers in self._many(requests) for actions in answers]

    def answer_many(self, requests: Iterable[Sequence[str | None]]) -> list[Answer]:
        """Like :meth:`lookup_many`, with the version of each answer."""
        return [
            Answer(version, actions)
            for version, answers in self._many(requests)
            for actions in answers
        ]

    def _many(self, requests: Iterable[Sequence[str | None]]) -> list[tuple[str, list[list[dict]]]]:
        """(version, actions per request) per script call, in the order of the requests.

        Where the time goes (``bench/bench_lookup.py``, 10,000 devices): every script call of
        the batch is sent at once, so Redis runs call k+1 while this process turns the values
        of call k into answers; an answer is built once per distinct (version, stored values)
        and each request gets its own copy from the memo's :func:`copier`; the cyclic garbage
        collector is paused while a batch's answers are made (see :func:`_gc_paused`).
        """
        chunks = self._chunks(requests)
        with _gc_paused():
            return self._read_chunks(chunks)

    @staticmethod
    def _chunks(requests: Iterable[Sequence[str | None]]) -> list[tuple[list[int] | None, list]]:
        """The script calls of a batch: (units per request, or None when each request has
        exactly one; the script's (code, hash, unit id) arguments) per call of at most
        ``BATCH_UNITS`` units (a request's units are never split)."""
        limit = 3 * BATCH_UNITS
        plain, crc32, fast = _PLAIN_ID, zlib.crc32, _FAST_PATH
        user_code, device_code = UNIT_CODES["user_id"], UNIT_CODES["device_id"]
        chunks: list[tuple[list[int] | None, list]] = []
        counts: list[int] = []
        args: list[Any] = []
        singles = True
        for i, request in enumerate(requests):
            if len(request) != 3:
                raise ValueError(f"request {i} must be (device_id, user_id, url), got {request!r}")
            device_id, user_id, url = request
            units: tuple = ()
            if fast and (url is None or url == ""):  # _units inlined for the common request
                if user_id is not None and user_id != "":
                    if type(user_id) is not str or not plain(user_id):
                        user_id = check_unit_id(user_id, "user id")
                    units = (user_code, crc32(user_id.encode()), user_id)
                if device_id is not None and device_id != "":
                    if type(device_id) is not str or not plain(device_id):
                        device_id = check_unit_id(device_id, "device id")
                    units += (device_code, crc32(device_id.encode()), device_id)
            else:
                for unit_type, unit_id in _units(device_id, user_id, url):
                    units += (UNIT_CODES[unit_type], unit_hash(unit_id), unit_id)
            if counts and len(args) + len(units) > limit:
                chunks.append((None if singles else counts, args))
                counts, args, singles = [], [], True
            args += units
            n = len(units) // 3
            if n != 1:
                singles = False
            counts.append(n)
        if counts:
            chunks.append((None if singles else counts, args))
        return chunks

    def _read_chunks(
        self, chunks: list[tuple[list[int] | None, list]]
    ) -> list[tuple[str, list[list[dict]]]]:
        """The answers of each chunk: its script call, pipelined with the others, decoded."""
        import redis as redis_lib

        calls = [args for _, args in chunks if args]
        if len(calls) <= 1:
            return [
                self._chunk_answers(*(self._read_args(args) if args else ("", [])), counts)
                for counts, args in chunks
            ]
        try:
            conn, first = self._send_all(calls)
        except (redis_lib.RedisError, OSError) as exc:
            raise unavailable(exc) from exc
        out: list[tuple[str, list[list[dict]]] | None] = []
        stale = []
        try:
            for counts, args in chunks:
                if not args:
                    out.append(self._chunk_answers("", [], counts))
                    continue
                reply, first = (first, None) if first is not None else (conn.read_response(), None)
                decoded = self._decode(reply)
                if decoded is None:  # another thread's cache moved on: read again below
                    stale.append(len(out))
                    out.append(None)
                else:
                    out.append(self._chunk_answers(*decoded, counts))
        except BaseException as exc:
            self._drop(conn)  # replies may be pending: never reuse this connection
            if isinstance(exc, redis_lib.RedisError | OSError):
                raise unavailable(exc) from exc
            raise
        for i in stale:
            counts, args = chunks[i]
            out[i] = self._chunk_answers(*self._read_args(args), counts)
        return cast(list[tuple[str, list[list[dict]]]], out)

    def _send_all(self, calls: list[list[Any]]) -> tuple[Any, Any]:
        """Send every script call on this thread's connection at once and read the first reply;
        returns the connection (the other replies pending) and that reply. Retried like
        :meth:`_eval`: a dropped connection once, a flushed script cache once (on a fresh
        connection, so no reply of the failed attempt is left to read)."""
        import redis as redis_lib

        reloaded = reconnected = False
        while True:
            conn = self._connection()
            head = ("EVALSHA_RO", self._script.sha, 0, self.prefix, self._last_version)
            try:
                conn.send_packed_command(_pack([(*head, *args) for args in calls], conn))
                return conn, conn.read_response()
            except redis_lib.exceptions.NoScriptError:
                self._drop(conn)
                if reloaded:
                    raise
                reloaded = True
                self._script.sha = self.redis.script_load(READ_LUA)
            except (redis_lib.ConnectionError, redis_lib.TimeoutError, OSError):
                self._drop(conn)
                if reconnected:
                    raise
                reconnected = True
            except BaseException:
                self._drop(conn)
                raise

    def _chunk_answers(
        self, version: str, values: list[bytes | None], counts: list[int] | None
    ) -> tuple[str, list[list[dict]]]:
        """(version, actions per request) of a chunk: ``counts`` units per request, or one
        each when ``counts`` is None."""
        if not values:  # requests without units: no version read
            return version, [[] for _ in counts or ()]
        get = self._memo_of(version).get
        if counts is None:  # one unit per request: the memo is keyed by the raw value
            return version, [(get(v) or self._maker(version, v, (v,)))() for v in values]
        out: list[list[dict]] = []
        pos = 0
        for n in counts:
            if n == 0:
                out.append([])
                continue
            if n == 1:
                key: Any = values[pos]
                own: Sequence[bytes | None] = (key,)
            else:
                key = own = tuple(values[pos : pos + n])
            pos += n
            out.append((get(key) or self._maker(version, key, own))())
        return version, out

    def live_version(self) -> str | None:
        """The live version id (None when nothing is published); LookupUnavailable if Redis
        cannot answer."""
        import redis as redis_lib

        try:
            raw = self.redis.get(self.keys.live)
        except (redis_lib.RedisError, OSError) as exc:
            raise unavailable(exc) from exc
        return cast(bytes, raw).decode() if raw else None  # the client returns bytes

    def serving_version(self) -> str:
        """The live version, checked to be servable (its metadata present): what a health check
        asks. Raises :class:`NoLiveVersionError` or :class:`LookupUnavailable` otherwise."""
        import redis as redis_lib

        try:
            version = self.live_version()
            if version is None:
                raise NoLiveVersionError(
                    f"no lookup version is live under {self.prefix!r} (nothing published, or "
                    "Redis lost its data); run `python -m lookup_loader recover`"
                )
            if not self.redis.exists(self.keys.meta(version)):
                raise NoLiveVersionError(
                    f"the live pointer {self.keys.live} names version {version}, whose keys "
                    "are gone; run `python -m lookup_loader recover`"
                )
        except (redis_lib.RedisError, OSError) as exc:
            raise unavailable(exc) from exc
        return version

    def close(self) -> None:
        with self._lock:
            held, self._held = self._held, []
        for conn in held:
            conn.disconnect()
            self.redis.connection_pool.release(conn)
        self.redis.close()


#: Compiled makers of answer shapes (see :func:`copier`), keyed by their source; cleared when full.
_SHAPES: dict[str, Callable[..., Any]] = {}
SHAPE_ENTRIES = 4096
#: Deeper values are copied with ``marshal`` (a shape's source nests one bracket per level).
_SHAPE_DEPTH = 32
_LEAVES = (str, int, float, bool, type(None))


class _Unshaped(Exception):
    """A value :func:`copier` does not compile (not JSON-shaped, or nested too deep)."""


def _shape(value: Any, leaves: list[Any], depth: int = 0) -> str:
    """The source of an expression that rebuilds ``value``'s dicts and lists around its leaves
    (dict keys and scalars), which it names ``a0``, ``a1``, ... in the order they are added."""
    kind = type(value)
    if kind is dict or kind is list:
        if depth >= _SHAPE_DEPTH:
            raise _Unshaped
        parts = []
        if kind is dict:
            for key, item in value.items():
                if type(key) is not str:
                    raise _Unshaped
                leaves.append(key)
                parts.append(f"a{len(leaves) - 1}:{_shape(item, leaves, depth + 1)}")
            return "{" + ",".join(parts) + "}"
        parts = [_shape(item, leaves, depth + 1) for item in value]
        return "[" + ",".join(parts) + "]"
    if kind not in _LEAVES:
        raise _Unshaped
    leaves.append(value)
    return f"a{len(leaves) - 1}"


def copier(value: Any) -> Callable[[], Any]:
    """A function that returns a new deep copy of the JSON-shaped ``value`` (dicts with str keys,
    lists, and str, int, float, bool or None leaves) per call: new dicts and lists, the
    immutable leaves shared.

    The copy is made by a function compiled once per *shape* (the nesting of dicts and lists and
    their sizes; the keys and leaves are its arguments), whose source holds nothing but argument
    names and brackets: about 2.5x as fast as ``marshal.loads`` of the same answer, which also
    makes new strings (measured on a seed-004 answer of two actions). Other values, or values
    nested deeper than ``_SHAPE_DEPTH``, are copied through ``marshal``.

    Usage:
        >>> original = {"type": "configUpdate", "data": {"params": {"k": [1, 2.5, None]}}}
        >>> make = copier(original)
        >>> copy = make()
        >>> copy == original, copy is original, copy["data"] is original["data"]
        (True, False, False)
        >>> copy["data"]["params"]["k"].append(3); make()["data"]["params"]["k"]
        [1, 2.5, None]
    """
    leaves: list[Any] = []
    try:
        body = _shape(value, leaves)
    except _Unshaped:
        return functools.partial(marshal.loads, marshal.dumps(value))
    make = _SHAPES.get(body)
    if make is None:
        params = ",".join(f"a{i}" for i in range(len(leaves)))
        namespace: dict[str, Any] = {}
        # the source is argument names and brackets only: nothing of ``value`` is in it
        exec(compile(f"def make({params}):\n return {body}\n", "<copier>", "exec"), namespace)
        make = namespace["make"]
        if len(_SHAPES) >= SHAPE_ENTRIES:
            _SHAPES.clear()
        _SHAPES[body] = make
    return functools.partial(make, *leaves)


_pack_command: Callable[[tuple[Any, ...]], bytes] | None
try:  # redis-py packs through hiredis too, after copying every argument through a generator
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover - hiredis is a dependency; redis-py works without it
    _pack_command = None


def _pack(commands: list[tuple[Any, ...]], conn: Any) -> list[bytes]:
    """``commands`` (str, bytes and int arguments) as RESP, for ``conn.send_packed_command``."""
    if _pack_command is None:
        return cast(list[bytes], conn.pack_commands(commands))
    return list(map(_pack_command, commands))


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_thresholds: tuple[int, ...] | None = None
#: The older generations' thresholds while a batch's answers are made: never reached.
_NEVER = 1 << 30


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector's collections of the older generations while any
    thread is inside: young collections (generation 0, every 700 new containers by default)
    go on, over objects still in the CPU's caches. The last one out restores the thresholds as
    the first one in found them; a disabled collector is left alone.

    A batch of 10,000 answers is ~70,000 new dicts and lists. Left to the defaults, the
    collector passes over the whole process several times while they are made (each young
    collection moves them on, and an older generation that grew by a quarter is collected
    whole); with the collector disabled instead, the young collection that follows its
    re-enabling passes over all of them at once, out of cache (measured 40-60 ms per batch,
    more than making them). With the older generations paused, the young collections cost
    ~2 ms per batch; answers that the caller drops (served) are freed by their reference
    counts before any older collection sees them, and the ones it keeps are collected as
    usual.
    """
    global _gc_pausers, _gc_thresholds
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_thresholds = gc.get_threshold() if gc.isenabled() else None
            if _gc_thresholds is not None:
                gc.set_threshold(_gc_thresholds[0], _NEVER, _NEVER)
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_thresholds is not None:
                gc.set_threshold(*_gc_thresholds)


_default: LookupClient | None = None
_default_lock = threading.Lock()


def build_actions(chosen: list[tuple[dict[str, Any], int]]) -> list[dict[str, Any]]:
    """Seed 004's actions for the chosen ``(catalog entry, variant id)`` pairs: one
    ``experiment`` action each (descending layer priority, then layer and id), then one
    ``configUpdate`` per service with the params merged in seed 002's order. Sorts ``chosen``."""
    chosen.sort(key=lambda c: (-(c[0]["priority"] or 0), c[0]["layer"], c[0]["id"]))
    actions: list[dict[str, Any]] = []
    for exp, variant in chosen:
        if exp.get("shipped"):  # params only (below): no experiment action, no exposure
            continue
        v = exp["variants"][str(variant)]
        actions.append(
            {
                "type": "experiment",
                "data": {
                    "id": exp["id"],
                    "name": exp["name"],
                    "startDate": exp["startDate"],
                    "endDate": exp["endDate"],
                    "key": exp["key"],
                    "variantId": variant,
                    "variantName": v["name"],
                    "params": v["params"],
                },
            }
        )
    # seed 002 merge order (as strata.assignment.merge_order): ascending layer priority, then
    # layer id, later wins; a layer without a service applies to every service; in one layer
    # a shipped experiment's params come first (an experiment there overrides them).
    in_order = sorted(
        chosen, key=lambda c: (c[0]["priority"] or 0, c[0]["layer"], not c[0].get("shipped"))
    )
    services = sorted({exp["service"] for exp, _ in chosen}, key=lambda s: (s is not None, s))
    for service in services:
        merged: dict[str, Any] = {}
        for exp, variant in in_order:
            if exp["service"] is None or exp["service"] == service:
                merged = deep_merge(merged, exp["variants"][str(variant)]["params"])
        actions.append({"type": "configUpdate", "data": {"service": service, "params": merged}})
    return actions


def _client() -> LookupClient:
    global _default
    with _default_lock:
        if _default is None:
            _default = LookupClient()
        return _default


def lookup(
    device_id: str | None, user_id: str | None = None, url: str | None = None
) -> list[dict[str, Any]]:
    """Seed 004's actions for a request, from the live version (process-wide client)."""
    return _client().lookup(device_id, user_id, url)


def lookup_many(requests: Iterable[Sequence[str | None]]) -> list[list[dict[str, Any]]]:
    """Batch form of :func:`lookup` for ``(device_id, user_id, url)`` requests."""
    return _client().lookup_many(requests)
