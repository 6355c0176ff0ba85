"""Reference endpoint (seed 004's device register, seed 002's evaluation API, metrics): what
online users copy; not on the batch path.

``POST /v1/device/register/{device_id}`` takes seed 004's request envelope, answers from the live
lookup version (``strata.lookup``) with seed 004's response envelope (``result.actions``), and
writes one seed-004 LOG event per served experiment as a JSON line into
``<STRATA_HOME>/landing/exposures/date=YYYY-MM-DD/<host>-<pid>-<start>.jsonl``, which the events
pipeline reads as exposures (closed files are shipped to an ``s3://`` ``STRATA_EXPOSURE_LANDING``:
``strata.landing``).

Bad input never reaches a 500: bodies over ``MAX_BODY_BYTES`` get 413, malformed JSON, wrong
types, unknown fields, bad ids and a ``request.did`` that contradicts the path get 400 with the
offending location named, both in seed 004's envelope (``params.status = "failed"``). A
``request.ext.url`` that ``urllib.parse`` cannot read (an unclosed IPv6 bracket, a full-width
delimiter in the host, a port out of range) is a 400 like any other bad field.

Seed 003's online-only experiments (:func:`strata.assignment.online_only`: ``url`` layers on the
normalised ``ext.url``, rules on ``request.channel`` or ``url``, ``random`` layers drawn afresh per
request) are served by this route too, merged with the lookup's answer into one set of actions
(:func:`register_online`, :func:`register_answer`; a second Redis read only when one applies).
Their exposures are logged like any other, except the random ones (no unit: never logged).

Redis trouble is never a 500 and never a silent "no experiments": every Redis failure (unreachable,
timeouts, ``LOADING``, ``BUSY``, ``OOM``, ``READONLY``, credentials, permissions, any other error
reply) is a 503 with ``Retry-After``, ``params.err = "LOOKUP_UNAVAILABLE"`` and
``result.reason`` naming the class; no live version (nothing published, or a Redis that lost its
data) is a 503 with ``params.err = "NO_LIVE_VERSION"``. ``GET /healthz`` is 200 with
``status: "ok"`` only while a live version can be served, else 503 with the same reason
(readiness); ``GET /livez`` is 200 while the process answers (liveness). Nothing answers 500: an
unexpected failure is a 503 too, and every 503 carries ``Retry-After``.

``POST /experiment`` is seed 002's evaluation API: ``{"services": [...], "context": {...}}``
answers ``{"results": {service: {"parameters", "vids", "matched_layers"}}}``, the parameters
deep-merged by layer priority (:func:`strata.assignment.merged_services`, the merge the lookup
table's ``configUpdate`` uses). The context's ``user_id``, ``device_id`` and ``url`` are the units;
a unit the live lookup version holds is answered from it (the batch assignment wins: the request
context is not re-evaluated for it), a unit it does not hold is evaluated online on today's UTC
date with the definitions loaded at start (``STRATA_DEFINITIONS``, default the bundled ones):
:func:`strata.assignment.assign_unit`, targeting rules and the slot formula. Per experiment and per
layer the first unit type of ``UNIT_PRIORITY`` wins, as in the lookup. The answer also names the
``version`` and each unit's ``source`` (``lookup`` or ``online``). It writes no exposure events.
Online-only experiments are evaluated for every request, also for units the lookup holds
(:func:`online_only_rows`); ``random`` layers need no unit (:func:`random_rows`, source
``random: online``). The context's ``channel`` and ``region`` must be strings (a 400 naming the
field), ``region`` defaults to the region of ``country``
(:func:`strata.assignment.targeting_context`).
Bad input is a 4xx ``{"error": {"code", "message", "errors"}}``; Redis trouble a 503 with
``Retry-After`` (online evaluation never stands in for a lookup that failed: a known unit would
get another answer).

``GET /metrics`` is Prometheus text (:mod:`strata_apps.endpoint_metrics`): requests by route and
status, a latency histogram, lookups by outcome, the live version, and the requests served each
variant of a random experiment (their only exposure count: ``random_split`` checks the split).

Run it with ``scripts/endpoint.sh start`` or ``strata serve``: nginx on 127.0.0.1
(``STRATA_ENDPOINT_PORT``, default 8090) in front of uvicorn, which bounds how long a client may
take and how many it may be (:mod:`strata_apps.endpoint_server`). ``STRATA_LOOKUP_PREFIX`` chooses
the Redis key prefix (default ``strata:lk``). This module imports FastAPI;
only the server imports it.

Usage:
    >>> body = {"request": {"did": "d-1", "ext": {"userid": "u-1"}}}
    >>> RegisterRequest.model_validate(body).request.ext.userid
    'u-1'
    >>> event = exposure_event("d-1", "u-1", "", "checkout_button", 1, "3f2a", 0)
    >>> event["eid"], event["edata"]["params"][0]["variantId"], event["@timestamp"]
    ('LOG', 1, '1970-01-01T00:00:00+00:00')
    >>> ExperimentRequest.model_validate_json(
    ...     '{"services": ["ranker_svc"], "context": {"user_id": "u-1", "age": 25}}').context
    {'user_id': 'u-1', 'age': 25}
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import os
import re
import socket
import threading
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from strata.config import Settings, get_settings
from strata.errors import DataError, StackError
from strata.keyspace import DEFAULT_PREFIX, MAX_UNIT_ID_BYTES, UNIT_PRIORITY
from strata_apps.endpoint_metrics import REGISTER_ROUTE, Metrics, MetricsMiddleware

if TYPE_CHECKING:
    from strata.assignment import Assignment, Served, SlotOf
    from strata.definitions import Definitions

#: Largest request body accepted (seed 004's envelope is well under 1 KiB).
MAX_BODY_BYTES = 16 * 1024
API_ID = "api.device.register"
API_VERSION = "1.0"
#: Device ids in the path: letters, digits and ``. _ : -``, at most 128 characters.
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")  # controls and spaces (a url has none)
_ASCII_DIGITS = re.compile(r"[0-9]{1,12}")  # Content-Length ("²".isdigit() is True: not enough)
#: Seconds a client is told to wait after a 503 (``Retry-After``).
RETRY_AFTER_S = 1
_SHORT = 512  # max length of free-text envelope fields


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class UaSpec(_Strict):
    agent: str = Field("", max_length=_SHORT)
    ver: str = Field("", max_length=_SHORT)
    system: str = Field("", max_length=_SHORT)
    platform: str = Field("", max_length=_SHORT)
    raw: str = Field("", max_length=2048)


class Ext(_Strict):
    userid: str | None = Field(None, max_length=MAX_UNIT_ID_BYTES)
    url: str | None = Field(None, max_length=MAX_UNIT_ID_BYTES)


class RequestBody(_Strict):
    did: str = Field("", max_length=128)
    uaspec: UaSpec = Field(default_factory=UaSpec)
    channel: str = Field("", max_length=_SHORT)
    fcmToken: str = Field("", max_length=4096)  # seed 004's field name
    producer: str = Field("", max_length=_SHORT)
    dspec: dict[str, Any] = Field(default_factory=dict)
    ext: Ext = Field(default_factory=Ext)


class RequestParams(_Strict):
    msgid: str = Field("", max_length=_SHORT)


class RegisterRequest(_Strict):
    """Seed 004's request envelope (unknown fields are refused, types are not coerced)."""

    id: str = Field("", max_length=_SHORT)
    ver: str = Field("", max_length=_SHORT)
    ts: str = Field("", max_length=_SHORT)
    params: RequestParams = Field(default_factory=RequestParams)
    request: RequestBody


