"""Factories for the stack every Strata component shares: Spark, the Iceberg catalog, Redis.

One place decides how Spark talks to Iceberg, so Spark jobs, dbt-spark (through the generated
``profiles.yml``), pyiceberg readers and tests all see the same tables.

Embedded default: Iceberg's JDBC catalog on a SQLite file, registered in Spark as
``spark_catalog`` (an Iceberg ``SparkCatalog``, not ``SparkSessionCatalog``: the latter loses
namespaces on JDBC and makes dbt rebuild incremental models), and pyiceberg's ``SqlCatalog`` on the
same file under the same name. Production: an Iceberg REST catalog on object storage, chosen by
``STRATA_CATALOG_TYPE=rest`` alone.

Nothing here imports pyspark, pyiceberg or redis at module import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from strata.config import RedisRole, Settings, get_settings
from strata.errors import StackError

if TYPE_CHECKING:
    import redis
    from pyiceberg.catalog import Catalog
    from pyspark.sql import SparkSession

ICEBERG_EXTENSIONS = "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions"


def jvm_jars(settings: Settings) -> list[Path]:
    """The jars `make setup` copied from Maven Central; fails clearly when setup has not run."""
    jars = sorted(settings.jars_dir.glob("*.jar"))
    if not any(j.name.startswith("iceberg-spark-runtime") for j in jars):
        raise StackError(
            f"no Iceberg Spark runtime jar in {settings.jars_dir}; run `make setup` "
            "(it copies the JVM dependencies declared in jvm/pom.xml)"
        )
    return jars


def catalog_conf(settings: Settings) -> dict[str, str]:
    """Spark properties registering the Iceberg catalog under ``settings.catalog_name``."""
    prefix = f"spark.sql.catalog.{settings.catalog_name}"
    conf = {
        prefix: "org.apache.iceberg.spark.SparkCatalog",
        f"{prefix}.cache-enabled": "false",
        # New tables write Parquet with zstd level 1 and a small dictionary limit, so unique
        # strings (event ids, unit ids) go plain instead of filling a dictionary first: writes
        # about a third cheaper for slightly larger files; low-cardinality columns keep theirs.
        f"{prefix}.table-default.write.parquet.compression-level": "1",
        f"{prefix}.table-default.write.parquet.dict-size-bytes": "65536",
    }
    if settings.catalog_type == "jdbc":
        # WAL lets readers and the committer work at once; busy_timeout waits out the rest
        # (without them, concurrent catalog connections fail commits with SQLITE_BUSY).
        uri = settings.catalog_uri or (
            f"jdbc:sqlite:{settings.catalog_db_path.resolve()}?journal_mode=WAL&busy_timeout=30000"
        )
        conf |= {
            f"{prefix}.type": "jdbc",
            f"{prefix}.uri": uri,
            f"{prefix}.warehouse": settings.warehouse_uri,
            f"{prefix}.jdbc.schema-version": "V1",
            # One pooled connection: with two, one can hold a stale WAL read snapshot while the
            # other commits, and its next commit fails with SQLITE_BUSY_SNAPSHOT.
            f"{prefix}.clients": "1",
        }
    else:
        conf |= {
            f"{prefix}.type": "rest",
            f"{prefix}.uri": str(settings.catalog_uri),
            f"{prefix}.warehouse": settings.warehouse or "",
            f"{prefix}.io-impl": "org.apache.iceberg.aws.s3.S3FileIO",
        }
        if settings.catalog_credential:
            conf[f"{prefix}.credential"] = settings.catalog_credential.get_secret_value()
        if settings.s3_endpoint:
            conf[f"{prefix}.s3.endpoint"] = settings.s3_endpoint
            conf[f"{prefix}.s3.path-style-access"] = "true"
    return conf


def spark_conf(settings: Settings | None = None) -> dict[str, str]:
    """Every Spark property Strata sets; shared by the session factory and dbt's profile."""
    settings = settings or get_settings()
    derby_home = settings.home / "derby"  # dbt-spark always enables Hive support
    conf = {
        "spark.jars": ",".join(str(j) for j in jvm_jars(settings)),
        "spark.sql.extensions": ICEBERG_EXTENSIONS,
        "spark.sql.defaultCatalog": settings.catalog_name,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(settings.spark_shuffle_partitions),
        "spark.sql.warehouse.dir": str((settings.home / "spark-warehouse").resolve()),
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.driver.host": settings.spark_local_ip,
        "spark.driver.bindAddress": settings.spark_local_ip,
        # -XX:-DontCompileHugeMethods: let the JIT compile Spark's large generated methods (the
        # assignment job's per-layer CASE WHENs run ~5x faster); derby: dbt-spark's Hive metastore.
        "spark.driver.extraJavaOptions": (
            f"-XX:-DontCompileHugeMethods -Dderby.system.home={derby_home.resolve()}"
        ),
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.autoBroadcastJoinThreshold": settings.spark_broadcast_threshold,
        # The partial group limit Spark adds under `row_number() ... = 1` sorts every row before
        # the shuffle; deduplicating nearly unique event ids, that is a second full sort for nothing.
        "spark.sql.optimizer.windowGroupLimitThreshold": "-1",
    }
    return conf | catalog_conf(settings)


