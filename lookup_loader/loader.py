"""Publish the ``assignments`` table into Redis as a new version, verify it, flip one pointer.

A publication never touches the live version: it writes every bucket of a new version beside it
(pre-encoded RESP ``HSET`` commands streamed on raw sockets, several connections at once), checks
the server-side counts against the Iceberg source and a sample of units field by field, and only
then runs one Lua script that re-applies fast-path removals and sets ``strata:lk:live``. Readers
resolve the pointer and read their buckets inside one script, so they see the old version or the
new one, never a mix. A publication that dies half-way leaves the live version serving; the
version id is a digest of the source snapshots, so a re-run writes the same version again and
completes it. Older versions are unlinked afterwards (``lookup_keep_versions`` retired ones are
kept: a rollback to one of them is one flip; older ones are republished from their snapshots).

This module is the loader's public face; the work is done, in this order, by
``lookup_loader.source`` (the two Iceberg tables at fixed snapshots, the version id),
``lookup_loader.encode`` (catalog and RESP stream, pure), ``lookup_loader.resp`` (the raw-socket
writer), ``lookup_loader.versions`` (verification, flip, fast path, lock, cleanup) and
``lookup_loader.publish`` (one publication, its record, recovery, rollback). Key names and
scripts come from ``strata.keyspace`` and ``strata.lookup_scripts``.

Usage (the functions the CLI and the DAG call)::

    from lookup_loader.loader import publish, invalidate, cleanup, recover, rollback
    result = publish(settings)          # -> PublicationResult, also appended to `publications`
    invalidate(settings, "device_id", "d-42", "checkout_button")   # fast path, effective now
    recover(settings)   # Redis lost its data: the last verified publication again -> dict of counts
    rollback(settings)  # the version live before the current one, live again -> dict of counts
"""

from __future__ import annotations

from lookup_loader.encode import Encoded, crc32_array, encode
from lookup_loader.publish import (
    WENT_LIVE,
    PublicationResult,
    PublishTarget,
    RollbackRefused,
    held_versions,
    last_publication,
    publication_of,
    publish,
    record_publication,
    recover,
    republish,
    rollback,
)
from lookup_loader.resp import COMMANDS_PER_CHUNK, DEFAULT_WRITERS, RespConnection, write_version
from lookup_loader.source import (
    ASSIGNMENTS_TABLE,
    EXPERIMENTS_TABLE,
    FORMAT_VERSION,
    PUBLICATIONS_TABLE,
    Source,
    read_source,
    version_id,
)
from lookup_loader.versions import (
    COUNT_BUCKETS_PER_CALL,
    DEFAULT_SAMPLE,
    KEEP_PREVIOUS,
    LOCK_TTL_S,
    STALE_WRITING_S,
    TOMBSTONES_PER_CALL,
    PublicationError,
    _client,
    apply_tombstones,
    cleanup,
    drop_tombstones,
    flip,
    invalidate,
    restore,
    unlink_version,
    verify,
)
from strata.lookup_scripts import (
    APPLY_TOMBSTONES_LUA,
    COUNT_LUA,
    DROP_TOMBSTONES_LUA,
    FLIP_LUA,
    INVALIDATE_LUA,
)

__all__ = [
    "APPLY_TOMBSTONES_LUA",
    "ASSIGNMENTS_TABLE",
    "COMMANDS_PER_CHUNK",
    "COUNT_BUCKETS_PER_CALL",
    "COUNT_LUA",
    "DEFAULT_SAMPLE",
    "DEFAULT_WRITERS",
    "DROP_TOMBSTONES_LUA",
    "EXPERIMENTS_TABLE",
    "FLIP_LUA",
    "FORMAT_VERSION",
    "INVALIDATE_LUA",
    "KEEP_PREVIOUS",
    "LOCK_TTL_S",
    "PUBLICATIONS_TABLE",
    "STALE_WRITING_S",
    "TOMBSTONES_PER_CALL",
    "WENT_LIVE",
    "Encoded",
    "PublicationError",
    "PublicationResult",
    "PublishTarget",
    "RespConnection",
    "RollbackRefused",
    "Source",
    "_client",
    "apply_tombstones",
    "cleanup",
    "crc32_array",
    "drop_tombstones",
    "encode",
    "flip",
    "held_versions",
    "invalidate",
    "last_publication",
    "publication_of",
    "publish",
    "read_source",
    "record_publication",
    "recover",
    "republish",
    "restore",
    "rollback",
    "unlink_version",
    "verify",
    "version_id",
    "write_version",
]
