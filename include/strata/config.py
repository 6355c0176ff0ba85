"""Strata configuration: one typed settings object, read from the environment.

Every setting has a documented default that makes the embedded, one-machine stack work with no
configuration at all. Production deployments change settings only (environment variables prefixed
``STRATA_`` or a ``.env``-style settings file named by ``STRATA_SETTINGS_FILE``), never code.

Usage:
    >>> from strata.config import Settings
    >>> s = Settings(home="/tmp/strata-doc")
    >>> s.catalog_type, s.spark_master
    ('jdbc', 'local[*]')
    >>> str(s.warehouse_path)
    '/tmp/strata-doc/warehouse'
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The repository checkout this package was installed from (editable install), if any.
_CHECKOUT = Path(__file__).resolve().parents[2]
PROJECT_ROOT: Path | None = _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() else None


#: Who talks to Redis: the loader writes, readers and the endpoint only read (ACL users).
RedisRole = Literal["admin", "writer", "reader"]


def is_s3_uri(uri: str) -> bool:
    """``s3://`` (and Hadoop's ``s3a://``) locations live on object storage."""
    return uri.startswith(("s3://", "s3a://"))


def _default_home() -> Path:
    """Local state lives in ``<checkout>/.strata`` (git-ignored), else ``~/.strata``."""
    return (PROJECT_ROOT or Path.home()) / ".strata"


def _default_jars_dir() -> Path:
    return (PROJECT_ROOT or Path.home() / ".strata") / ".jars"


