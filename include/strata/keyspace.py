"""The Redis key scheme of the lookup table: one place, shared by the loader and the reader.

Key names, the fields of a version's metadata hash and their states, and the tombstone fields are
defined here only; the server-side scripts (``strata.lookup_scripts``) are built from them.

Seed 004 asks for a lookup by device id, user id and url. Strata keeps them in one Redis database,
each unit type in its own key family (seed 004's "approach 1" without spending a DB index per type),
and every publication in its own *version* namespace beside the live one::

    strata:lk:live                      STRING  the live version id (the one pointer that flips)
    strata:lk:ver:<version>             HASH    version metadata: state, bucket counts, counts
    strata:lk:versions                  ZSET    every version, scored by its creation time (ms)
    strata:lk:<version>:cat             HASH    experiment index -> experiment JSON (catalog)
    strata:lk:<version>:<t>:<bucket>    HASH    unit id -> "<exp index>.<variant id>,..."
    strata:lk:tomb                      HASH    fast-path removals (see ``tombstone_field``)
    strata:lk:tomb:log                  ZSET    tombstone field -> sequence number of its removal
    strata:lk:tomb:seq                  STRING  last removal's sequence number (INCR)
    strata:lk:lock                      STRING  the publisher lock (one publication at a time)

``<t>`` is ``d`` (device_id), ``u`` (user_id) or ``l`` (url). Units are spread over buckets
(``crc32(unit id) % buckets``) so that each bucket is a small listpack-encoded hash: Redis then
spends a few bytes per unit instead of the ~75 bytes a top-level key costs (measured in
bench/bench_lookup.py). The reader sends crc32 of the unit id; the server-side script reads the
bucket count of the live version, so a reader never needs to know it in advance.

Usage:
    >>> ks = KeySpace()
    >>> ks.live
    'strata:lk:live'
    >>> ks.bucket("3f2a", "device_id", unit_hash("dev-1"), 100)
    'strata:lk:3f2a:d:90'
    >>> buckets_field("d"), experiment_field("checkout_button")
    ('buckets:d', 'x:checkout_button')
    >>> encode_tokens([(0, 1), (3, 2)])
    '0.1,3.2'
    >>> decode_tokens("0.1,3.2")
    [(0, 1), (3, 2)]
    >>> normalize_url("HTTPS://Example.COM/a/b?x=1#top")
    'https://example.com/a/b?x=1'
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from strata.errors import DataError

#: Default key prefix; a deployment may give each environment its own.
DEFAULT_PREFIX = "strata:lk"
#: Unit types of the ``assignments`` table and their one-letter key codes.
UNIT_CODES: dict[str, str] = {"device_id": "d", "user_id": "u", "url": "l"}
#: Answer to seed 004's second open question: when several units of one request match, an
#: experiment (and a layer, whose experiments are mutually exclusive) is taken from the first unit
#: type in this order. A logged-in user keeps the same variant on every device; a device is the
#: fallback for anonymous traffic; a url (a page-level experiment) is the least specific.
UNIT_PRIORITY: tuple[str, ...] = ("user_id", "device_id", "url")
#: Longest unit id accepted (bytes of UTF-8), by the loader and by the reader.
MAX_UNIT_ID_BYTES = 512
#: Target units per bucket hash: well under Redis' default ``hash-max-listpack-entries`` (128),
#: so buckets stay listpack-encoded even where the hash spreads units unevenly.
UNITS_PER_BUCKET = 48
#: Version ids are short lowercase hex (a digest of the source snapshots).
VERSION_RE = re.compile(r"^[0-9a-f]{6,40}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: An id of at most this many characters has at most 4 UTF-8 bytes each: within the byte limit.
_SHORT_ID = MAX_UNIT_ID_BYTES // 4

# Fields of a version's metadata hash (``<prefix>:ver:<version>``), besides the per-unit-type and
# per-experiment ones of ``buckets_field``, ``units_field`` and ``experiment_field``.
STATE = "state"
CREATED_AT = "created_at"
UPDATED_AT = "updated_at"  # refreshed while writing: a stale "writing" version is a dead one's
LIVE_AT = "live_at"
RETIRED_AT = "retired_at"
ASSIGNMENTS_SNAPSHOT_ID = "assignments_snapshot_id"
EXPERIMENTS_SNAPSHOT_ID = "experiments_snapshot_id"
ROWS = "rows"
# Values of ``STATE``, in the order a version goes through them.
WRITING, VERIFIED, LIVE, RETIRED = "writing", "verified", "live", "retired"
#: Lua patterns of a tombstone field (see ``tombstone_field``): (code, experiment, unit id), and
#: the experiment alone.
TOMBSTONE_FIELD_LUA_PATTERN = "^(%a)\n([^\n]*)\n(.*)$"
TOMBSTONE_EXPERIMENT_LUA_PATTERN = "^%a\n([^\n]*)\n"


def unit_hash(unit_id: str) -> int:
    """crc32 of the UTF-8 unit id: picks the bucket; cheap in any client language.

    Usage:
        >>> unit_hash("dev-1")
        2279632790
    """
    return zlib.crc32(unit_id.encode())


def bucket_count(units: int, per_bucket: int = UNITS_PER_BUCKET) -> int:
    """How many buckets a version uses for ``units`` units of one type (at least one).

    Usage:
        >>> bucket_count(0), bucket_count(48), bucket_count(49), bucket_count(1_000_000)
        (1, 1, 2, 20834)
    """
    return max(1, -(-units // per_bucket))


def check_unit_id(unit_id: object, what: str = "unit id") -> str:
    """A unit id as stored: a non-empty string, no control characters, at most 512 bytes.

    Usage:
        >>> check_unit_id("dev-1")
        'dev-1'
        >>> check_unit_id("a\\nb", "device id")
        Traceback (most recent call last):
        ...
        strata.errors.DataError: device id 'a\\nb' contains a control character
    """
    if type(unit_id) is str and 0 < len(unit_id) <= _SHORT_ID and not _CONTROL.search(unit_id):
        return unit_id  # the common case, without encoding it (see _SHORT_ID)
    if not isinstance(unit_id, str) or not unit_id:
        raise DataError(f"{what} must be a non-empty string, got {unit_id!r}")
    if _CONTROL.search(unit_id):
        raise DataError(f"{what} {unit_id!r} contains a control character")
    if len(unit_id.encode()) > MAX_UNIT_ID_BYTES:
        raise DataError(f"{what} is longer than {MAX_UNIT_ID_BYTES} bytes: {unit_id[:40]!r}...")
    return unit_id


def normalize_url(url: str) -> str:
    """The stored form of a url unit: trimmed, scheme and host lower-cased, the default port
    (``:80`` for http, ``:443`` for https) and the fragment dropped, an empty path made ``/``. The
    path and the query are kept as given (a page with another query is another unit; a targeting
    rule ``url like "https://shop.example.com/cart*"`` ignores the query).

    The loader stores urls in this form, the reader looks them up in this form and online
    assignment hashes this form, so ``HTTPS://Example.com:443/p#x`` and ``https://example.com/p``
    are the same unit.

    Usage:
        >>> normalize_url(" HTTPS://Shop.Example.COM:443/Cart?x=1#top ")
        'https://shop.example.com/Cart?x=1'
        >>> normalize_url("http://example.com:8080"), normalize_url("http://example.com:80")
        ('http://example.com:8080/', 'http://example.com/')
    """
    parts = urlsplit(url.strip())
    scheme, netloc = parts.scheme.lower(), parts.netloc.lower()
    default = {"http": ":80", "https": ":443"}.get(scheme)
    if default and netloc.endswith(default) and not netloc.endswith("]"):
        netloc = netloc.removesuffix(default)
    path = parts.path or ("/" if netloc else "")
    return urlunsplit((scheme, netloc, path, parts.query, ""))


def encode_tokens(pairs: list[tuple[int, int]]) -> str:
    """A unit's value: ``<experiment index>.<variant id>`` pairs joined by commas."""
    return ",".join(f"{e}.{v}" for e, v in pairs)


