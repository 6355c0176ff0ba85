"""Benchmark: Strata's engine vs ep-stats on the same aggregates, in the same run.

1,000 experiments × 20 metrics × 3 variants (defaults), ep-stats-compatible metrics (count, value
and unique goals over exposures), aggregates built from simulated per-unit data with a fixed seed.
ep-stats evaluates one experiment per call (its API); Strata evaluates all in one call. Both get
their input frames prepared before the clock starts. Prints both wall times, the ratio, and the
largest disagreement in means and relative differences as a sanity check.

Then the segments workload (``--segment-experiments``, default 200): every experiment split by the
five segment dimensions one at a time (8 countries, 3 platforms, 3 app-version majors, new vs
returning, 3 plans: 19 segments), every metric evaluated per segment. Strata does it in one
:func:`strata.stats.evaluate_segments` call, Holm across segments and the heterogeneity tests
included; ep-stats evaluates each segment as an experiment (one ``evaluate_agg`` call each: the same
per-segment work, without the heterogeneity tests).

    .venv/bin/python bench/bench_stats.py [--experiments 1000] [--metrics 20] [--variants 3]
        [--segment-experiments 200]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import time
import warnings

import numpy as np
import pandas as pd

from strata.stats import EvaluationConfig, evaluate, evaluate_segments, experiments_from_records
from strata.stats.aggregate import aggregate_arrays

SEED = 42
UNITS_PER_VARIANT = 200
GOALS = [f"g{i}" for i in range(10)]
FUNCS = ("count", "value", "unique")


#: The segment dimensions of the workload and their segment counts (strata.contracts).
SEGMENTS = {"country": 8, "platform": 3, "app_version_major": 3, "visitor": 2, "plan": 3}
UNITS_PER_SEGMENT = 100


def build(n_exp: int, n_metrics: int, n_var: int, units: int = UNITS_PER_VARIANT):
    rng = np.random.default_rng(SEED)
    shape = (n_exp, n_var, units)
    data = {}
    for g in GOALS:
        counts = rng.poisson(rng.uniform(0.2, 3.0), shape).astype(float)
        data[g] = (counts, counts * rng.gamma(2.0, 5.0, shape))
    variants = [str(j + 1) for j in range(n_var)]  # vids are integers; "1" is the control
    metrics = [
        {
            "id": i + 1,
            "name": f"metric {i + 1}",
            "nominator": f"{FUNCS[i % 3]}(user.unit.{GOALS[i % len(GOALS)]})",
            "denominator": "count(user.global.exposure)",
            "role": "primary" if i == 0 else "secondary",
        }
        for i in range(n_metrics)
    ]
    records = [
        {
            "experiment_id": f"exp{e:05d}",
            "variants": [{"vid": int(v), "is_control": v == "1", "weight": 1} for v in variants],
            "metrics": metrics,
        }
        for e in range(n_exp)
    ]
    goals, _ = aggregate_arrays(
        [r["experiment_id"] for r in records], [variants] * n_exp, "user", data
    )
    return records, goals, metrics


def build_segments(n_exp: int, n_metrics: int, n_var: int):
    """Segment aggregates of ``n_exp`` experiments: each (experiment, dimension, segment) a
    simulated block of units; returns the experiments' records, the segment aggregates (with
    ``dimension`` and ``segment``) and, for ep-stats, the records of every segment as an
    experiment with its frame."""
    pairs = [(d, f"{d[:2]}{k}") for d, n in SEGMENTS.items() for k in range(n)]
    n_seg = len(pairs)
    seg_records, frame, metrics = build(n_exp * n_seg, n_metrics, n_var, UNITS_PER_SEGMENT)
    e = np.arange(n_exp * n_seg) // n_seg
    s = np.arange(n_exp * n_seg) % n_seg
    pseudo = {r["experiment_id"]: (f"exp{i:05d}", *pairs[j])
              for r, i, j in zip(seg_records, e, s, strict=True)}  # fmt: skip
    parts = pd.DataFrame(
        [pseudo[x] for x in frame["exp_id"]], columns=["exp_id", "dimension", "segment"],
        index=frame.index,
    )  # fmt: skip
    segment_goals = frame.drop(columns=["exp_id"]).join(parts)
    records = [{**seg_records[0], "experiment_id": f"exp{i:05d}"} for i in range(n_exp)]
    return records, segment_goals, seg_records, frame, metrics


def run_strata_segments(records, segment_goals):
    exps = experiments_from_records(records)
    start = time.perf_counter()
    out = evaluate_segments(segment_goals, exps)
    return time.perf_counter() - start, out


def run_strata(records, goals):
    exps = experiments_from_records(records)
    start = time.perf_counter()
    out = evaluate(goals, exps, config=EvaluationConfig(sequential=False))
    return time.perf_counter() - start, out.metrics


@contextlib.contextmanager
def no_gc_collect():
    """statsmodels 0.15's Holm branch calls gc.collect() per call (heap-size dependent, ~0.2 s
    here); ep-stats calls it once per metric. Disabling it gives ep-stats' best case."""
    original = gc.collect
    gc.collect = lambda *args, **kwargs: 0
    try:
        yield
    finally:
        gc.collect = original


