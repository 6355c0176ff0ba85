"""The embedded stack: Spark and pyiceberg share one Iceberg catalog, both ways round."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from strata.config import Settings
from strata.errors import StackError
from strata.stack import catalog_conf, iceberg_catalog, jvm_jars, spark_conf


class TestSparkAndPyicebergShareTables:
    def test_spark_writes_pyiceberg_reads(self, spark, settings):
        rows = [(1, "a", dt.date(2026, 11, 1)), (2, None, dt.date(2026, 11, 2))]
        spark.createDataFrame(rows, "id bigint, s string, d date").writeTo(
            settings.table("stack_spark_written")
        ).using("iceberg").createOrReplace()

        table = iceberg_catalog(settings).load_table(f"{settings.namespace}.stack_spark_written")
        got = table.scan().to_arrow().sort_by("id").to_pylist()

        assert got == [
            {"id": 1, "s": "a", "d": dt.date(2026, 11, 1)},
            {"id": 2, "s": None, "d": dt.date(2026, 11, 2)},
        ]

    def test_pyiceberg_writes_spark_reads_in_live_session(self, spark, settings):
        catalog = iceberg_catalog(settings)
        name = f"{settings.namespace}.stack_py_written"
        if catalog.table_exists(name):
            catalog.drop_table(name)
        table = catalog.create_table(
            name, schema=pa.schema([("id", pa.int64()), ("v", pa.float64())])
        )
        table.append(pa.table({"id": [1, 2, 3], "v": [0.5, 1.5, None]}))

        first = spark.table(settings.table("stack_py_written")).orderBy("id").collect()
        table.append(pa.table({"id": [4], "v": [9.0]}))  # a second commit, seen without restart
        second = spark.table(settings.table("stack_py_written")).count()

        assert [(r.id, r.v) for r in first] == [(1, 0.5), (2, 1.5), (3, None)]
        assert second == 4

    def test_namespace_is_listed_by_both(self, spark, settings):
        assert (settings.namespace,) in iceberg_catalog(settings).list_namespaces()
        namespaces = [
            r[0] for r in spark.sql(f"SHOW NAMESPACES IN {settings.catalog_name}").collect()
        ]
        assert settings.namespace in namespaces


class TestConfiguration:
    def test_embedded_default_is_jdbc_on_sqlite_under_home(self, tmp_path):
        s = Settings(home=tmp_path, jars_dir=tmp_path)
        conf = catalog_conf(s)
        assert conf["spark.sql.catalog.spark_catalog"] == "org.apache.iceberg.spark.SparkCatalog"
        assert conf["spark.sql.catalog.spark_catalog.type"] == "jdbc"
        assert conf["spark.sql.catalog.spark_catalog.uri"].startswith(
            f"jdbc:sqlite:{tmp_path / 'catalog.db'}?"
        )
        assert conf["spark.sql.catalog.spark_catalog.jdbc.schema-version"] == "V1"
        assert (
            conf["spark.sql.catalog.spark_catalog.warehouse"] == (tmp_path / "warehouse").as_uri()
        )

    def test_rest_catalog_by_configuration_only(self, tmp_path, monkeypatch):
        monkeypatch.setenv("STRATA_CATALOG_TYPE", "rest")
        monkeypatch.setenv("STRATA_CATALOG_URI", "http://127.0.0.1:8181")
        monkeypatch.setenv("STRATA_WAREHOUSE", "s3://lake/warehouse")
        monkeypatch.setenv("STRATA_S3_ENDPOINT", "http://127.0.0.1:9000")
        conf = catalog_conf(Settings(home=tmp_path))
        assert conf["spark.sql.catalog.spark_catalog.type"] == "rest"
        assert conf["spark.sql.catalog.spark_catalog.uri"] == "http://127.0.0.1:8181"
        assert conf["spark.sql.catalog.spark_catalog.warehouse"] == "s3://lake/warehouse"
        assert (
            conf["spark.sql.catalog.spark_catalog.io-impl"] == "org.apache.iceberg.aws.s3.S3FileIO"
        )

    def test_rest_without_uri_is_a_clear_error(self, monkeypatch):
        monkeypatch.setenv("STRATA_CATALOG_TYPE", "rest")
        with pytest.raises(ValueError, match="STRATA_CATALOG_URI is required"):
            Settings()

    def test_unknown_setting_in_settings_file_is_rejected(self, tmp_path, monkeypatch):
        env = tmp_path / "strata.env"
        env.write_text("STRATA_SPARK_MASTR=local[2]\n")
        with pytest.raises(ValueError, match="spark_mastr"):
            Settings(_env_file=env)

    def test_missing_jars_name_the_fix(self, tmp_path):
        with pytest.raises(StackError, match="run `make setup`"):
            jvm_jars(Settings(home=tmp_path, jars_dir=tmp_path / "nothing"))

    def test_spark_binds_to_loopback_and_loads_iceberg(self, settings):
        conf = spark_conf(settings)
        assert conf["spark.driver.bindAddress"] == "127.0.0.1"
        assert "IcebergSparkSessionExtensions" in conf["spark.sql.extensions"]
        assert "iceberg-spark-runtime-3.5_2.12" in conf["spark.jars"]
        assert "sqlite-jdbc" in conf["spark.jars"]


def test_dbt_profile_with_secrets_is_owner_only(settings, tmp_path):
    """The generated profiles.yml can hold a REST catalog credential and S3 keys: 0600."""
    import stat

    from strata.config import Settings
    from strata.stack import write_dbt_profile

    rest = Settings(
        home=settings.home,
        catalog_type="rest",
        catalog_uri="http://127.0.0.1:8181",
        catalog_credential="client:secret",
    )
    (tmp_path / "profiles.yml").write_text("old")
    (tmp_path / "profiles.yml").chmod(0o644)
    out = write_dbt_profile(rest, tmp_path) / "profiles.yml"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "client:secret" in out.read_text()