class ResponseParams(BaseModel):
    resmsgid: str
    msgid: str | None = None
    status: str
    client_key: str | None = None
    err: str | None = None
    errmsg: str | None = None


class RegisterResponse(BaseModel):
    """Seed 004's response envelope."""

    id: str = API_ID
    ver: str = API_VERSION
    ts: str
    params: ResponseParams
    responseCode: str  # seed 004's field name
    result: dict[str, Any]


#: Seed 002's evaluation API.
EXPERIMENT_ROUTE = "/experiment"
MAX_SERVICES = 32
MAX_CONTEXT_FIELDS = 64
#: Where the definitions for online evaluation are read from (default: the bundled ones).
DEFINITIONS_ENV = "STRATA_DEFINITIONS"
_INT64 = 2**63
ServiceName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")]
FieldName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,63}$")]
ContextValue = (
    Annotated[str, Field(max_length=MAX_UNIT_ID_BYTES)]
    | Annotated[int, Field(ge=-_INT64, lt=_INT64)]
    | float
    | bool
    | None
)


class ExperimentRequest(_Strict):
    """Seed 002's request: the services to answer and the context (units and targeting fields:
    JSON scalars only, types not coerced)."""

    services: list[ServiceName] = Field(min_length=1, max_length=MAX_SERVICES)
    context: dict[FieldName, ContextValue] = Field(
        default_factory=dict, max_length=MAX_CONTEXT_FIELDS
    )


_M = TypeVar("_M", bound=BaseModel)


