"""Cluster configuration reaches Spark, Iceberg, Hadoop S3A and pyiceberg (pure logic, no JVM).

These run in the default suite; ``test_cluster.py`` proves the same settings on a real cluster.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from strata import landing
from strata.config import Settings
from strata.stack import catalog_conf, hadoop_s3_conf, iceberg_io_props, pyiceberg_s3_props
from strata_apps.endpoint import ExposureSink

JIT = "-XX:-DontCompileHugeMethods"
S3 = {
    "s3_endpoint": "http://127.0.0.1:8343",
    "s3_access_key_id": "ak",
    "s3_secret_access_key": "sk",
}


@pytest.fixture
def jars(tmp_path) -> Path:
    (tmp_path / "iceberg-spark-runtime-3.5_2.12-1.10.1.jar").touch()
    return tmp_path


def _conf(tmp_path, jars, **kw) -> dict[str, str]:
    from strata.stack import spark_conf

    return spark_conf(Settings(home=tmp_path, jars_dir=jars, **kw))


def test_embedded_default_keeps_loopback_and_no_s3(tmp_path, jars):
    conf = _conf(tmp_path, jars)
    assert conf["spark.driver.host"] == conf["spark.driver.bindAddress"] == "127.0.0.1"
    assert not any(k.startswith("spark.hadoop.fs.s3") for k in conf)
    assert not any(k.endswith(".io-impl") for k in conf)
    assert "spark.ui.enabled" not in conf
    assert "spark.executor.memory" not in conf


def test_driver_address_ports_and_executors_are_settings(tmp_path, jars):
    conf = _conf(
        tmp_path, jars,
        spark_driver_host="airflow-worker", spark_driver_bind_address="0.0.0.0",
        spark_driver_port=7090, spark_block_manager_port=7091, spark_ui_port=0,
        spark_executor_memory="1g", spark_executor_cores=1, spark_cores_max=2,
        spark_executor_java_options="-XX:+UseG1GC",
    )  # fmt: skip
    assert conf["spark.driver.host"] == "airflow-worker"
    assert conf["spark.driver.bindAddress"] == "0.0.0.0"
    assert conf["spark.driver.port"] == "7090"
    assert conf["spark.driver.blockManager.port"] == "7091"
    assert conf["spark.blockManager.port"] == "7092"
    assert conf["spark.ui.enabled"] == "false"
    assert (conf["spark.executor.memory"], conf["spark.executor.cores"]) == ("1g", "1")
    assert conf["spark.cores.max"] == "2"
    # The JIT flag is on the executors too, beside the operator's own options.
    assert conf["spark.executor.extraJavaOptions"] == f"{JIT} -XX:+UseG1GC"
    assert JIT in conf["spark.driver.extraJavaOptions"]


@pytest.mark.parametrize(
    ("catalog", "warehouse", "s3"),
    [
        ({"catalog_type": "rest", "catalog_uri": "http://127.0.0.1:8181"}, "/data/wh", False),
        ({"catalog_type": "rest", "catalog_uri": "http://127.0.0.1:8181"}, "s3://wh/", True),
        ({}, "s3://wh/tables", True),  # the JDBC catalog on object storage
        ({}, None, False),
    ],
)
def test_file_io_follows_the_warehouse_uri(tmp_path, catalog, warehouse, s3):
    settings = Settings(home=tmp_path, warehouse=warehouse, **catalog, **S3)
    conf = catalog_conf(settings)
    io = conf.get("spark.sql.catalog.spark_catalog.io-impl")
    assert io == ("org.apache.iceberg.aws.s3.S3FileIO" if s3 else None)
    if s3:  # endpoint, region and keys travel with the FileIO to every executor
        props = iceberg_io_props(settings)
        assert props["s3.endpoint"] == S3["s3_endpoint"]
        assert props["s3.path-style-access"] == "true"
        assert props["client.region"] == "us-east-1"
        assert (props["s3.access-key-id"], props["s3.secret-access-key"]) == ("ak", "sk")


def test_s3_settings_reach_hadoop_s3a_and_pyiceberg(tmp_path):
    settings = Settings(
        home=tmp_path, warehouse="s3://wh/", s3_region="eu-west-1",
        exposure_landing="s3://wh/landing/", **S3,
    )  # fmt: skip
    hadoop = hadoop_s3_conf(settings)
    assert hadoop["spark.hadoop.fs.s3.impl"] == "org.apache.hadoop.fs.s3a.S3AFileSystem"
    assert hadoop["spark.hadoop.fs.s3a.endpoint"] == S3["s3_endpoint"]
    assert hadoop["spark.hadoop.fs.s3a.endpoint.region"] == "eu-west-1"
    assert hadoop["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "False"
    assert (hadoop["spark.hadoop.fs.s3a.access.key"], hadoop["spark.hadoop.fs.s3a.secret.key"]) == (
        "ak",
        "sk",
    )
    py = pyiceberg_s3_props(settings)
    assert py["s3.region"] == "eu-west-1"
    assert (py["s3.access-key-id"], py["s3.secret-access-key"]) == ("ak", "sk")


def test_without_keys_the_aws_chain_applies(tmp_path):
    settings = Settings(home=tmp_path, warehouse="s3://wh/")
    assert iceberg_io_props(settings) == {"io-impl": "org.apache.iceberg.aws.s3.S3FileIO"}
    assert not any("key" in k for k in hadoop_s3_conf(settings))


def test_landing_defaults_to_the_local_spool(tmp_path):
    settings = Settings(home=tmp_path)
    assert settings.exposure_landing_uri == str(tmp_path / "landing" / "exposures")
    assert not landing.is_remote(settings)
    assert landing.shipper(settings) is None
    day = settings.exposure_spool_path / "date=2026-11-08"
    day.mkdir(parents=True)
    (day / "h-1-2.jsonl").write_text("{}\n")
    assert landing.landing_files(settings) == [str(day / "h-1-2.jsonl")]


def test_sink_hands_every_closed_file_over(tmp_path):
    closed = []
    sink = ExposureSink(tmp_path, on_closed=closed.append)
    day1, day2 = 1_794_096_000_000, 1_794_182_400_000  # 2026-11-08 and 2026-11-09, UTC
    sink.append(day1, b"a\n")
    sink.append(day1, b"b\n")
    sink.append(day2, b"c\n")  # the day rolled over: the first file is closed (shipped in a thread)
    sink.close()  # the last one, before close returns
    deadline = 50
    while len(closed) < 2 and deadline:
        deadline -= 1
        time.sleep(0.1)
    assert sorted(closed) == [sink.path("2026-11-08"), sink.path("2026-11-09")]
    assert sink.path("2026-11-08").read_bytes() == b"a\nb\n"


def test_only_files_of_finished_processes_are_leftovers():
    host = socket.gethostname()
    assert landing._owner_alive(f"{host}-{os.getpid()}-1.jsonl")
    assert not landing._owner_alive(f"{host}-{2**22 + 1}-1.jsonl")  # above pid_max: no such pid
    assert not landing._owner_alive(f"other-host-{os.getpid()}-1.jsonl")
    assert not landing._owner_alive("not-a-spool-name.jsonl")


def test_an_object_store_warehouse_creates_no_local_folder(tmp_path, monkeypatch):
    """``s3://wh/tables`` is not a path: nothing named ``s3:`` appears in the working folder."""
    monkeypatch.chdir(tmp_path)
    settings = Settings(home=tmp_path / "home", warehouse="s3://wh/tables", **S3)
    assert not settings.warehouse_is_local
    catalog_conf(settings)
    assert not (tmp_path / "s3:").exists()