def spark_session(settings: Settings | None = None, app_name: str = "strata") -> SparkSession:
    """The shared SparkSession (created once per process; later calls return the same one)."""
    settings = settings or get_settings()
    os.environ.setdefault("SPARK_LOCAL_IP", settings.spark_local_ip)
    settings.home.mkdir(parents=True, exist_ok=True)
    if settings.catalog_type == "jdbc":
        settings.warehouse_path.mkdir(parents=True, exist_ok=True)

    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(settings.spark_master).appName(app_name)
    for key, value in spark_conf(settings).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    spark.sql(f"CREATE NAMESPACE IF NOT EXISTS {settings.catalog_name}.{settings.namespace}")
    return spark


def iceberg_catalog(settings: Settings | None = None) -> Catalog:
    """pyiceberg view of the same catalog Spark uses: read and write tables without a JVM."""
    settings = settings or get_settings()
    props: dict[str, Any]
    if settings.catalog_type == "jdbc":
        from pyiceberg.catalog.sql import SqlCatalog

        settings.home.mkdir(parents=True, exist_ok=True)
        settings.warehouse_path.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{settings.catalog_db_path.resolve()}?timeout=30"
        return SqlCatalog(settings.catalog_name, uri=uri, warehouse=settings.warehouse_uri)

    from pyiceberg.catalog import load_catalog

    props = {"type": "rest", "uri": settings.catalog_uri}
    if settings.warehouse:
        props["warehouse"] = settings.warehouse
    if settings.catalog_credential:
        props["credential"] = settings.catalog_credential.get_secret_value()
    if settings.s3_endpoint:
        props |= {"s3.endpoint": settings.s3_endpoint, "s3.force-virtual-addressing": "false"}
    return load_catalog(settings.catalog_name, **props)


def redis_client(
    settings: Settings | None = None,
    *,
    role: RedisRole = "admin",
    password: str | None = None,
    **kwargs: Any,
) -> redis.Redis:
    """A Redis client for the lookup server as ``role`` (least privilege: the loader connects as
    "writer", readers and the endpoint as "reader"; "admin" is the URL's user, for operations).
    Credentials come from configuration only (``Settings.redis_credentials``); ``password``
    overrides the role's (tests)."""
    import redis as redis_lib
    from redis.connection import parse_url

    settings = settings or get_settings()
    user, secret = settings.redis_credentials(role)
    options = parse_url(settings.redis_url)
    if user is not None:
        options["username"] = user
    options["password"] = password if password is not None else secret
    pool = redis_lib.ConnectionPool(**(options | kwargs))
    client = redis_lib.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client


def write_dbt_profile(settings: Settings | None = None, target_dir: Path | None = None) -> Path:
    """Write ``profiles.yml`` for dbt-spark's session method from the same Spark properties.

    dbt-spark (session mode) starts its own SparkSession in-process; it takes Spark settings from
    ``server_side_parameters``. Returns the directory to pass as ``--profiles-dir``.
    """
    settings = settings or get_settings()
    target_dir = target_dir or settings.home / "dbt"
    target_dir.mkdir(parents=True, exist_ok=True)
    conf = spark_conf(settings) | {"spark.master": settings.spark_master}
    profile = {
        "strata": {
            "target": "local",
            "outputs": {
                "local": {
                    "type": "spark",
                    "method": "session",
                    "host": "NA",
                    "schema": settings.namespace,
                    "threads": 1,
                    "server_side_parameters": conf,
                }
            },
        }
    }
    (target_dir / "profiles.yml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return target_dir
