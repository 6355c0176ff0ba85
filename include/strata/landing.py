"""The exposure landing: where the endpoint's LOG files go, and where ingestion finds them.

The endpoint appends LOG lines to local files, one per process and UTC day, under
``settings.exposure_spool_path`` (``<home>/landing/exposures/date=YYYY-MM-DD/<host>-<pid>-<start>
.jsonl``): no request ever waits on object storage. When ``STRATA_EXPOSURE_LANDING`` is an
``s3://`` URI, every *closed* file (the UTC day rolled over, or the server stopped) is shipped
there under the same ``date=.../<name>`` key, verified by size, then removed locally. A file
whose upload failed stays in the spool, and the next endpoint start ships it together with the
files of processes that died (a process is judged alive by its pid on this host).

With the default (a local folder), the spool is the landing and nothing is shipped.

Usage:
    >>> from strata.config import Settings
    >>> s = Settings(home="/tmp/strata-doc", exposure_landing="s3://bucket/landing/")
    >>> s.exposure_landing_uri, str(s.exposure_spool_path)
    ('s3://bucket/landing', '/tmp/strata-doc/landing/exposures')
    >>> remote_key(s, Path("/tmp/strata-doc/landing/exposures/date=2026-11-08/h-1-2.jsonl"))
    'bucket/landing/date=2026-11-08/h-1-2.jsonl'
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from strata.config import Settings, is_s3_uri
from strata.errors import StackError
from strata.procs import pid_alive

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyarrow.fs import FileSystem

#: Landing files: one folder per UTC day of the events, JSON lines inside.
FILE_GLOB = "date=*/*.jsonl"


def is_remote(settings: Settings) -> bool:
    return is_s3_uri(settings.exposure_landing_uri)


def object_store(settings: Settings) -> FileSystem:
    """pyarrow's S3 filesystem with Strata's endpoint, region and credentials (else AWS's
    default credential chain)."""
    from pyarrow.fs import S3FileSystem

    kwargs: dict = {}
    if settings.s3_endpoint:
        parts = urlsplit(settings.s3_endpoint)
        kwargs |= {
            "endpoint_override": parts.netloc or parts.path,
            "scheme": parts.scheme or "https",
        }
        kwargs["force_virtual_addressing"] = False
    region = settings.s3_region or ("us-east-1" if settings.s3_endpoint else None)
    if region:
        kwargs["region"] = region
    if settings.s3_access_key_id and settings.s3_secret_access_key:
        kwargs |= {
            "access_key": settings.s3_access_key_id.get_secret_value(),
            "secret_key": settings.s3_secret_access_key.get_secret_value(),
        }
    return S3FileSystem(**kwargs)


def _bucket_path(uri: str) -> str:
    """``s3://bucket/prefix`` -> ``bucket/prefix`` (pyarrow's S3 paths)."""
    parts = urlsplit(uri)
    return f"{parts.netloc}{parts.path}".rstrip("/")


def remote_key(settings: Settings, local: Path) -> str:
    """Where a spooled file lands: the same ``date=.../<name>`` under the landing URI."""
    relative = local.relative_to(settings.exposure_spool_path).as_posix()
    return f"{_bucket_path(settings.exposure_landing_uri)}/{relative}"


def ship(settings: Settings, local: Path, fs: FileSystem | None = None) -> str:
    """Upload one closed file, check the stored size, remove the local copy; the remote key."""
    from pyarrow.fs import LocalFileSystem, copy_files

    fs = fs or object_store(settings)
    key = remote_key(settings, local)
    size = local.stat().st_size
    copy_files(str(local), key, source_filesystem=LocalFileSystem(), destination_filesystem=fs)
    stored = fs.get_file_info(key).size
    if stored != size:
        raise StackError(f"shipping {local} to s3://{key}: stored {stored} bytes of {size}")
    local.unlink()
    return key


def _owner_alive(name: str) -> bool:
    """Is the process that wrote ``<host>-<pid>-<start>.jsonl`` still running on this host?"""
    try:
        host, pid_text, _start = name.removesuffix(".jsonl").rsplit("-", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    return host == socket.gethostname() and pid_alive(pid)


def ship_leftovers(settings: Settings, keep: str) -> list[str]:
    """Ship spooled files of processes that are gone (never ``keep``, this process's name)."""
    if not is_remote(settings):
        return []
    shipped, fs = [], None
    for local in sorted(settings.exposure_spool_path.glob(FILE_GLOB)):
        if local.name == keep or _owner_alive(local.name):
            continue
        try:
            fs = fs or object_store(settings)
            shipped.append(ship(settings, local, fs))
        except Exception as exc:  # keep it for the next start; ship the others
            print(f"exposure landing: {local} not shipped: {exc}", file=sys.stderr)
    return shipped


def shipper(settings: Settings) -> Callable[[Path], None] | None:
    """The endpoint's hook for a closed file: ship it to an ``s3://`` landing, or None (local).

    A failed upload is reported on stderr and the file stays in the spool for the next start.
    """
    if not is_remote(settings):
        return None

    def on_closed(local: Path) -> None:
        try:
            ship(settings, local)
        except Exception as exc:  # the server keeps serving; the file is kept
            print(f"exposure landing: {local} not shipped, kept for the next start: {exc}",
                  file=sys.stderr)  # fmt: skip

    return on_closed


def landing_files(settings: Settings, landing: str | None = None) -> list[str]:
    """Every landed LOG file, as paths or ``s3://`` URIs Spark can read (sorted)."""
    landing = landing or settings.exposure_landing_uri
    if not is_s3_uri(landing):
        return sorted(str(p) for p in Path(landing).glob(FILE_GLOB))
    from pyarrow.fs import FileSelector, FileType

    base = _bucket_path(landing)
    infos = object_store(settings).get_file_info(
        FileSelector(base, recursive=True, allow_not_found=True)
    )
    return sorted(
        f"s3://{i.path}"
        for i in infos
        if i.type == FileType.File
        and i.path.endswith(".jsonl")
        and i.path[len(base) + 1 :].startswith("date=")
    )