def run_epstats(records, goals, metrics, limit: int, best_case: bool = False):
    from epstats.toolkit import Experiment, Metric, SrmCheck

    by_exp = dict(tuple(goals.groupby("exp_id", sort=False)))
    ep_metrics = [Metric(m["id"], m["name"], m["nominator"], m["denominator"]) for m in metrics]
    exps = [
        (
            Experiment(
                r["experiment_id"], "1", ep_metrics,
                [SrmCheck(1, "SRM", "count(user.global.exposure)")], unit_type="user",
            ),
            by_exp[r["experiment_id"]].reset_index(drop=True),
        )
        for r in records[:limit]
    ]  # fmt: skip
    results = []
    patch = no_gc_collect() if best_case else contextlib.nullcontext()
    with warnings.catch_warnings(), patch:
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        for exp, frame in exps:
            results.append(exp.evaluate_agg(frame).metrics)
        elapsed = time.perf_counter() - start
    return elapsed, pd.concat(results, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiments", type=int, default=1000)
    parser.add_argument("--metrics", type=int, default=20)
    parser.add_argument("--variants", type=int, default=3)
    parser.add_argument(
        "--epstats-experiments", type=int, default=20,
        help="experiments evaluated by ep-stats (it needs seconds each); time scaled linearly",
    )  # fmt: skip
    parser.add_argument(
        "--segment-experiments", type=int, default=200,
        help="experiments of the segments workload (0: skip it)",
    )  # fmt: skip
    args = parser.parse_args()
    records, goals, metrics = build(args.experiments, args.metrics, args.variants)
    n_ep = min(args.epstats_experiments or args.experiments, args.experiments)
    print(
        f"{args.experiments} experiments × {args.metrics} metrics × {args.variants} variants "
        f"({len(goals):,} aggregate rows)"
    )
    run_strata(records[:2], goals[goals["exp_id"].isin({"exp00000", "exp00001"})])  # warm-up
    t_strata, ours = run_strata(records, goals)
    t_ep, theirs = run_epstats(records, goals, metrics, n_ep)
    t_best, _ = run_epstats(records, goals, metrics, n_ep, best_case=True)
    scale = args.experiments / n_ep
    scaled = "" if n_ep == args.experiments else f"  (measured on {n_ep}, scaled ×{scale:g})"
    print(f"{'engine':<36}{'wall time [s]':>15}{'ratio to strata':>18}")
    print(f"{'strata (one vectorised call)':<36}{t_strata:>15.3f}{1.0:>17.1f}×")
    for label, t in (
        ("ep-stats 2.5.10 as installed", t_ep),
        ("ep-stats, gc.collect disabled", t_best),
    ):
        print(f"{label:<36}{t * scale:>15.3f}{t * scale / t_strata:>17.1f}×{scaled}")

    key = ["exp_id", "metric_id", "variant"]
    theirs = theirs.rename(columns={"exp_variant_id": "variant"})
    theirs["metric_id"] = theirs["metric_id"].astype(str)
    joined = theirs.merge(ours, on=key, suffixes=("_ep", ""))
    treat = joined[joined["variant"] != "1"]
    print(
        f"agreement on {len(joined):,} rows: max |Δ mean| = "
        f"{np.nanmax(np.abs(joined['mean_ep'] - joined['mean'])):.2e}, max |Δ rel diff| = "
        f"{np.nanmax(np.abs(treat['diff'] - treat['rel_diff'])):.2e}"
    )
    if args.segment_experiments:
        segments(args)


def segments(args) -> None:
    """The segments workload: Strata's one call vs ep-stats per segment."""
    n_exp = args.segment_experiments
    records, seg_goals, seg_records, seg_frame, metrics = build_segments(
        n_exp, args.metrics, args.variants
    )
    n_seg = sum(SEGMENTS.values())
    print(
        f"\nsegments: {n_exp} experiments × {n_seg} segments ({len(SEGMENTS)} dimensions, one at "
        f"a time) × {args.metrics} metrics × {args.variants} variants "
        f"({len(seg_goals):,} segment aggregate rows)"
    )
    run_strata_segments(records[:1], seg_goals[seg_goals["exp_id"] == "exp00000"])  # warm-up
    t_strata, out = run_strata_segments(records, seg_goals)
    n_ep = min(args.epstats_experiments * 2, len(seg_records))
    t_ep, _ = run_epstats(seg_records, seg_frame, metrics, n_ep)
    t_best, _ = run_epstats(seg_records, seg_frame, metrics, n_ep, best_case=True)
    scale = len(seg_records) / n_ep
    het = out.heterogeneity
    print(f"{'engine':<36}{'wall time [s]':>15}{'ratio to strata':>18}")
    print(f"{'strata evaluate_segments (one call)':<36}{t_strata:>15.3f}{1.0:>17.1f}×")
    for label, t in (
        ("ep-stats, one call per segment", t_ep),
        ("ep-stats, gc.collect disabled", t_best),
    ):
        print(
            f"{label:<36}{t * scale:>15.3f}{t * scale / t_strata:>17.1f}×  "
            f"(measured on {n_ep} segments, scaled ×{scale:g})"
        )
    print(
        f"strata also ran {len(het):,} heterogeneity tests ({int(het['heterogeneous'].sum())} "
        f"heterogeneous after BH, {int(out.segments['flagged'].sum())} segments flagged; all "
        "A/A here)"
    )


if __name__ == "__main__":
    main()