class BadRequest(Exception):
    """Client error with the HTTP status and the location of the problem."""

    def __init__(self, status: int, err: str, message: str, errors: list | None = None) -> None:
        super().__init__(message)
        self.status, self.err, self.message, self.errors = status, err, message, errors or []


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def exposure_event(
    device_id: str,
    user_id: str,
    url: str,
    experiment_id: str,
    variant_id: int,
    version: str,
    ets_ms: int,
    timestamp: str | None = None,
) -> dict[str, Any]:
    """Seed 004's LOG telemetry event for one served experiment."""
    return {
        "eid": "LOG",
        "ets": ets_ms,
        "ver": "3.0",
        "mid": os.urandom(16).hex().upper(),
        "actor": {"id": "", "type": "System"},
        "context": {
            "channel": "analytics.api",
            "pdata": {"id": "strata.device-register", "ver": API_VERSION, "pid": "experiment",
                      "model": None},
            "env": "analytics",
            "sid": None,
            "did": device_id,
            "cdata": None,
            "rollup": None,
        },
        "object": None,
        "edata": {
            "type": "api_access",
            "params": [
                {
                    "title": "experiment",
                    "experimentId": experiment_id,
                    "variantId": variant_id,
                    "userId": user_id,
                    "deviceId": device_id,
                    "url": url,
                    "lookupVersion": version,
                }
            ],
        },
        "@timestamp": timestamp
        or dt.datetime.fromtimestamp(ets_ms / 1000, dt.UTC).isoformat("T", "seconds"),
    }  # fmt: skip


_SENTINEL = "\x00{}\x00"


def _line_template() -> str:
    """``exposure_event`` as one JSON line with ``%s`` holes: serialised once, at import.

    Derived from :func:`exposure_event` itself, so the fast path cannot drift from it (a test
    checks a line from :func:`exposure_lines` parses to ``exposure_event``'s dict).
    """
    names = ["ets", "mid", "did", "exp", "variant", "user", "device", "url", "version", "ts"]
    marks = {n: _SENTINEL.format(n) for n in names}
    event = exposure_event(marks["did"], marks["user"], marks["url"], marks["exp"], 0,
                           marks["version"], 0, marks["ts"])  # fmt: skip
    event["ets"], event["mid"] = marks["ets"], marks["mid"]
    event["context"]["did"] = marks["did"]
    event["edata"]["params"][0]["variantId"] = marks["variant"]
    event["edata"]["params"][0]["deviceId"] = marks["device"]
    text = json.dumps(event, separators=(",", ":")).replace("%", "%%")
    for n in names:  # each mark was serialised as a JSON string: "\u0000name\u0000"
        text = text.replace(json.dumps(marks[n]), "%s")
    return text + "\n"


def exposure_lines(
    device_id: str,
    user_id: str,
    url: str,
    served: list[tuple[str, int]],
    version: str,
    ets_ms: int,
) -> bytes:
    """The JSON lines of :func:`exposure_event` for every served (experiment, variant) of one
    request, byte for byte what ``json.dumps(event, separators=(",", ":"))`` gives, at a fraction
    of the cost (the constant parts are serialised once)."""
    if not served:
        return b""
    stamp = json.dumps(dt.datetime.fromtimestamp(ets_ms / 1000, dt.UTC).isoformat("T", "seconds"))
    did, user, link, ver = (json.dumps(x) for x in (device_id, user_id, url, version))
    ets = str(int(ets_ms))
    return "".join(
        _LINE % (ets, json.dumps(os.urandom(16).hex().upper()), did, json.dumps(exp),
                 int(variant), user, did, link, ver, stamp)
        for exp, variant in served
    ).encode()  # fmt: skip


class ExposureSink:
    """Appends LOG events as JSON lines, one file per process and UTC day, under ``landing``.

    ``on_closed`` gets each file once it is closed (day rolled over: in a thread, off the request
    path; server stopped: before ``close`` returns), e.g. to ship it to object storage.
    """

    def __init__(self, root: Path, on_closed: Callable[[Path], None] | None = None) -> None:
        self.root = root
        self.name = f"{socket.gethostname()}-{os.getpid()}-{int(time.time())}.jsonl"
        self._lock = threading.Lock()
        self._day: str | None = None
        self._fd: int | None = None
        self._on_closed = on_closed

    def path(self, day: str) -> Path:
        return self.root / f"date={day}" / self.name

    def append(self, ets_ms: int, data: bytes) -> None:
        """Append one request's lines with one ``O_APPEND`` write (lines never interleave).

        Synchronous on purpose: the write goes to the page cache (no fsync; a few microseconds,
        measured), so an event is in the file before its response is sent and a killed server
        loses none; a queue to a writer thread would add a GIL hand-off per request and a window
        of events held only in memory.
        """
        if not data:
            return
        day = dt.datetime.fromtimestamp(ets_ms / 1000, dt.UTC).date().isoformat()
        with self._lock:
            if day != self._day:
                if self._fd is not None:
                    os.close(self._fd)
                    if self._on_closed and self._day:
                        closed = self.path(self._day)
                        threading.Thread(target=self._on_closed, args=(closed,)).start()
                target = self.path(day)
                target.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                self._day = day
            fd = cast(int, self._fd)  # open for this day (just above when the day changed)
            written = os.write(fd, data)  # one append per request
            while written < len(data):  # a short write (disk full, signal): finish it or raise
                written += os.write(fd, data[written:])

    def close(self) -> None:
        with self._lock:
            closed = None
            if self._fd is not None:
                os.close(self._fd)
                closed = self.path(self._day) if self._day else None
                self._fd, self._day = None, None
        if closed and self._on_closed:
            self._on_closed(closed)