class Settings(BaseSettings):
    """All knobs of the stack. Field names map to ``STRATA_<NAME>`` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix="STRATA_",
        env_file=os.environ.get("STRATA_SETTINGS_FILE"),
        extra="forbid",
    )

    home: Path = Field(default_factory=_default_home, description="Root of local state.")

    # --- Spark ---------------------------------------------------------------------------
    spark_master: str = Field("local[*]", description="Spark master URL, e.g. spark://host:7077.")
    spark_driver_memory: str = Field("6g", description="Driver heap; local mode runs all here.")
    spark_shuffle_partitions: int = Field(8, ge=1, description="Small default for 2 cores.")
    spark_broadcast_threshold: str = Field(
        "256m",
        description="A join side measured below this at run time is broadcast (AQE). Local mode "
        "runs the whole job in the driver, so a larger one than Spark's 10 MB saves a sort.",
    )
    spark_local_ip: str = Field("127.0.0.1", description="Bind Spark to loopback by default.")
    # On a cluster, executors connect back to the driver: the address they use and the address
    # the driver listens on differ in containers (its service name vs 0.0.0.0), ports are fixed
    # for firewalls, and executors get their own memory, cores and JVM options.
    spark_driver_host: str | None = Field(
        None, description="Address executors use to reach the driver (default spark_local_ip)."
    )
    spark_driver_bind_address: str | None = Field(
        None, description="Address the driver listens on (default spark_local_ip)."
    )
    spark_driver_port: int | None = Field(None, ge=1, le=65535, description="Driver RPC port.")
    spark_block_manager_port: int | None = Field(
        None, ge=1, le=65535, description="Block manager port (the driver's, executors' next)."
    )
    spark_ui_port: int | None = Field(
        None, ge=0, le=65535, description="Driver UI port; 0 turns the UI off; default 4040."
    )
    spark_executor_memory: str | None = Field(None, description="Executor heap, e.g. 1g.")
    spark_executor_cores: int | None = Field(None, ge=1, description="Cores per executor.")
    spark_cores_max: int | None = Field(None, ge=1, description="Cores one job takes at most.")
    spark_executor_java_options: str = Field(
        "", description="Extra executor JVM options (the JIT flag is always set)."
    )
    jars_dir: Path = Field(
        default_factory=_default_jars_dir,
        description="Folder of JVM jars filled by `make setup` (mvn dependency:copy-dependencies).",
    )

    # --- Iceberg catalog -----------------------------------------------------------------
    catalog_name: str = Field(
        "spark_catalog",
        description="Catalog name in Spark and pyiceberg (spark_catalog so dbt-spark sees it).",
    )
    catalog_type: Literal["jdbc", "rest"] = "jdbc"
    catalog_uri: str | None = Field(
        None, description="JDBC SQLite file URI (default <home>/catalog.db) or REST endpoint."
    )
    warehouse: str | None = Field(None, description="Warehouse location; default <home>/warehouse.")
    catalog_credential: SecretStr | None = Field(None, description="REST catalog OAuth credential.")
    s3_endpoint: str | None = Field(
        None, description="S3-compatible endpoint (path-style access); default: AWS S3."
    )
    s3_region: str | None = Field(None, description="S3 region (us-east-1 with an endpoint).")
    s3_access_key_id: SecretStr | None = Field(
        None, description="S3 access key; default: the AWS credential chain (env, profile, role)."
    )
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret key.")
    namespace: str = Field("strata", description="Iceberg namespace (dbt schema) for tables.")

    # --- Exposure landing ----------------------------------------------------------------
    exposure_landing: str | None = Field(
        None,
        description="Where the endpoint's LOG files land for ingestion: a folder (default "
        "<home>/landing/exposures) or s3://bucket/prefix (closed files are shipped there).",
    )

    # --- Redis ---------------------------------------------------------------------------
    redis_url: str = Field(
        default_factory=lambda: (
            f"redis://127.0.0.1:{os.environ.get('STRATA_REDIS_PORT', '6390')}/0"
        ),
        description="Lookup table server; default: the local server scripts/redis.sh starts.",
    )
    redis_password: SecretStr | None = Field(
        None,
        description="Redis AUTH password. Default: the local server's generated password file.",
    )
    redis_writer_user: str = Field(
        "strata-writer", description="ACL user of the loader (writes versions, never FLUSHALL)."
    )
    redis_writer_password: SecretStr | None = Field(
        None,
        description="The writer's password. Default: <home>/redis/writer.password (generated by "
        "scripts/redis.sh); without either, the loader uses STRATA_REDIS_PASSWORD.",
    )
    redis_reader_user: str = Field(
        "strata-reader", description="ACL user of readers and the endpoint (read-only)."
    )
    redis_reader_password: SecretStr | None = Field(
        None,
        description="The reader's password. Default: <home>/redis/reader.password (generated by "
        "scripts/redis.sh); without either, readers use STRATA_REDIS_PASSWORD.",
    )

    lookup_keep_versions: int = Field(
        1,
        ge=0,
        description="Retired versions of the lookup table kept in Redis after a flip: a rollback "
        "to one of them is one pointer flip; older ones are republished from their recorded "
        "Iceberg snapshots. Each costs the memory of a whole version.",
    )

    # --- Table maintenance (strata.maintenance, the maintain_tables DAG, `strata maintain`) --
    maintenance_snapshot_days: float = Field(
        7.0,
        ge=0,
        description="Iceberg snapshots older than this many days are expired (their files "
        "deleted), except the last maintenance_keep_snapshots of each table. A results row's "
        "input snapshots are only reproducible, and a publication only recoverable or rolled "
        "back to, while they are kept.",
    )
    maintenance_keep_snapshots: int = Field(
        5, ge=1, description="Snapshots of each table kept whatever their age."
    )
    maintenance_orphan_hours: float = Field(
        72.0,
        ge=24,
        description="Files no snapshot references are removed once older than this: it must "
        "exceed the longest write (a running job's files are not referenced until it commits). "
        "Iceberg's remove_orphan_files procedure refuses less than 24 hours.",
    )
    maintenance_min_input_files: int = Field(
        5,
        ge=2,
        description="Compaction rewrites a table's small files only in groups of at least this "
        "many (a table of a few files is left as it is).",
    )

    @model_validator(mode="after")
    def _check_rest(self) -> Settings:
        if self.catalog_type == "rest" and not self.catalog_uri:
            raise ValueError("STRATA_CATALOG_URI is required when STRATA_CATALOG_TYPE=rest")
        return self

    # --- Derived locations ---------------------------------------------------------------
    @property
    def warehouse_path(self) -> Path:
        return Path(self.warehouse) if self.warehouse else self.home / "warehouse"

    @property
    def warehouse_is_local(self) -> bool:
        """Whether the warehouse is a folder on this machine (not an ``s3://`` or other URI)."""
        return not (self.warehouse and "://" in self.warehouse)

    @property
    def warehouse_uri(self) -> str:
        if self.warehouse and "://" in self.warehouse:
            return self.warehouse
        return self.warehouse_path.resolve().as_uri()

    @property
    def warehouse_is_s3(self) -> bool:
        """Table files on S3 (or an S3-compatible store): Iceberg's S3FileIO reads and writes."""
        return is_s3_uri(self.warehouse_uri)

    @property
    def exposure_spool_path(self) -> Path:
        """The local folder the endpoint appends LOG lines to (the landing itself when local)."""
        return self.home / "landing" / "exposures"

    @property
    def exposure_landing_uri(self) -> str:
        """The landing the ingest job reads: an ``s3://`` URI or a local folder's path."""
        if self.exposure_landing and is_s3_uri(self.exposure_landing):
            return self.exposure_landing.rstrip("/")
        return str(
            Path(self.exposure_landing) if self.exposure_landing else self.exposure_spool_path
        )

    @property
    def catalog_db_path(self) -> Path:
        return self.home / "catalog.db"

    @property
    def redis_dir(self) -> Path:
        return self.home / "redis"

    @property
    def redis_password_file(self) -> Path:
        return self.redis_dir / "password"

    def redis_secret(self) -> str | None:
        """The configured password, else the one the local server was started with."""
        if self.redis_password is not None:
            return self.redis_password.get_secret_value()
        if self.redis_password_file.is_file():
            return self.redis_password_file.read_text().strip()
        return None

    def redis_credentials(self, role: RedisRole = "admin") -> tuple[str | None, str | None]:
        """(ACL user, password) of a role: "writer" (the loader), "reader" (lookups, the
        endpoint) or "admin" (the URL's user and ``redis_password``: operations, tests).

        A role's password is its setting, else its file under ``<home>/redis`` (written by
        ``scripts/redis.sh``); a deployment with neither (one Redis user) falls back to admin.
        """
        if role == "admin":
            return None, self.redis_secret()
        user, secret = (
            (self.redis_writer_user, self.redis_writer_password)
            if role == "writer"
            else (self.redis_reader_user, self.redis_reader_password)
        )
        if secret is not None:
            return user, secret.get_secret_value()
        path = self.redis_dir / f"{role}.password"
        if path.is_file():
            return user, path.read_text().strip()
        return None, self.redis_secret()

    def table(self, name: str) -> str:
        """Fully-qualified Spark name of a Strata table."""
        return f"{self.catalog_name}.{self.namespace}.{name}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()
