"""Benchmark: reading a large definitions file with ``strata.safe_yaml``, beside ``yaml.safe_load``.

Writes a definitions file of the given size (one layer and one weighted, targeted experiment with
params and a metric per ~1 kB), then times, in the same run: ``yaml.safe_load`` (the reader before
issue 12), ``safe_yaml.load_text`` (C parser, checks, GC paused) and the whole
``strata.definitions.load`` with the size limit raised, and the refusal at the default limit.
Both readers must give the same data (dates aside: safe_yaml keeps them as text).

    .venv/bin/python bench/bench_definitions.py [--mb 10]
Target: the 10 MB load well under a minute (it took 73 s before); a refusal in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

from strata import definitions, safe_yaml


def write_file(path: Path, size: int) -> int:
    """A valid definitions file of at least ``size`` bytes; returns its experiment count."""
    layers, experiments, i, total = [], [], 0, 0
    while total < size:
        layer = f"  - {{id: layer_{i}, salt: salt-{i}, unit_type: user_id, priority: {i}}}\n"
        exp = (
            f"  - id: exp_{i}\n    name: Experiment {i}\n    owner: team-{i % 50}@strata.dev\n"
            "    description: A generated experiment to measure how long a large file takes.\n"
            f"    layer: layer_{i}\n    status: running\n"
            "    start_date: 2026-11-08\n    end_date: 2026-11-28\n"
            "    platforms: [ios, android, web]\n    slots: [0, 10000]\n"
            "    targeting: {type: and, children: [{type: field, field: age, op: gte,"
            " values: [18]}, {type: field, field: country, op: in, values: [US, CA, GB, DE]}]}\n"
            "    variants:\n"
            f"      - {{vid: {2 * i + 1}, name: control, is_control: true, weight: 50,"
            f" params: {{feature_{i}: {{enabled: false, color: grey}}}}}}\n"
            f"      - {{vid: {2 * i + 2}, name: treatment, weight: 50,"
            f" params: {{feature_{i}: {{enabled: true, color: green}}}}}}\n"
            "    metrics:\n      - {id: conversion, name: Purchases per user, role: primary,"
            " nominator: count(user.unit.purchase), denominator: count(user.global.exposure)}\n"
        )
        layers.append(layer)
        experiments.append(exp)
        total += len(layer) + len(exp)
        i += 1
    path.write_text("layers:\n" + "".join(layers) + "experiments:\n" + "".join(experiments))
    return i


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mb", type=float, default=10.0, help="file size in MB (10^6 bytes)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="strata-bench-definitions-") as tmp:
        path = Path(tmp) / "big.yaml"
        n = write_file(path, int(args.mb * 1_000_000))
        size = path.stat().st_size
        text = path.read_text()
        print(f"{size:,} bytes, {n:,} experiments; C parser: {safe_yaml.LOADER.__name__}")
        reference, t_ref = timed(yaml.safe_load, text)
        ours, t_ours = timed(safe_yaml.load_text, text)
        same = json.dumps(reference, default=str, sort_keys=True) == json.dumps(
            ours, sort_keys=True
        )
        refused, t_refuse = timed(_refusal, path) if size > safe_yaml.MAX_BYTES else ([], 0.0)
        default_limit = safe_yaml.MAX_BYTES
        safe_yaml.MAX_BYTES = max(size, default_limit)
        defs, t_load = timed(definitions.load, path)
        safe_yaml.MAX_BYTES = default_limit
    print(f"  yaml.safe_load (reference)        {t_ref:7.2f} s")
    print(f"  safe_yaml.load_text               {t_ours:7.2f} s   {t_ref / t_ours:5.1f}x faster")
    print(f"  definitions.load, limit raised    {t_load:7.2f} s   ({len(defs.experiments):,} exp.)")
    if size <= default_limit:
        return 0 if same else 1
    print(
        f"  refused at the default limit      {t_refuse * 1000:7.2f} ms ({default_limit:,} bytes)"
    )
    if not refused or "over the" not in refused[0]:
        print(f"NOT REFUSED at the default limit: {refused}")
        return 1
    if not same:
        print("MISMATCH: safe_yaml and yaml.safe_load read different data")
        return 1
    return 0


def _refusal(path: Path) -> list[str]:
    """The problems reported for a file over the size limit."""
    try:
        definitions.load(path)
    except definitions.DefinitionError as exc:
        return exc.problems
    return []


if __name__ == "__main__":
    raise SystemExit(main())