def _envelope(status: str, code: str, result: dict, msgid: str | None = None, **err: str) -> dict:
    """The response envelope (built without re-validating what this module itself produced)."""
    return {  # the fields of RegisterResponse / ResponseParams, in their order
        "id": API_ID,
        "ver": API_VERSION,
        "ts": _now().isoformat(timespec="milliseconds"),
        "params": {
            "resmsgid": str(uuid.uuid4()),
            "msgid": msgid,
            "status": status,
            "client_key": None,
            "err": err.get("err"),
            "errmsg": err.get("errmsg"),
        },
        "responseCode": code,
        "result": result,
    }


def _error(exc: BadRequest) -> JSONResponse:
    body = _envelope(
        "failed", "CLIENT_ERROR", {"errors": exc.errors}, err=exc.err, errmsg=exc.message
    )
    return JSONResponse(body, status_code=exc.status)


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not _ASCII_DIGITS.fullmatch(declared):
            raise BadRequest(400, "INVALID_REQUEST", "Content-Length must be 1-12 ASCII digits")
        if int(declared) > MAX_BODY_BYTES:
            raise BadRequest(413, "BODY_TOO_LARGE", f"body exceeds {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequest(413, "BODY_TOO_LARGE", f"body exceeds {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_units(device_id: str, body: RegisterRequest) -> tuple[str, str, str]:
    if not DEVICE_ID_RE.match(device_id):
        raise BadRequest(
            400, "INVALID_DEVICE_ID",
            f"path device id {device_id[:64]!r} must match {DEVICE_ID_RE.pattern}",
            [{"loc": "path.device_id", "msg": "invalid device id"}],
        )  # fmt: skip
    req = body.request
    if req.did and req.did != device_id:
        raise BadRequest(
            400, "DEVICE_ID_MISMATCH",
            f"request.did {req.did[:64]!r} does not match the path device id {device_id!r}",
            [{"loc": "body.request.did", "msg": "differs from the path"}],
        )  # fmt: skip
    user_id, url = req.ext.userid or "", req.ext.url or ""
    if user_id and (_CONTROL.search(user_id) or len(user_id.encode()) > MAX_UNIT_ID_BYTES):
        raise BadRequest(
            400, "INVALID_USER_ID", "request.ext.userid has control characters or is too long",
            [{"loc": "body.request.ext.userid", "msg": "invalid user id"}],
        )  # fmt: skip
    if url and (problem := url_problem(url)):
        raise BadRequest(
            400, "INVALID_URL", f"request.ext.url must be an absolute http(s) url: {problem}",
            [{"loc": "body.request.ext.url", "msg": problem}],
        )  # fmt: skip
    return device_id, user_id, url


def _parse(model: type[_M], raw: bytes) -> _M:
    """``raw`` validated as ``model`` (strict JSON); a 400 naming the first bad location."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = [
            {"loc": ".".join(["body", *(str(p) for p in e["loc"])]), "msg": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ][:20]
        first = errors[0] if errors else {"loc": "body", "msg": "invalid"}
        raise BadRequest(
            400, "INVALID_REQUEST", f"{first['loc']}: {first['msg']}", errors
        ) from None


def context_units(context: dict[str, Any], *, allow_none: bool = False) -> list[tuple[str, str]]:
    """The ``(unit type, unit id)`` pairs of a seed 002 context, in ``UNIT_PRIORITY`` order; a
    400 for a unit that is no string, holds control characters, is no http(s) url (``url``) or
    that the key scheme refuses, and when there is none to bucket on.

    Usage:
        >>> context_units({"device_id": "d-1", "user_id": "u-1", "age": 3})
        [('user_id', 'u-1'), ('device_id', 'd-1')]
    """
    from strata.lookup import request_units

    given: dict[str, str] = {}
    for unit_type in UNIT_PRIORITY:
        value = context.get(unit_type)
        if value is None or value == "":
            continue
        loc = [{"loc": f"body.context.{unit_type}", "msg": f"invalid {unit_type}"}]
        if not isinstance(value, str) or _CONTROL.search(value):
            raise BadRequest(
                400, "INVALID_UNIT", f"context.{unit_type} must be a string without control "
                "characters", loc,
            )  # fmt: skip
        if unit_type == "url" and (problem := url_problem(value)):
            raise BadRequest(400, "INVALID_UNIT", f"context.url: {problem}", loc)
        given[unit_type] = value
    if not given and allow_none:  # random layers need no unit
        return []
    if not given:
        raise BadRequest(
            400, "NO_UNIT", f"the context names no unit to bucket on ({', '.join(UNIT_PRIORITY)})",
            [{"loc": "body.context", "msg": "no unit"}],
        )  # fmt: skip
    try:
        return request_units(given.get("device_id"), given.get("user_id"), given.get("url"))
    except DataError as exc:  # an id the key scheme refuses (too long, ...)
        where = [{"loc": "body.context", "msg": str(exc)}]
        raise BadRequest(400, "INVALID_UNIT", str(exc), where) from None


def evaluate_services(
    units: list[tuple[str, str]],
    stored: list[list[tuple[dict[str, Any], int]] | None],
    defs: Definitions,
    context: dict[str, Any],
    services: list[str],
    day: dt.date,
    draw: SlotOf | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Seed 002's ``results`` and each unit's source (``lookup`` or ``online``).

    A unit the lookup version holds (``stored`` not None) is answered from it, plus its online-only
    experiments (:func:`online_only_rows`); any other is assigned online on ``day``. Per
    experiment and per layer the first unit (``UNIT_PRIORITY`` order) wins, as in
    :class:`strata.lookup.LookupClient`; ``random`` layers come last, drawn afresh
    (:func:`random_rows`; ``draw`` replaces the draw in tests), with source ``random: online``.
    Rules read the context through :func:`strata.assignment.targeting_context`.
    """
    from strata.assignment import (
        Served,
        assign_unit,
        merged_services,
        served,
        targeting_context,
    )

    rows: list[Served] = []
    sources: dict[str, str] = {}
    taken_experiments: set[str] = set()
    taken_layers: set[str] = set()
    context = targeting_context(context)
    for (unit_type, unit_id), held in zip(units, stored, strict=True):
        found: list[tuple[str, str, Served]]
        if held is not None:
            sources[unit_type] = "lookup"
            found = [
                (e["id"], e["layer"], Served(e["priority"] or 0, e["layer"], e["service"], vid,
                                             e["variants"][str(vid)]["params"],
                                             bool(e.get("shipped"))))
                for e, vid in held
            ]  # fmt: skip
            found += online_only_rows(defs, unit_type, unit_id, context, day)
        else:
            sources[unit_type] = "online"
            found = [
                (a.experiment_id, a.layer_id, served(a))
                for a in assign_unit(defs, unit_type, unit_id, context, as_of=day)
            ]
        for exp_id, layer_id, row in found:
            # a shipped experiment's params are launch-layer defaults, not one of the layer's
            # mutually exclusive experiments: they never take (or lose) the layer
            if exp_id in taken_experiments or (not row.shipped and layer_id in taken_layers):
                continue
            taken_experiments.add(exp_id)
            if not row.shipped:
                taken_layers.add(layer_id)
            rows.append(row)
    rows += random_rows(defs, context, day, sources, draw)
    return merged_services(rows, services), sources


def online_only_rows(
    defs: Definitions, unit_type: str, unit_id: str, context: dict[str, Any], day: dt.date
) -> list[tuple[str, str, Served]]:
    """The unit's online-only experiments (:func:`strata.assignment.online_only`: url layers,
    rules on ``channel`` / ``url``), which no lookup version holds: assigned here, per request,
    with the slot formula, for a unit the lookup answered."""
    from strata.assignment import assign_unit, online_experiments, served

    online = online_experiments(defs)
    if not online:
        return []
    return [
        (a.experiment_id, a.layer_id, served(a))
        for a in assign_unit(defs, unit_type, unit_id, context, as_of=day, only=online)
    ]


def random_rows(
    defs: Definitions,
    context: dict[str, Any],
    day: dt.date,
    sources: dict[str, str],
    draw: SlotOf | None = None,
) -> list[Served]:
    """Seed 003's ``random`` experiments of one request (:func:`strata.assignment.assign_random`:
    a fresh slot per layer and request, no unit, nothing stored or logged); records
    ``sources["random"] = "online"`` when the definitions have a random layer."""
    from strata.assignment import assign_random, draw_slot, served
    from strata.contracts import PER_REQUEST_UNIT_TYPES

    if not any(lay.unit_type in PER_REQUEST_UNIT_TYPES for lay in defs.layers):
        return []
    sources["random"] = "online"
    return [served(a) for a in assign_random(defs, context, as_of=day, slot_of=draw or draw_slot)]


def check_targeting_fields(context: dict[str, Any]) -> None:
    """A 400 naming ``body.context.<field>`` for a first-class targeting field
    (:data:`strata.contracts.TARGETING_FIELDS`: ``channel``, ``region``) that is not a string
    without control characters (null or absent is fine).

    Usage:
        >>> check_targeting_fields({"channel": "web", "region": None})
        >>> check_targeting_fields({"channel": 3})
        Traceback (most recent call last):
        ...
        strata_apps.endpoint.BadRequest: context.channel must be a string (got int)
    """
    from strata.contracts import TARGETING_FIELDS

    for name in TARGETING_FIELDS:
        value = context.get(name)
        if value is None:
            continue
        loc = [{"loc": f"body.context.{name}", "msg": f"invalid {name}"}]
        if not isinstance(value, str):
            raise BadRequest(
                400, "INVALID_FIELD", f"context.{name} must be a string (got "
                f"{type(value).__name__})", loc,
            )  # fmt: skip
        if _CONTROL.search(value):  # (the request model caps every string at 512 characters)
            raise BadRequest(
                400, "INVALID_FIELD", f"context.{name} must have no control characters", loc
            )


def register_online(
    defs: Definitions,
    device_id: str,
    user_id: str,
    url: str,
    channel: str,
    day: dt.date,
    draw: SlotOf | None = None,
) -> list[Assignment]:
    """The online-only experiments (:func:`strata.assignment.online_only`) of a device-register
    request: url layers on ``ext.url`` (its normal form), rules on ``request.channel`` and
    ``url``, and random layers (drawn afresh). Per experiment and layer the first unit in
    ``UNIT_PRIORITY`` order wins. Empty (and cheap) when the definitions have none."""
    from strata.assignment import (
        assign_random,
        assign_unit,
        draw_slot,
        online_experiments,
        targeting_context,
    )
    from strata.lookup import request_units

    online = online_experiments(defs)
    if not online:
        return []
    context = targeting_context({"device_id": device_id, "user_id": user_id or None,
                                 "url": url or None, "channel": channel or None})  # fmt: skip
    rows: list[Assignment] = []
    experiments: set[str] = set()
    layers: set[str] = set()
    candidates = [
        a
        for unit_type, unit_id in request_units(device_id, user_id, url)
        for a in assign_unit(defs, unit_type, unit_id, context, as_of=day, only=online)
    ]
    for a in [*candidates, *assign_random(defs, context, as_of=day, slot_of=draw or draw_slot)]:
        if a.experiment_id not in experiments and a.layer_id not in layers:
            experiments.add(a.experiment_id)
            layers.add(a.layer_id)
            rows.append(a)
    return rows


def catalog_entry(defs: Definitions, a: Assignment) -> dict[str, Any]:
    """A lookup catalog entry (the shape :func:`strata.lookup.build_actions` reads) for an
    online assignment, from the definitions."""
    e = defs.experiment(a.experiment_id)
    return {
        "id": e.id, "name": e.name, "startDate": e.start_date.isoformat(),
        "endDate": e.end_date.isoformat(), "key": e.key, "layer": a.layer_id,
        "domain": a.domain_id, "priority": a.layer_priority, "service": a.service,
        "variants": {str(a.variant_id): {"name": a.variant_name, "control": a.is_control,
                                         "params": json.loads(a.params)}},
    }  # fmt: skip


def register_answer(
    reader: Any, defs: Definitions, device_id: str, user_id: str, url: str, extra: list[Assignment]
) -> Any:
    """The lookup's answer plus the online-only assignments ``extra``, as one seed-004 answer:
    the stored experiments (first unit per experiment and layer), then ``extra`` where neither
    its experiment nor its layer is taken, merged into one set of actions."""
    from strata.lookup import Answer, build_actions, request_units

    units = request_units(device_id, user_id, url)
    version, held = reader.stored(units)
    chosen: list[tuple[dict[str, Any], int]] = []
    experiments: set[str] = set()
    layers: set[str] = set()
    entries = [pair for pairs in held if pairs for pair in pairs]
    entries += [(catalog_entry(defs, a), a.variant_id) for a in extra]
    for entry, vid in entries:
        if entry["id"] not in experiments and entry["layer"] not in layers:
            experiments.add(entry["id"])
            layers.add(entry["layer"])
            chosen.append((entry, vid))
    return Answer(version, build_actions(chosen))


def _seed002_error(exc: BadRequest) -> JSONResponse:
    body = {"error": {"code": exc.err, "message": exc.message, "errors": exc.errors}}
    return JSONResponse(body, status_code=exc.status)


def load_definitions() -> Definitions:
    """The definitions online evaluation uses: ``STRATA_DEFINITIONS``, else the bundled ones."""
    from strata.definitions import bundled_path, load

    return load(os.environ.get(DEFINITIONS_ENV) or bundled_path())


def _unavailability(exc: StackError) -> tuple[str, int, str]:
    """(reason, Retry-After seconds, envelope ``err``) of a lookup that could not be served."""
    from strata.lookup import RETRY_AFTER_S, LookupUnavailable, NoLiveVersionError

    if isinstance(exc, LookupUnavailable):
        err = "NO_LIVE_VERSION" if isinstance(exc, NoLiveVersionError) else "LOOKUP_UNAVAILABLE"
        return exc.reason, exc.retry_after, err
    return "error", RETRY_AFTER_S["error"], "LOOKUP_UNAVAILABLE"


def url_problem(url: str) -> str | None:
    """Why ``url`` is not an absolute http(s) url with a host, or None when it is one.

    The url is a lookup key, so it is checked, never rewritten: it must be read by
    ``urllib.parse`` without error (the reader normalises it with the same parser), have an http
    or https scheme, a host and, if any, a numeric port up to 65535, and hold no spaces or control
    characters. A host that NFKC normalisation changes (full-width letters: one host spelled two
    ways, which would be two lookup keys) is refused too. Never raises.

    Usage:
        >>> url_problem("https://shop.example.com/cart?x=1") is None
        True
        >>> url_problem("http://[::1/p")
        'unreadable: Invalid IPv6 URL'
        >>> url_problem("http://example.com:99999/")
        'unreadable: Port out of range 0-65535'
        >>> url_problem("http://\uff45xample.com/")  # a full-width "e"
        'the host has full-width or other compatibility characters'
    """
    if _URL_FORBIDDEN.search(url):
        return "contains a space or a control character"
    try:
        parts = urlsplit(url)
        host, _port = parts.hostname, parts.port  # both parse the netloc; either may raise
    except ValueError as exc:  # unclosed "[", a full-width "／" or "＃" in the host, a bad port
        return f"unreadable: {exc}"
    if parts.scheme not in ("http", "https"):
        return "the scheme must be http or https"
    if not host:
        return "no host"
    if not parts.netloc.isascii() and unicodedata.normalize("NFKC", parts.netloc) != parts.netloc:
        return "the host has full-width or other compatibility characters"
    return None


def create_app(
    settings: Settings | None = None,
    *,
    prefix: str | None = None,
    definitions: Definitions | None = None,
    today: Callable[[], dt.date] | None = None,
) -> FastAPI:
    """The ASGI app (``uvicorn strata_apps.endpoint:create_app --factory``).

    ``definitions`` (default :func:`load_definitions`, read once, here) and ``today`` (default
    today UTC) are what ``POST /experiment`` evaluates unknown units with.
    """
    from strata import landing
    from strata.assignment import online_experiments
    from strata.contracts import PER_REQUEST_UNIT_TYPES, utc_today
    from strata.lookup import LookupClient, NoLiveVersionError
    from strata.stack import redis_client

    settings = settings or get_settings()
    prefix = prefix or os.environ.get("STRATA_LOOKUP_PREFIX", DEFAULT_PREFIX)
    defs = definitions if definitions is not None else load_definitions()
    day_of = today or utc_today
    has_random = any(lay.unit_type in PER_REQUEST_UNIT_TYPES for lay in defs.layers)
    online_ids = online_experiments(defs)  # served per request by both routes
    metrics = Metrics()

    def lookup_failed(route: str, exc: StackError) -> None:
        outcome = "no_live_version" if isinstance(exc, NoLiveVersionError) else "unavailable"
        metrics.lookup(route, outcome)
        if isinstance(exc, NoLiveVersionError):
            metrics.live_version(None)

    sink = ExposureSink(settings.exposure_spool_path, on_closed=landing.shipper(settings))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Everything imported and built so far lives as long as the server: move it out of the
        # collector's reach, so a full collection walks request garbage only (measured: a 22 ms
        # gen-2 pause per few thousand requests without this).
        gc.collect()
        gc.freeze()
        if landing.is_remote(settings):  # files left by stopped or crashed servers
            threading.Thread(target=landing.ship_leftovers, args=(settings, sink.name)).start()
        yield
        sink.close()

    app = FastAPI(title="Strata device register", version=API_VERSION, docs_url=None,
                  redoc_url=None, lifespan=lifespan)  # fmt: skip
    state: dict[str, Any] = {}

    def reader() -> LookupClient:
        if "reader" not in state:
            try:
                client = redis_client(
                    settings, role="reader", socket_timeout=1, socket_connect_timeout=1
                )
            except Exception as exc:  # bad URL / credentials configuration: a 503, named
                raise StackError(f"the lookup client cannot be built: {exc}") from exc
            state["reader"] = LookupClient(settings, prefix=prefix, client=client)
        return state["reader"]

    app.state.sink = sink
    app.state.metrics = metrics
    app.state.definitions = defs

    @app.exception_handler(BadRequest)
    async def _bad_request(_request: Request, exc: BadRequest) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # The last resort (Starlette's ServerErrorMiddleware calls it, then re-raises so the
        # traceback is logged): a client sees "unavailable, retry", never a 500.
        body = _envelope("failed", "SERVER_ERROR", {}, err="UNAVAILABLE",
                         errmsg=f"unexpected {type(exc).__name__}; retry later")  # fmt: skip
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(StackError)
    async def _unavailable(_request: Request, exc: StackError) -> JSONResponse:
        reason, retry_after, err = _unavailability(exc)
        body = _envelope("failed", "SERVER_ERROR", {"reason": reason}, err=err, errmsg=str(exc))
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(retry_after)})

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """200 ``{"status": "ok", "live_version": ...}`` only while a live version is served;
        else 503 with ``Retry-After`` and the reason (``no_live_version``, ``loading``, ...)."""
        try:
            version = reader().serving_version()
            metrics.live_version(version)
        except StackError as exc:
            if isinstance(exc, NoLiveVersionError):
                metrics.live_version(None)
            reason, retry_after, _ = _unavailability(exc)
            body = {"status": "unavailable", "reason": reason, "live_version": None,
                    "detail": str(exc)}  # fmt: skip
            return JSONResponse(body, 503, headers={"Retry-After": str(retry_after)})
        return JSONResponse({"status": "ok", "live_version": version})

    @app.get("/livez")
    def livez() -> JSONResponse:
        """200 while the process serves HTTP, whatever Redis does (liveness, not readiness:
        a restart would not bring a lost lookup version back)."""
        return JSONResponse({"status": "alive", "pid": os.getpid()})

    @app.get("/metrics")
    def prometheus() -> Response:
        """Prometheus text: the live version is refreshed first (one GET; its failure is not the
        scrape's: the families are answered anyway)."""
        with contextlib.suppress(StackError):
            metrics.live_version(reader().live_version())
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def register(request: Request) -> JSONResponse:
        device_id = request.path_params["device_id"]
        raw = await _read_body(request)
        body = _parse(RegisterRequest, raw)
        device_id, user_id, url = _check_units(device_id, body)
        try:
            extra = (
                register_online(defs, device_id, user_id, url, body.request.channel, day_of())
                if online_ids
                else []
            )
            # One sub-millisecond Lua call with 1 s timeouts: cheaper inline than a thread hop.
            answer = (
                register_answer(reader(), defs, device_id, user_id, url, extra)
                if extra
                else reader().answer(device_id, user_id, url)
            )
        except DataError as exc:  # an id the key scheme refuses
            raise BadRequest(400, "INVALID_REQUEST", str(exc)) from None
        except StackError as exc:
            lookup_failed(REGISTER_ROUTE, exc)
            raise
        metrics.lookup(REGISTER_ROUTE, "hit" if answer.actions else "miss")
        metrics.live_version(answer.version)
        ets = int(time.time() * 1000)
        served = answer.experiments
        if extra:  # random experiments are never logged (no unit: not analysable per unit)
            drawn = {a.experiment_id for a in extra if a.unit_type in PER_REQUEST_UNIT_TYPES}
            for e, v in served:  # but counted per variant: their split is checkable
                if e in drawn:
                    metrics.served_random(e, v)
            served = [(e, v) for e, v in served if e not in drawn]
        if served:
            sink.append(
                ets, exposure_lines(device_id, user_id, url, served, answer.version or "", ets)
            )
        result = {"message": "Device registered successfully", "actions": answer.actions}
        return JSONResponse(_envelope("successful", "OK", result, msgid=body.params.msgid or None))

    # A plain Starlette route: the handler validates the body itself (strict pydantic model), so
    # FastAPI's per-request dependency solving would only repeat work (~0.1 ms per request).
    app.add_route("/v1/device/register/{device_id}", register, methods=["POST"])

    async def experiment(request: Request) -> JSONResponse:
        """Seed 002's evaluation API (see the module docstring)."""
        try:
            body = _parse(ExperimentRequest, await _read_body(request))
            check_targeting_fields(body.context)
            units = context_units(body.context, allow_none=has_random)
        except BadRequest as exc:
            return _seed002_error(exc)
        try:
            version, stored = reader().stored(units)
        except StackError as exc:
            lookup_failed(EXPERIMENT_ROUTE, exc)
            reason, retry_after, err = _unavailability(exc)
            error = {"code": err, "reason": reason, "message": str(exc)}
            return JSONResponse(
                {"error": error}, status_code=503, headers={"Retry-After": str(retry_after)}
            )
        metrics.live_version(version)
        services = list(dict.fromkeys(body.services))
        results, sources = evaluate_services(units, stored, defs, body.context, services, day_of())
        for source in sources.values():
            metrics.lookup(EXPERIMENT_ROUTE, "hit" if source == "lookup" else "online")
        return JSONResponse({"results": results, "version": version, "sources": sources})

    app.add_route(EXPERIMENT_ROUTE, experiment, methods=["POST"])
    app.add_middleware(RetryAfter)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


class RetryAfter:
    """ASGI middleware: every 503 the app sends carries ``Retry-After`` (added when missing)."""

    def __init__(self, app: Any, seconds: int = RETRY_AFTER_S) -> None:
        self.app, self.header = app, (b"retry-after", str(seconds).encode())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_retry_after(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"retry-after" for k, _ in headers):
                    message = message | {"headers": [*headers, self.header]}
            await send(message)

        await self.app(scope, receive, send_with_retry_after)


_LINE = _line_template()
