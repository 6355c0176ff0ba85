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

from strata.config import RedisRole, Settings, get_settings, is_s3_uri
from strata.errors import StackError

if TYPE_CHECKING:
    import pyarrow as pa
    import redis
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table
    from pyspark.sql import SparkSession

ICEBERG_EXTENSIONS = "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions"
#: Log4j 2 configuration of the Spark driver: warnings and errors, on stdout.
LOG4J_CONF = Path(__file__).resolve().parent / "conf" / "log4j2.properties"


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
    """Spark properties registering the Iceberg catalog under ``settings.catalog_name``.

    For the embedded default it first creates the catalog's SQL tables if missing
    (:func:`create_catalog_tables`): Spark's catalog is configured not to.
    """
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
            # One pooled connection is enough for a driver's catalog calls (a second one was
            # once suspected of SQLITE_BUSY_SNAPSHOT; the cause was the pinned snapshot below).
            f"{prefix}.clients": "1",
        }
        if settings.catalog_uri is None:
            # Iceberg <= 1.10 leaves the ResultSets of its "do the catalog tables exist?" check
            # open when they do; sqlite-jdbc keeps those statements stepped, so the session's
            # connection sits in a read transaction pinned to the snapshot of its start: it
            # reads stale metadata and, once anyone else commits, fails every commit with
            # SQLITE_BUSY_SNAPSHOT (docs/adr/0001). Skip that check; the tables exist already.
            create_catalog_tables(settings)
            conf[f"{prefix}.jdbc.init-catalog-tables"] = "false"
    else:
        conf |= {
            f"{prefix}.type": "rest",
            f"{prefix}.uri": str(settings.catalog_uri),
            f"{prefix}.warehouse": settings.warehouse or "",
        }
        if settings.catalog_credential:
            conf[f"{prefix}.credential"] = settings.catalog_credential.get_secret_value()
    return conf | {f"{prefix}.{k}": v for k, v in iceberg_io_props(settings).items()}


def iceberg_io_props(settings: Settings) -> dict[str, str]:
    """Iceberg FileIO properties chosen from the warehouse URI, for either catalog type.

    ``s3://`` warehouses get Iceberg's S3FileIO with the endpoint, region and credentials from
    settings; they travel with the FileIO to every executor, so workers need no AWS environment
    of their own (without keys in settings, the AWS default chain applies on each machine).
    Anything else keeps Iceberg's default, Hadoop's FileIO: local paths, ``file://``, ``hdfs://``.
    """
    if not settings.warehouse_is_s3:
        return {}
    props = {"io-impl": "org.apache.iceberg.aws.s3.S3FileIO"}
    if settings.s3_endpoint:
        props |= {"s3.endpoint": settings.s3_endpoint, "s3.path-style-access": "true"}
    if region := _s3_region(settings):
        props["client.region"] = region
    if settings.s3_access_key_id and settings.s3_secret_access_key:
        props |= {
            "s3.access-key-id": settings.s3_access_key_id.get_secret_value(),
            "s3.secret-access-key": settings.s3_secret_access_key.get_secret_value(),
        }
    return props


def _s3_region(settings: Settings) -> str | None:
    """The configured region; an S3-compatible endpoint needs one too, any will do."""
    return settings.s3_region or ("us-east-1" if settings.s3_endpoint else None)


def _uses_s3(settings: Settings) -> bool:
    return settings.warehouse_is_s3 or is_s3_uri(settings.exposure_landing_uri)


def hadoop_s3_conf(settings: Settings) -> dict[str, str]:
    """Hadoop S3A properties, so Spark reads ``s3://`` files that are not Iceberg tables (the
    exposure landing) with the same endpoint, region and credentials; set on the driver, they
    reach every executor. Needs hadoop-aws on the classpath (``make setup JVM_PROFILE=aws``)."""
    if not _uses_s3(settings):
        return {}
    h = "spark.hadoop.fs.s3a"
    conf = {
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        f"{h}.path.style.access": "true" if settings.s3_endpoint else "false",
    }
    if settings.s3_endpoint:
        conf[f"{h}.endpoint"] = settings.s3_endpoint
        conf[f"{h}.connection.ssl.enabled"] = str(settings.s3_endpoint.startswith("https"))
    if region := _s3_region(settings):
        conf[f"{h}.endpoint.region"] = region
    if settings.s3_access_key_id and settings.s3_secret_access_key:
        conf[f"{h}.access.key"] = settings.s3_access_key_id.get_secret_value()
        conf[f"{h}.secret.key"] = settings.s3_secret_access_key.get_secret_value()
    return conf


