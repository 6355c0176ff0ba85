"""Run a Great Expectations suite on a Spark DataFrame as a gate between pipeline stages.

``check("goal_aggregates")`` validates the table with the suite of the same name, writes a
readable report (which expectation failed, on how many rows, sample values) and the GX data docs
under ``<STRATA_HOME>/expectations/``, and raises :class:`strata.errors.DataError` when the suite
fails — so an Airflow task calling it fails and its downstream tasks do not run.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expectations.suites import SUITES
from strata.config import Settings, get_settings
from strata.errors import DataError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

SAMPLE_SIZE = 5


@dataclass(frozen=True)
class GateResult:
    suite: str
    success: bool
    evaluated: int
    failed: list[dict[str, Any]]
    report_path: Path
    data_docs_index: Path | None

    def summary(self) -> str:
        verdict = "passed" if self.success else f"FAILED ({len(self.failed)} expectations)"
        return f"{self.suite}: {self.evaluated} expectations, {verdict}; report {self.report_path}"


def _context(root: Path):
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # GX logs ~250 INFO lines per run about its own internals; a gate's log keeps its verdict.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    root.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(root))
    # No progress bars: they go to stderr, which an Airflow task log shows as errors.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _failure(result) -> dict[str, Any]:
    """One failed expectation, in words: what it checked, how many rows broke it, examples."""
    config = result.expectation_config
    details = result.result or {}
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)}
    return {
        "expectation": config.type,
        "kwargs": kwargs,
        "unexpected_count": details.get("unexpected_count"),
        "unexpected_percent": details.get("unexpected_percent"),
        "observed_value": details.get("observed_value"),
        "sample": (details.get("partial_unexpected_list") or [])[:SAMPLE_SIZE],
    }


def _write_report(path: Path, suite: str, table: str, success: bool, failed: list, n: int) -> None:
    lines = [
        f"# {suite} on {table}: {'PASSED' if success else 'FAILED'}",
        "",
        f"{n} expectations evaluated, {len(failed)} failed.",
        "",
    ]
    for f in failed:
        lines += [
            f"## {f['expectation']} {json.dumps(f['kwargs'], default=str)}",
            f"- rows breaking it: {f['unexpected_count']} ({f['unexpected_percent']}%)"
            if f["unexpected_count"] is not None
            else f"- observed: {f['observed_value']}",
            f"- sample: {json.dumps(f['sample'], default=str)}",
            "",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def _check(
    suite: str,
    df: DataFrame | None = None,
    settings: Settings | None = None,
    *,
    raise_on_failure: bool = True,
) -> GateResult:
    """Validate ``df`` (default: the Iceberg table named like the suite) and gate on the result."""
    import great_expectations as gx

    if suite not in SUITES:
        raise ValueError(f"unknown expectation suite {suite!r}; known: {sorted(SUITES)}")
    settings = settings or get_settings()
    if df is None:
        from strata.stack import spark_session

        df = spark_session(settings).table(settings.table(suite))
    root = settings.home / "expectations"
    context = _context(root / "gx")
    source = context.data_sources.add_or_update_spark(name="strata_spark")
    asset = next((a for a in source.assets if a.name == suite), None) or source.add_dataframe_asset(
        name=suite
    )
    batch_def = next(
        (b for b in asset.batch_definitions if b.name == "whole"), None
    ) or asset.add_batch_definition_whole_dataframe("whole")
    expectation_suite = context.suites.add_or_update(SUITES[suite]())
    validation = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=suite, data=batch_def, suite=expectation_suite)
    )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=f"{suite}_gate",
            validation_definitions=[validation],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_SIZE},
        )
    )
    run = checkpoint.run(batch_parameters={"dataframe": df})
    (validation_result,) = run.run_results.values()
    failed = [_failure(r) for r in validation_result.results if not r.success]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    report = root / "reports" / suite / f"{stamp}.md"
    _write_report(
        report, suite, settings.table(suite), run.success, failed, len(validation_result.results)
    )
    docs = root / "gx" / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    result = GateResult(
        suite,
        bool(run.success),
        len(validation_result.results),
        failed,
        report,
        docs if docs.exists() else None,
    )
    if raise_on_failure and not result.success:
        raise DataError(f"{result.summary()}\n{report.read_text()}")
    return result


def check(
    suite: str,
    df: DataFrame | None = None,
    settings: Settings | None = None,
    *,
    raise_on_failure: bool = True,
) -> GateResult:
    """Validate ``df`` (default: the Iceberg table named like the suite) and gate on the result.

    Gates running at once (two Airflow tasks) share one GX file context — its config, suites
    and data docs — so each holds an exclusive file lock on it while it validates.
    """
    import fcntl

    settings = settings or get_settings()
    lock_path = settings.home / "expectations" / ".gx.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _check(suite, df, settings, raise_on_failure=raise_on_failure)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
