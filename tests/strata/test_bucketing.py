"""The slot formula: Python and Spark agree on every unit; slots are uniform."""

from __future__ import annotations

import numpy as np
from scipy import stats

from strata.bucketing import SLOTS, slot


def test_known_values_computed_with_the_reference_xxh64():
    # Reference: xxh64("checkout-2026:u00000042", seed=42) read as signed int64, floor-mod 10000.
    import xxhash

    digest = xxhash.xxh64_intdigest(b"checkout-2026:u00000042", seed=42)
    signed = int(np.array(digest, dtype=np.uint64).view(np.int64))
    assert slot("checkout-2026", "u00000042") == signed % 10_000 == 5047


def test_negative_digests_use_floor_modulo():
    # Ids whose digest has the top bit set: unsigned % would give a different slot.
    import xxhash

    ids = [f"u{i}" for i in range(2000)]
    negative = [i for i in ids if xxhash.xxh64_intdigest(f"s:{i}".encode(), seed=42) >= 1 << 63]
    assert len(negative) > 800
    differs = sum(
        slot("s", i) != xxhash.xxh64_intdigest(f"s:{i}".encode(), seed=42) % SLOTS for i in negative
    )
    assert differs > 0.9 * len(negative)


def test_python_and_spark_agree_on_every_unit(spark):
    from pyspark.sql import functions as F

    from spark_jobs.generate_synthetic import slot as spark_slot

    ids = [f"unit-{i}" for i in range(20_000)] + ["", "ünïcødé", "with:colon", "x" * 300]
    df = spark.createDataFrame([(i,) for i in ids], "unit_id string")
    got = {
        r.unit_id: r.s
        for r in df.select("unit_id", spark_slot("layer-a", F.col("unit_id")).alias("s")).collect()
    }
    assert got == {i: slot("layer-a", i) for i in ids}


def test_slots_are_uniform():
    counts = np.bincount(
        [slot("uniformity", f"u{i}") // 100 for i in range(100_000)], minlength=100
    )
    assert stats.chisquare(counts).pvalue > 0.001