def pyiceberg_s3_props(settings: Settings) -> dict[str, str]:
    """The same S3 endpoint, region and credentials for pyiceberg's FileIO (no JVM)."""
    if not _uses_s3(settings):
        return {}
    props: dict[str, str] = {}
    if settings.s3_endpoint:
        props |= {"s3.endpoint": settings.s3_endpoint, "s3.force-virtual-addressing": "false"}
    if region := _s3_region(settings):
        props["s3.region"] = region
    if settings.s3_access_key_id and settings.s3_secret_access_key:
        props |= {
            "s3.access-key-id": settings.s3_access_key_id.get_secret_value(),
            "s3.secret-access-key": settings.s3_secret_access_key.get_secret_value(),
        }
    return props


def cluster_conf(settings: Settings) -> dict[str, str]:
    """Driver address and ports, executor resources and JVM options (all optional)."""
    conf = {
        "spark.driver.host": settings.spark_driver_host or settings.spark_local_ip,
        "spark.driver.bindAddress": settings.spark_driver_bind_address or settings.spark_local_ip,
        # The JIT flag matters most on executors, where the generated code runs on a cluster.
        "spark.executor.extraJavaOptions": " ".join(
            ["-XX:-DontCompileHugeMethods", settings.spark_executor_java_options]
        ).strip(),
    }
    optional = {
        "spark.driver.port": settings.spark_driver_port,
        "spark.driver.blockManager.port": settings.spark_block_manager_port,
        "spark.blockManager.port": settings.spark_block_manager_port
        and settings.spark_block_manager_port + 1,
        "spark.executor.memory": settings.spark_executor_memory,
        "spark.executor.cores": settings.spark_executor_cores,
        "spark.cores.max": settings.spark_cores_max,
    }
    conf |= {k: str(v) for k, v in optional.items() if v is not None}
    if settings.spark_ui_port == 0:
        conf["spark.ui.enabled"] = "false"
    elif settings.spark_ui_port is not None:
        conf["spark.ui.port"] = str(settings.spark_ui_port)
    return conf


def spark_conf(settings: Settings | None = None) -> dict[str, str]:
    """Every Spark property Strata sets; shared by the session factory and dbt's profile."""
    settings = settings or get_settings()
    conf = {
        "spark.jars": ",".join(str(j) for j in jvm_jars(settings)),
        "spark.sql.extensions": ICEBERG_EXTENSIONS,
        "spark.sql.defaultCatalog": settings.catalog_name,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(settings.spark_shuffle_partitions),
        "spark.sql.warehouse.dir": str((settings.home / "spark-warehouse").resolve()),
        # No Hive metastore: every table lives in the Iceberg catalog. dbt-spark's session method
        # calls enableHiveSupport(), which would boot an embedded Derby database that a second
        # concurrent Spark process cannot open ("Another instance of Derby may have already
        # booted the database"); this property, applied after it, keeps the session in memory.
        "spark.sql.catalogImplementation": "in-memory",
        "spark.driver.memory": settings.spark_driver_memory,
        # -XX:-DontCompileHugeMethods: let the JIT compile Spark's large generated methods (the
        # assignment job's per-layer CASE WHENs run ~5x faster). Log4j: warnings and errors to
        # stdout (Airflow shows a task's stderr as errors), see conf/log4j2.properties.
        "spark.driver.extraJavaOptions": (
            f"-XX:-DontCompileHugeMethods -Dlog4j2.configurationFile={LOG4J_CONF.as_uri()}"
        ),
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.autoBroadcastJoinThreshold": settings.spark_broadcast_threshold,
        # The partial group limit Spark adds under `row_number() ... = 1` sorts every row before
        # the shuffle; deduplicating nearly unique event ids, that is a second full sort.
        "spark.sql.optimizer.windowGroupLimitThreshold": "-1",
    }
    return conf | cluster_conf(settings) | hadoop_s3_conf(settings) | catalog_conf(settings)


