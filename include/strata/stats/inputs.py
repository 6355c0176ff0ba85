"""The aggregates' contract: the ep-stats columns the engine reads and matching rows to designs.

Usage:
    >>> import pandas as pd
    >>> from strata.stats.models import experiment_from_record
    >>> exp = experiment_from_record({"experiment_id": "e", "variants": [
    ...     {"vid": 1, "is_control": True, "weight": 1}, {"vid": 2, "weight": 1}], "metrics": []})
    >>> e_idx, v_idx = variant_codes(pd.Series(["e", "e"]), pd.Series([2, 1]), [exp], "goals")
    >>> e_idx.tolist(), v_idx.tolist()
    ([0, 0], [1, 0])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from strata.stats.errors import AggregateError

if TYPE_CHECKING:
    from strata.stats.models import ExperimentDesign

#: Columns every aggregate row must carry (the ep-stats layout).
KEY_COLUMNS = ("exp_id", "exp_variant_id", "unit_type", "agg_type", "goal")
VALUE_COLUMNS = ("count", "sum_sqr_count", "sum_value", "sum_sqr_value", "count_unique")
#: Date column of the cumulative aggregate tables; must be selected and dropped before evaluate.
DATE_COLUMN = "as_of_date"
#: Columns of the cross-product input: per-unit sum of term_x × term_y, terms in canonical text.
CROSS_COLUMNS = ("exp_id", "exp_variant_id", "term_x", "term_y", "sum_product")


def require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise AggregateError(f"{what} is missing columns {missing} (has {list(frame.columns)})")


def variant_codes(
    exp_ids: pd.Series, vids: pd.Series, experiments: list[ExperimentDesign], what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Experiment and variant indexes of rows; rows of unknown variants are an error."""
    exp_pos = {e.experiment_id: i for i, e in enumerate(experiments)}
    e_idx = exp_ids.astype(str).map(exp_pos).to_numpy()
    pairs = {
        (e.experiment_id, str(v.vid)): j for e in experiments for j, v in enumerate(e.variants)
    }
    keys = pd.Series(list(zip(exp_ids.astype(str), vids.astype(str), strict=True)), dtype=object)
    v_idx = keys.map(pairs).to_numpy()
    unknown = pd.isna(v_idx)
    if unknown.any():
        bad = sorted({k for k, u in zip(keys, unknown, strict=True) if u})[:5]
        raise AggregateError(f"{what}: rows for variants not in the experiment design: {bad}")
    return e_idx.astype(np.int64), v_idx.astype(np.int64)