def decode_tokens(value: str | bytes) -> list[tuple[int, int]]:
    """The inverse of :func:`encode_tokens` (empty value -> no assignments)."""
    text = value.decode() if isinstance(value, bytes) else value
    out = []
    for token in filter(None, text.split(",")):
        e, _, v = token.partition(".")
        out.append((int(e), int(v)))
    return out


def buckets_field(code: str) -> str:
    """Metadata field: the bucket count of the unit type with one-letter ``code``."""
    return f"buckets:{code}"


def units_field(code: str) -> str:
    """Metadata field: the number of units of the unit type with one-letter ``code``."""
    return f"units:{code}"


def experiment_field(experiment_id: str) -> str:
    """Metadata field: the catalog index of one experiment (present iff the version serves it)."""
    return f"x:{experiment_id}"


def tombstone_code_field(code: str, experiment_id: str, unit_id: str) -> str:
    """:func:`tombstone_field` of a unit type given by its one-letter code."""
    return f"{code}\n{experiment_id}\n{unit_id}"


def tombstone_field(unit_type: str, unit_id: str, experiment_id: str) -> str:
    """Field of the tombstone hash for one (unit, experiment) removed by the fast path.

    Usage:
        >>> tombstone_field("device_id", "d-42", "checkout_button")
        'd\\ncheckout_button\\nd-42'
    """
    return tombstone_code_field(UNIT_CODES[unit_type], experiment_id, unit_id)


@dataclass(frozen=True)
class KeySpace:
    """Key names under one prefix (tests and environments use their own prefixes)."""

    prefix: str = DEFAULT_PREFIX

    @property
    def live(self) -> str:
        return f"{self.prefix}:live"

    @property
    def versions(self) -> str:
        return f"{self.prefix}:versions"

    @property
    def tombstones(self) -> str:
        return f"{self.prefix}:tomb"

    @property
    def tombstone_log(self) -> str:
        return f"{self.prefix}:tomb:log"

    @property
    def tombstone_seq(self) -> str:
        return f"{self.prefix}:tomb:seq"

    @property
    def lock(self) -> str:
        return f"{self.prefix}:lock"

    def meta(self, version: str) -> str:
        return f"{self.prefix}:ver:{version}"

    def catalog(self, version: str) -> str:
        return f"{self.prefix}:{version}:cat"

    def bucket_key(self, version: str, code: str, number: str) -> str:
        """Bucket ``number`` of the unit type with one-letter ``code``."""
        return f"{self.prefix}:{version}:{code}:{number}"

    def bucket_prefix(self, version: str, unit_type: str) -> str:
        return self.bucket_key(version, UNIT_CODES[unit_type], "")

    def bucket(self, version: str, unit_type: str, hashed: int, buckets: int) -> str:
        return f"{self.bucket_prefix(version, unit_type)}{hashed % buckets}"