def spark_session(settings: Settings | None = None, app_name: str = "strata") -> SparkSession:
    """The shared SparkSession (created once per process; later calls return the same one)."""
    settings = settings or get_settings()
    os.environ.setdefault("SPARK_LOCAL_IP", settings.spark_local_ip)
    settings.home.mkdir(parents=True, exist_ok=True)
    if settings.catalog_type == "jdbc" and settings.warehouse_is_local:
        settings.warehouse_path.mkdir(parents=True, exist_ok=True)

    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(settings.spark_master).appName(app_name)
    for key, value in spark_conf(settings).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    spark.sql(f"CREATE NAMESPACE IF NOT EXISTS {settings.catalog_name}.{settings.namespace}")
    return spark


def create_catalog_tables(settings: Settings) -> None:
    """Create the embedded catalog's SQL tables if missing (pyiceberg's ``SqlCatalog`` does).

    Spark's catalog is told not to (``jdbc.init-catalog-tables=false``, see ``catalog_conf``), so
    whatever starts a Spark session on the embedded catalog calls this first. Two processes
    creating them at once: the loser sees "already exists" and the second look finds them.
    """
    from sqlalchemy.exc import OperationalError

    try:
        iceberg_catalog(settings)
    except OperationalError:
        iceberg_catalog(settings)


def iceberg_catalog(settings: Settings | None = None) -> Catalog:
    """pyiceberg view of the same catalog Spark uses: read and write tables without a JVM."""
    settings = settings or get_settings()
    props: dict[str, Any]
    if settings.catalog_type == "jdbc":
        from pyiceberg.catalog.sql import SqlCatalog

        settings.home.mkdir(parents=True, exist_ok=True)
        if settings.warehouse_is_local:  # an s3:// warehouse is not a folder to create here
            settings.warehouse_path.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{settings.catalog_db_path.resolve()}?timeout=30"
        return SqlCatalog(
            settings.catalog_name,
            uri=uri,
            warehouse=settings.warehouse_uri,
            **pyiceberg_s3_props(settings),
        )

    from pyiceberg.catalog import load_catalog

    props = {"type": "rest", "uri": settings.catalog_uri}
    if settings.warehouse:
        props["warehouse"] = settings.warehouse
    if settings.catalog_credential:
        props["credential"] = settings.catalog_credential.get_secret_value()
    return load_catalog(settings.catalog_name, **props, **pyiceberg_s3_props(settings))


#: Attempts of a schema evolution that loses a commit race to another writer.
SCHEMA_COMMIT_ATTEMPTS = 5


def evolve_schema(table: Table, arrow_schema: pa.Schema) -> list[str]:
    """Add the top-level columns of ``arrow_schema`` that ``table`` lacks, in place (no drop).

    A table written by a previous version keeps its rows, field ids and columns; the new columns
    are added as optional (Iceberg cannot require a value from rows written before they
    existed) in one schema commit with pyiceberg's ``update_schema().union_by_name``. Columns the
    table has are left as they are (also their required flags): an incompatible type stays an
    error of the write. Columns the table has and ``arrow_schema`` lacks are kept (older writers
    can still append; readers see nulls). Returns the names added, ``[]`` when none (no commit).

    Call it before writing, after ``create_table_if_not_exists``. Writers evolving one table at
    once (mapped tasks): the loser's commit fails on the changed schema; it reloads the table and
    adds what is still missing (usually nothing).
    """
    import pyarrow as pa
    from pyiceberg.exceptions import CommitFailedException

    for attempt in range(SCHEMA_COMMIT_ATTEMPTS):
        have = {f.name for f in table.schema().fields}
        missing = [f.with_nullable(True) for f in arrow_schema if f.name not in have]
        if not missing:
            return []
        try:
            with table.update_schema() as update:
                update.union_by_name(pa.schema(missing))
        except CommitFailedException:
            if attempt == SCHEMA_COMMIT_ATTEMPTS - 1:
                raise
            table.refresh()
            continue
        return [f.name for f in missing]
    return []  # pragma: no cover (the loop returns or raises)


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
    # The profile may hold secrets (a REST catalog credential, S3 keys): owner-only, 0600, from
    # the moment the file exists (not chmod after writing).
    path = target_dir / "profiles.yml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
    with os.fdopen(fd, "w") as out:
        out.write(yaml.safe_dump(profile, sort_keys=False))
    return target_dir
