"""Ingest the device-register endpoint's LOG events (JSON lines) into Iceberg as exposure logs.

The endpoint writes one seed-004 LOG event per served experiment into
``<STRATA_HOME>/landing/exposures/date=YYYY-MM-DD/*.jsonl``, shipped once closed to an ``s3://``
landing when ``STRATA_EXPOSURE_LANDING`` names one (``strata.landing``). This job reads the
landing (a folder, or object storage through Hadoop's S3A on the executors) with an explicit
schema, merges well-formed events into ``exposure_logs`` by their message id ``mid`` (so
re-ingesting a file never double-counts), and quarantines lines that are not valid LOG events
in ``exposure_log_rejects`` with the file they came from — counted, never dropped.

    spark-submit spark_jobs/ingest_exposure_logs.py [--landing PATH_OR_S3_URI]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from strata.contracts import EXPOSURE_LOG_REJECTS, EXPOSURE_LOGS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

#: The parts of seed 004's LOG event that exposures need; other fields are ignored.
LOG_EVENT_DDL = """
    eid STRING,
    ets BIGINT,
    ver STRING,
    mid STRING,
    edata STRUCT<
        type: STRING,
        params: ARRAY<STRUCT<
            title: STRING, experimentId: STRING, variantId: STRING,
            userId: STRING, deviceId: STRING, url: STRING>>>,
    _corrupt_record STRING
"""
TABLE_DDL = """
    mid STRING, ets BIGINT, eid STRING, ver STRING,
    edata STRUCT<type: STRING, params: ARRAY<STRUCT<
        title: STRING, experimentId: STRING, variantId: STRING,
        userId: STRING, deviceId: STRING, url: STRING>>>,
    source_file STRING, ingested_at TIMESTAMP
"""
REJECTS_DDL = "raw_line STRING, reason STRING, source_file STRING, ingested_at TIMESTAMP"


@dataclass(frozen=True)
class IngestResult:
    read: int
    merged: int
    rejected: int


def ensure_tables(spark: SparkSession, table) -> None:
    """Create the (possibly empty) tables, so downstream models always have a source."""
    spark.sql(f"CREATE TABLE IF NOT EXISTS {table(EXPOSURE_LOGS)} ({TABLE_DDL}) USING iceberg")
    spark.sql(
        f"CREATE TABLE IF NOT EXISTS {table(EXPOSURE_LOG_REJECTS)} ({REJECTS_DDL}) USING iceberg"
    )


def split_valid(raw: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Well-formed LOG events, and the rest with a reason."""
    from pyspark.sql import functions as F

    reason = (
        F.when(F.col("_corrupt_record").isNotNull(), "not_json_or_wrong_types")
        .when(F.col("eid").isNull() | (F.col("eid") != "LOG"), "not_a_log_event")
        .when(F.col("mid").isNull(), "missing_mid")
        .when(F.col("ets").isNull(), "missing_ets")
        .when(F.size(F.coalesce(F.col("edata.params"), F.array())) == 0, "no_params")
    )
    tagged = raw.withColumn("reason", reason)
    valid = tagged.where(F.col("reason").isNull()).drop("reason", "_corrupt_record")
    rejects = tagged.where(F.col("reason").isNotNull()).select(
        F.coalesce(
            F.col("_corrupt_record"), F.to_json(F.struct("eid", "ets", "mid", "edata"))
        ).alias("raw_line"),
        "reason",
        "source_file",
    )
    return valid, rejects


def ingest(spark: SparkSession, landing: Path | str, table, settings=None) -> IngestResult:
    """Merge every landed file (a folder, or an ``s3://`` landing listed with ``settings``)."""
    from pyspark.sql import functions as F

    from strata.config import get_settings
    from strata.landing import landing_files

    ensure_tables(spark, table)
    files = landing_files(settings or get_settings(), str(landing))
    if not files:
        return IngestResult(0, 0, 0)
    raw = (
        spark.read.schema(LOG_EVENT_DDL)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", "_corrupt_record")
        .json(files)
        .withColumn("source_file", F.input_file_name())
        .cache()  # Spark forbids querying only the corrupt-record column of an uncached JSON read
    )
    valid, rejects = split_valid(raw)
    now = F.current_timestamp()
    valid = valid.dropDuplicates(["mid"]).withColumn("ingested_at", now)
    valid.createOrReplaceTempView("incoming_exposure_logs")
    spark.sql(
        f"""
        MERGE INTO {table(EXPOSURE_LOGS)} t
        USING incoming_exposure_logs s
        ON t.mid = s.mid
        WHEN NOT MATCHED THEN INSERT *
        """
    )
    rejects = rejects.withColumn("ingested_at", now)
    rejects.createOrReplaceTempView("incoming_exposure_log_rejects")
    spark.sql(
        f"""
        MERGE INTO {table(EXPOSURE_LOG_REJECTS)} t
        USING (SELECT DISTINCT * FROM incoming_exposure_log_rejects) s
        ON t.raw_line = s.raw_line AND t.source_file = s.source_file
        WHEN NOT MATCHED THEN INSERT *
        """
    )
    result = IngestResult(read=raw.count(), merged=valid.count(), rejected=rejects.count())
    raw.unpersist()
    return result


def main(argv: list[str] | None = None) -> IngestResult:
    from strata.config import get_settings
    from strata.stack import spark_session

    settings = get_settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--landing",
        default=settings.exposure_landing_uri,
        help="landing of the endpoint's LOG events (date=YYYY-MM-DD/*.jsonl): a folder or an "
        "s3:// URI (default: STRATA_EXPOSURE_LANDING, else <home>/landing/exposures)",
    )
    args = parser.parse_args(argv)
    result = ingest(
        spark_session(settings, "strata-ingest-exposures"), args.landing, settings.table, settings
    )
    print(
        f"exposure logs: {result.read:,} lines read, {result.merged:,} merged by mid, "
        f"{result.rejected:,} quarantined in {settings.table(EXPOSURE_LOG_REJECTS)}"
    )
    return result


if __name__ == "__main__":
    main()
