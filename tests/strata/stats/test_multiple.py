"""Holm and Benjamini–Hochberg against statsmodels, many families at once, NaN = no hypothesis."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from strata.stats.multiple import benjamini_hochberg, holm


@pytest.mark.parametrize(("fn", "method"), [(holm, "holm"), (benjamini_hochberg, "fdr_bh")])
def test_matches_statsmodels_row_by_row(fn, method, monkeypatch):
    # statsmodels 0.15 runs gc.collect() on every Holm call (seconds on a big test heap)
    monkeypatch.setattr(gc, "collect", lambda *args: 0)
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 0.2, (200, 6)) ** 2
    p[rng.uniform(size=p.shape) < 0.3] = np.nan  # controls / absent variants anywhere in the row
    p[0] = np.nan  # a family with no hypotheses at all
    adj = fn(p)
    assert np.isnan(adj[0]).all()
    for row, out in zip(p[1:], adj[1:], strict=True):
        finite = np.isfinite(row)
        assert np.isnan(out[~finite]).all()
        if finite.any():
            assert out[finite] == pytest.approx(multipletests(row[finite], method=method)[1])


def test_ties_and_ones():
    p = np.array([[0.01, 0.01, 1.0, np.nan]])
    assert holm(p)[0, :3] == pytest.approx([0.03, 0.03, 1.0])
    assert benjamini_hochberg(p)[0, :3] == pytest.approx([0.015, 0.015, 1.0])


def test_one_dimensional_input_is_rejected():
    with pytest.raises(ValueError, match="must be 2-D"):
        holm(np.array([0.1, 0.2]))
