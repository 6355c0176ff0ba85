"""Capping (winsorization) of a metric's per-unit value: the definitions' `cap`, how the engine
reads the capped sums, and the combinations it refuses."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from strata.definitions import DefinitionError, load, metrics_json
from strata.metrics import Cap, ExpressionError
from strata.stats import evaluate
from strata.stats.errors import AggregateError, DesignError
from strata.stats.models import experiment_from_record

DATA = Path(__file__).resolve().parents[1] / "data" / "definitions"
REVENUE = {"id": "rev", "name": "Revenue", "nominator": "value(user.unit.purchase)",
           "denominator": "count(user.global.exposure)"}  # fmt: skip


def load_metrics(*metrics):
    base = yaml.safe_load((DATA / "valid" / "minimal.yaml").read_text())
    base["experiments"][0]["metrics"] = list(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.yaml"
        path.write_text(yaml.safe_dump(base))
        return load(path).experiments[0]


def test_cap_is_stored_only_when_set():
    e = load_metrics(REVENUE | {"cap": {"percentile": 0.99}}, REVENUE | {"id": "plain"})
    assert [m.get("cap") for m in metrics_json(e)] == [{"percentile": 0.99}, None]
    assert e.metrics[0].cap == Cap(percentile=0.99)
    # the engine reads the stored metric back with its cap
    design = experiment_from_record(
        {
            "experiment_id": e.id,
            "variants": [{"vid": 1, "is_control": True, "weight": 1}, {"vid": 2, "weight": 1}],
            "metrics": json.dumps(metrics_json(e)),
        }
    )
    assert design.metrics == e.metrics


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        (REVENUE | {"cap": {"percentile": 1.0}}, "cap percentile must be in (0, 1)"),
        (REVENUE | {"cap": {"percentile": 0}}, "cap percentile must be in (0, 1)"),
        (REVENUE | {"cap": {"value": -5}}, "cap value must be a number > 0"),
        (REVENUE | {"cap": {}}, "exactly one of `value`"),
        (REVENUE | {"cap": {"value": 5, "percentile": 0.9}}, "exactly one of `value`"),
        (
            REVENUE | {"cap": {"value": 5}, "nominator": "count(user.unit.purchase)"},
            "cap applies to a value(...) term, not count(...)",
        ),
        (
            REVENUE | {"cap": {"value": 5}, "denominator": "count(user.unit.purchase)"},
            "not supported on a ratio metric",
        ),
        (
            REVENUE | {"cap": {"value": 5}, "covariate": "value(user.unit.pre_purchase)"},
            "not supported with a CUPED covariate",
        ),
        (
            REVENUE
            | {
                "cap": {"value": 5},
                "nominator": "value(user.unit.purchase) - value(user.unit.refund)",
            },
            "one value(...) term, got 2 terms",
        ),
    ],
)
def test_cap_validated_with_experiment_and_metric(metric, message):
    with pytest.raises(DefinitionError) as exc:
        load_metrics(metric)
    (problem,) = exc.value.problems
    assert problem.startswith("d.yaml: experiments[0]")  # the file, then where in it
    assert "experiment '" in problem
    assert "metric 'rev'" in problem
    assert message in problem


def test_unknown_cap_field_is_reported():
    with pytest.raises(DefinitionError) as exc:
        load_metrics(REVENUE | {"cap": {"pct": 0.9}})
    assert "experiments[0].metrics[0].cap.pct: unknown field" in exc.value.problems[0]


def test_one_cap_per_experiment_and_goal():
    with pytest.raises(DefinitionError) as exc:
        load_metrics(REVENUE | {"cap": {"value": 100}},
                     REVENUE | {"id": "rev2", "cap": {"percentile": 0.99}})  # fmt: skip
    assert "metric 'rev2': cap {'percentile': 0.99} differs from metric 'rev'" in str(exc.value)
    # the same cap twice (e.g. revenue in cents and in dollars) is fine
    e = load_metrics(REVENUE | {"cap": {"value": 100}},
                     REVENUE | {"id": "cents", "nominator": "100 * value(user.unit.purchase)",
                                "cap": {"value": 100}})  # fmt: skip
    assert [m.cap for m in e.metrics] == [Cap(100.0), Cap(100.0)]


def test_cap_from_json_refuses_non_numbers():
    with pytest.raises(ExpressionError, match="cap value must be a number"):
        Cap.from_json({"value": "500"})
    with pytest.raises(ExpressionError, match="cap must be"):
        Cap.from_json([500])


# --- the engine -----------------------------------------------------------------------------

DESIGN = {
    "experiment_id": "e",
    "variants": [{"vid": 1, "is_control": True, "weight": 1}, {"vid": 2, "weight": 1}],
    "metrics": [REVENUE | {"cap": {"value": 50}}, REVENUE | {"id": "raw"}],
}


def goals(capped=True, null=False):
    #  variant 1: 4 units, values 10, 20, 0, 0 (exposure 4); variant 2: 4 units 10, 200, 30, 0
    #  capped at 50: variant 2 becomes 10, 50, 30, 0
    frame = pd.DataFrame({
        "exp_id": "e", "exp_variant_id": [1, 1, 2, 2], "unit_type": "user",
        "agg_type": ["global", "unit"] * 2, "goal": ["exposure", "purchase"] * 2,
        "platform": "", "count": [4, 2, 4, 3], "sum_sqr_count": [4, 2, 4, 3],
        "sum_value": [0.0, 30.0, 0.0, 240.0], "sum_sqr_value": [0.0, 500.0, 0.0, 41000.0],
        "count_unique": [4, 2, 4, 3]})  # fmt: skip
    if capped:
        frame["value_cap"] = [None, 50.0, None, 50.0]
        frame["sum_value_capped"] = [None, 30.0, None, None if null else 90.0]
        frame["sum_sqr_value_capped"] = [None, 500.0, None, None if null else 3500.0]
    return frame


def test_engine_reads_the_capped_sums_for_a_capped_metric():
    m = evaluate(goals(), [DESIGN]).metrics.set_index(["metric_id", "variant"])
    assert m.loc[("rev", "2"), "mean"] == 90.0 / 4
    assert m.loc[("raw", "2"), "mean"] == 240.0 / 4
    # variance of the capped values 10, 50, 30, 0 (sample variance): far below the raw one
    assert m.loc[("rev", "2"), "std"] == pytest.approx(pd.Series([10, 50, 30, 0]).std())
    assert m.loc[("raw", "2"), "std"] == pytest.approx(pd.Series([10, 200, 30, 0]).std())
    # the capping columns are not a dimension: the plain metrics read the same rows as before
    plain = {**DESIGN, "metrics": [REVENUE | {"id": "raw"}]}
    without = evaluate(goals(capped=False), [plain]).metrics
    with_cols = evaluate(goals(), [plain]).metrics
    pd.testing.assert_frame_equal(without, with_cols)


def test_engine_needs_the_capped_sums():
    with pytest.raises(AggregateError, match=r"missing columns \['sum_value_capped'"):
        evaluate(goals(capped=False), [DESIGN])
    with pytest.raises(AggregateError, match=r"metric 'rev' has cap \{'value': 50.0\} but"):
        evaluate(goals(null=True), [DESIGN])


def test_engine_refuses_a_stored_cap_it_cannot_apply():
    bad = {**DESIGN, "metrics": [REVENUE | {"cap": {"value": 50}, "denominator":
                                            "count(user.unit.purchase)"}]}  # fmt: skip
    with pytest.raises(ExpressionError, match="metric 'rev': cap is not supported on a ratio"):
        evaluate(goals(), [bad])
    cuped = {**DESIGN, "metrics": [REVENUE | {"cap": {"value": 50}, "covariate":
                                              "value(user.unit.pre_purchase)"}]}  # fmt: skip
    with pytest.raises(ExpressionError, match="metric 'rev': cap is not supported with a CUPED"):
        evaluate(goals(), [cuped])
    with pytest.raises(DesignError, match="experiment 'e', metric 'rev': cap percentile"):
        experiment_from_record({**DESIGN, "metrics": [REVENUE | {"cap": {"percentile": 2}}]})


def test_reference_aggregation_caps_like_the_dbt_model():
    """strata.stats.aggregate with caps: the numbers of tests/dbt/test_capped_aggregates.py."""
    import numpy as np

    from strata.stats.aggregate import aggregate_arrays

    # as of 11-04: control u1 10 and u4 no purchase; treatment u2 25 (and one unit padded)
    count = np.array([[[1, 0], [2, np.nan]]])
    value = np.array([[[10.0, 0.0], [25.0, np.nan]]])
    g, _ = aggregate_arrays(["e1"], [["0", "1"]], "user", {"purchase": (count, value)},
                            caps={"purchase": Cap(percentile=0.5)})  # fmt: skip
    rows = g[g["goal"] == "purchase"]
    assert rows["value_cap"].tolist() == [17.5, 17.5]
    assert rows["sum_value_capped"].tolist() == [10.0, 17.5]
    assert rows["sum_sqr_value_capped"].tolist() == [100.0, 306.25]
    assert g.loc[g["goal"] == "exposure", "sum_value_capped"].isna().all()
    assert np.quantile([10.0, 25.0], 0.5) == 17.5  # numpy's default is the same definition
