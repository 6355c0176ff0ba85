"""Peak memory and disk of a benchmark's stages, sampled in a background thread.

Memory is the resident set of this process and every process under it (the Spark driver's JVM is
a child of the Python process that started it; DuckDB runs inside it), plus any extra processes
named (a redis-server started apart). Disk is the growth of the filesystem's used bytes since the
monitor started, so Spark's shuffle and spill files and DuckDB's temporary files count too (the
figure assumes nothing else writes much on that filesystem meanwhile).

    with Peaks(data_dir) as peaks:
        with peaks.stage("dbt"):
            ...
    peaks.stages["dbt"]  # {"rss_gb": ..., "disk_gb": ...}
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil

GB = 1e9
#: Peak disk growth of a full build per raw event (bench_aggregates, 102M events, 2026-12-03:
#: +24.3 GB for generated data, the staged copy, the marts and Spark's shuffle files): the
#: benchmarks' disk checks before they generate.
BUILD_BYTES_PER_EVENT = 250


class Peaks:
    """Samples every ``interval`` seconds; ``stage(name)`` records the peaks seen inside it."""

    def __init__(self, path: str | Path, extra_pids: tuple[int, ...] = (), interval: float = 0.5):
        self.path = str(path)
        self.extra_pids = tuple(extra_pids)
        self.interval = interval
        self.stages: dict[str, dict[str, float]] = {}
        self.rss_peak = 0
        self.disk_peak = 0
        self._stage_rss = 0
        self._stage_disk = 0
        self._base_used = shutil.disk_usage(self.path).used
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="peaks", daemon=True)

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _rss(self) -> int:
        me = psutil.Process(os.getpid())
        procs = [me, *me.children(recursive=True)]
        for pid in self.extra_pids:
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(pid))
        total = 0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def sample(self) -> None:
        rss = self._rss()
        disk = max(0, shutil.disk_usage(self.path).used - self._base_used)
        with self._lock:
            self.rss_peak = max(self.rss_peak, rss)
            self.disk_peak = max(self.disk_peak, disk)
            self._stage_rss = max(self._stage_rss, rss)
            self._stage_disk = max(self._stage_disk, disk)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(psutil.Error, OSError):
                self.sample()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        with self._lock:
            self._stage_rss = self._stage_disk = 0
        self.sample()
        try:
            yield
        finally:
            self.sample()
            with self._lock:
                self.stages[name] = {
                    "rss_gb": round(self._stage_rss / GB, 2),
                    "disk_gb": round(self._stage_disk / GB, 2),
                }

    def line(self, name: str) -> str:
        s = self.stages[name]
        return f"peak memory {s['rss_gb']:.1f} GB, disk +{s['disk_gb']:.1f} GB"
