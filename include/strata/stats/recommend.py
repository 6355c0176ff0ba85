"""Guardrail outcomes and one recommendation per experiment, from the engine's metrics frame.

Pure functions of :func:`strata.stats.engine.evaluate`'s output (docs/statistics.md,
"Guardrails and the recommendation"):

* :func:`guardrail_outcome` — per treatment × guardrail metric ``ok`` / ``violated`` /
  ``inconclusive``: a non-inferiority test with the guardrail's relative ``margin`` on the
  relative interval the report shows (adjusted, the decision's scale). With ``h = −d · effect``
  the harm (``d = +1`` for ``direction: increase``, ``−1`` for ``decrease``) and ``[h_lo, h_hi]``
  its interval: ``violated`` if ``h_lo > margin``, ``ok`` if ``h_hi < margin``, else
  ``inconclusive``. Without a margin (margin 0) it is the decision: ``violated`` on a ``loss``,
  ``ok`` on a ``win``;
* :func:`recommend` — per experiment ``invalid`` (SRM failed) > per treatment ``dont_ship`` (a
  primary metric loses or a guardrail is violated) > ``ship`` (a primary metric wins, no primary
  loses, no guardrail violated; inconclusive guardrails are named in the reason) >
  ``keep_running`` (with the units and days still needed from :mod:`strata.stats.power`); across
  treatments ``ship`` (the best shippable one) > ``dont_ship`` > ``keep_running``. Each comes with
  its reason in one sentence.

Usage:
    >>> m = pd.DataFrame({"exp_id": "e", "variant": ["1", "2", "1", "2"],
    ...     "variant_name": ["control", "treatment"] * 2, "control": "1",
    ...     "is_control": [True, False] * 2, "metric_id": ["conv", "conv", "rev", "rev"],
    ...     "metric_name": ["conversion", "conversion", "revenue", "revenue"],
    ...     "role": ["primary", "primary", "guardrail", "guardrail"], "direction": "increase",
    ...     "margin": [None, None, 0.01, 0.01], "minimum_effect": None,
    ...     "decision": [None, "win", None, "inconclusive"], "count": 1000.0,
    ...     "rel_diff": [None, 0.041, None, 0.002],
    ...     "rel_lower_adjusted": [None, 0.02, None, -0.005],
    ...     "rel_upper_adjusted": [None, 0.062, None, 0.009], "p_value": [None, 0.001, None, 0.6],
    ...     "p_value_adjusted": [None, 0.001, None, 0.6], "mde": 0.05,
    ...     "required_sample_size": float("nan")})
    >>> rec = recommend(m).recommendations.iloc[0]
    >>> rec["recommendation"], rec["reason"]
    ('ship', 'ship treatment: conversion +4.1% (CI +2.0% to +6.2%); guardrails ok (revenue)')
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from strata.stats.models import DEFAULT_POWER

#: Guardrail outcomes.
OK, VIOLATED, GUARD_INCONCLUSIVE = "ok", "violated", "inconclusive"
#: Recommendations, in precedence order per treatment (invalid is per experiment).
INVALID, DONT_SHIP, SHIP, KEEP_RUNNING = "invalid", "dont_ship", "ship", "keep_running"
RECOMMENDATIONS = (INVALID, DONT_SHIP, SHIP, KEEP_RUNNING)
#: The engine's decision labels this module reads (strata.stats.engine).
_WIN, _LOSS, _SRM, _NO_DATA = "win", "loss", "invalid_srm", "insufficient_data"

GUARDRAIL_COLUMNS = [
    "exp_id", "variant", "variant_name", "control", "metric_id", "metric_name", "margin",
    "effect", "lower", "upper", "p_value", "p_value_adjusted", "outcome", "reason",
]  # fmt: skip
RECOMMENDATION_COLUMNS = [
    "exp_id", "variant", "control", "recommendation", "reason", "units_needed", "days_needed",
]  # fmt: skip


@dataclass
class Recommendations:
    """Output of :func:`recommend`: ``guardrails`` (one row per experiment × treatment ×
    guardrail metric, :data:`GUARDRAIL_COLUMNS`) and ``recommendations`` (one row per experiment,
    :data:`RECOMMENDATION_COLUMNS`; ``variant`` is the treatment concerned, ``""`` when none)."""

    guardrails: pd.DataFrame
    recommendations: pd.DataFrame


def guardrail_outcome(
    lower: np.ndarray,
    upper: np.ndarray,
    direction: np.ndarray,
    margin: np.ndarray,
    decision: np.ndarray,
) -> np.ndarray:
    """``ok`` / ``violated`` / ``inconclusive`` per row (vectorised).

    ``lower``/``upper``: the relative interval (adjusted); ``direction``: ``increase`` or
    ``decrease``; ``margin``: relative non-inferiority margin, NaN for none; ``decision``: the
    engine's decision (used without a margin). A NaN interval (not estimable, not tested) with a
    margin is ``inconclusive``.

    Usage:
        >>> guardrail_outcome(np.array([-0.005, -0.05, -0.03]), np.array([0.02, -0.02, 0.01]),
        ...                   np.array(["increase"] * 3), np.array([0.01] * 3),
        ...                   np.array(["inconclusive", "loss", "inconclusive"])).tolist()
        ['ok', 'violated', 'inconclusive']
    """
    lower, upper = np.asarray(lower, float), np.asarray(upper, float)
    margin = np.asarray(margin, float)
    d = np.where(np.asarray(direction) == "decrease", -1.0, 1.0)
    harm_lo = np.where(d > 0, -upper, lower)  # harm = -d * effect
    harm_hi = np.where(d > 0, -lower, upper)
    decision = np.asarray(decision, dtype=object)
    with np.errstate(invalid="ignore"):
        by_margin = np.where(
            harm_lo > margin, VIOLATED, np.where(harm_hi < margin, OK, GUARD_INCONCLUSIVE)
        )
    by_decision = np.where(
        decision == _LOSS, VIOLATED, np.where(decision == _WIN, OK, GUARD_INCONCLUSIVE)
    )
    return np.where(np.isnan(margin), by_decision, by_margin).astype(object)


def _pct(x: float) -> str:
    return f"{x:+.1%}"


def _effect(name: str, effect: float, lower: float, upper: float) -> str:
    """``conversion +4.1% (CI +2.0% to +6.2%)``; the interval is the adjusted one shown."""
    if not math.isfinite(effect):
        return f"{name} (relative effect not estimable)"
    if math.isfinite(lower) and math.isfinite(upper):
        return f"{name} {_pct(effect)} (CI {_pct(lower)} to {_pct(upper)})"
    return f"{name} {_pct(effect)} (relative CI not estimable)"


def _margin_text(margin: float) -> str:
    """``0.01`` -> ``1%``, ``0.005`` -> ``0.5%``."""
    return f"{margin * 100:.3g}%"


def _guardrail_reason(r) -> str:
    what = _effect(r.metric_name, r.effect, r.lower, r.upper)
    if r.decision == _SRM:
        return f"{r.metric_name} not trustworthy (sample ratio mismatch)"
    if r.decision == _NO_DATA:
        return f"{r.metric_name} not tested (insufficient data)"
    if math.isnan(r.margin):
        return {
            OK: f"{what} is significantly better",
            VIOLATED: f"{what} is significantly worse",
        }.get(r.outcome, f"{what} has no margin to show it is not harmful")
    m = _margin_text(r.margin)
    return {
        OK: f"{what} is within its {m} margin",
        VIOLATED: f"{what} is beyond its {m} margin",
    }.get(r.outcome, f"{what} may be beyond its {m} margin")


def guardrails(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment × treatment × guardrail metric with its outcome and reason."""
    t = metrics[(metrics["role"] == "guardrail") & ~metrics["is_control"].astype(bool)]
    if t.empty:
        return pd.DataFrame(columns=GUARDRAIL_COLUMNS)
    margin = pd.to_numeric(t["margin"], errors="coerce").to_numpy(float)
    g = pd.DataFrame(
        {
            "exp_id": t["exp_id"].to_numpy(),
            "variant": t["variant"].to_numpy(),
            "variant_name": t["variant_name"].to_numpy(),
            "control": t["control"].to_numpy(),
            "metric_id": t["metric_id"].astype(str).to_numpy(),
            "metric_name": t["metric_name"].to_numpy(),
            "margin": margin,
            "effect": t["rel_diff"].to_numpy(float),
            "lower": t["rel_lower_adjusted"].to_numpy(float),
            "upper": t["rel_upper_adjusted"].to_numpy(float),
            "p_value": t["p_value"].to_numpy(float),
            "p_value_adjusted": t["p_value_adjusted"].to_numpy(float),
            "decision": t["decision"].to_numpy(object),
        }
    )
    g["outcome"] = guardrail_outcome(
        g["lower"], g["upper"], t["direction"].to_numpy(), margin, g["decision"]
    )
    g["reason"] = [_guardrail_reason(r) for r in g.itertuples(index=False)]  # design-sized
    return g[GUARDRAIL_COLUMNS].reset_index(drop=True)


@dataclass
class _Treatment:
    """One treatment's roll-up: its recommendation, the reason's body and a ranking key."""

    variant: str
    name: str
    recommendation: str
    reason: str
    rank: tuple[float, float]
    #: keep_running with tested primary metrics, none significant: ``reason`` lists their effects
    pending: bool = False


Row = dict[str, Any]


def _guardrail_clause(g: list[Row]) -> str:
    """What the reason says about the guardrails of one treatment."""
    if not g:
        return "no guardrails"
    ok = [r["metric_name"] for r in g if r["outcome"] == OK]
    inconclusive = [r["reason"] for r in g if r["outcome"] == GUARD_INCONCLUSIVE]
    parts = []
    if ok:
        parts.append(f"guardrails ok ({', '.join(ok)})")
    if inconclusive:
        parts.append("guardrail inconclusive: " + ", ".join(inconclusive))
    return "; ".join(parts)


def _finite(x: Any) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _units_needed(
    prim: list[Row], control_count: Mapping[str, float], days: int | None, power: float
) -> tuple[float, float, str]:
    """(units per variant still needed, days still needed, the clause saying so) from the
    treatment rows of the primary metrics: each needs ``required_sample_size`` units in both arms
    (:func:`strata.stats.power.required_sample_size` at its ``minimum_effect``); the largest
    shortfall counts, and the days extrapolate the smaller arm's rate over ``days`` of data. NaN
    and a reason when a primary metric sets no ``minimum_effect``."""
    unset = [r for r in prim if not (_finite(r["required_sample_size"])
                                     and _finite(r["minimum_effect"]))]  # fmt: skip
    if unset:
        mde: dict[str, float] = {}
        for r in prim:
            if _finite(r["mde"]):
                mde[r["metric_name"]] = max(mde.get(r["metric_name"], 0.0), r["mde"])
        now = ", ".join(f"±{m:.1%} on {n}" for n, m in mde.items())
        detects = f" (the data now detect {now} at {power:.0%} power)" if now else ""
        names = ", ".join(dict.fromkeys(r["metric_name"] for r in unset))
        clause = f"no minimum_effect is set on {names}, so the units still needed are not estimable"
        return math.nan, math.nan, clause + detects
    short = []
    for r in prim:
        n_min = min(r["count"], control_count.get(r["metric_id"], math.nan))
        short.append((max(r["required_sample_size"] - n_min, 0.0), n_min, r))
    units, n_min, worst = max(short, key=lambda x: x[0])
    target = (
        f"{power:.0%} power at {worst['metric_name']}'s minimum effect of "
        f"{worst['minimum_effect']:.1%}"
    )
    if units <= 0:
        return (
            0.0,
            0.0,
            f"it already has the units for {target}, so a real effect is likely smaller",
        )
    days_needed = math.nan
    when = ""
    if days and n_min > 0:
        days_needed = float(math.ceil(days * units / n_min))
        when = f", about {days_needed:.0f} more days at the current rate,"
    return units, days_needed, f"{units:,.0f} more units per variant{when} for {target}"


def _effects(rows: list[Row]) -> str:
    return ", ".join(
        _effect(r["metric_name"], r["rel_diff"], r["rel_lower_adjusted"], r["rel_upper_adjusted"])
        for r in rows
    )


def _treatment(t: list[Row], g: list[Row], many: bool) -> _Treatment:
    """The recommendation of one treatment from its metric rows and guardrail outcomes."""
    variant, name = str(t[0]["variant"]), str(t[0]["variant_name"])
    prim = [r for r in t if r["role"] == "primary"]
    losers = [r for r in prim if r["decision"] == _LOSS]
    winners = [r for r in prim if r["decision"] == _WIN]
    violated = [r["reason"] for r in g if r["outcome"] == VIOLATED]
    if losers or violated:
        parts = []
        if losers:
            parts.append(f"{_effects(losers)} {'loses' if len(losers) == 1 else 'lose'}")
        if violated:
            parts.append("guardrail violated: " + ", ".join(violated))
        return _Treatment(variant, name, DONT_SHIP, f"don't ship {name}: " + "; ".join(parts),
                          (-1.0, 0.0))  # fmt: skip
    if winners:
        signed = max(r["rel_diff"] * (-1 if r["direction"] == "decrease" else 1) for r in winners)
        return _Treatment(
            variant, name, SHIP, f"ship {name}: {_effects(winners)}; {_guardrail_clause(g)}",
            (float(len(winners)), float(signed)),
        )  # fmt: skip
    if not prim:
        return _Treatment(variant, name, KEEP_RUNNING,
                          f"no primary metric decides {name}; {_guardrail_clause(g)}",
                          (0.0, 0.0))  # fmt: skip
    if all(r["decision"] == _NO_DATA for r in prim):
        names = ", ".join(r["metric_name"] for r in prim)
        return _Treatment(variant, name, KEEP_RUNNING,
                          f"not enough data on {name} to test {names}", (0.0, 0.0))  # fmt: skip
    return _Treatment(variant, name, KEEP_RUNNING,
                      f"{_effects(prim)} for {name}" if many else _effects(prim), (0.0, 0.0),
                      pending=True)  # fmt: skip


def _srm_failures(srm: pd.DataFrame | None, srm_alpha: float) -> dict[str, str]:
    """Per experiment with a failed SRM check, what failed."""
    if srm is None or srm.empty:
        return {}
    out: dict[str, list[str]] = {}
    for r in srm[~srm["passed"].astype(bool)].itertuples(index=False):
        out.setdefault(str(r.exp_id), []).append(
            f"{r.unit_type} p = {r.p_value:.2g} < {srm_alpha:g}"
        )
    return {k: ", ".join(v) for k, v in out.items()}


#: The metrics-frame columns :func:`recommend` reads.
_COLUMNS = [
    "exp_id", "metric_id", "metric_name", "role", "direction", "minimum_effect", "variant",
    "variant_name", "control", "is_control", "decision", "count", "rel_diff",
    "rel_lower_adjusted", "rel_upper_adjusted", "mde", "required_sample_size",
]  # fmt: skip


def recommend(
    metrics: pd.DataFrame,
    srm: pd.DataFrame | None = None,
    days_run: Mapping[str, int] | None = None,
    power: float = DEFAULT_POWER,
    srm_alpha: float = 0.001,
) -> Recommendations:
    """Guardrail outcomes and one recommendation per experiment (module docstring for the rules).

    ``metrics``: the engine's metrics frame (with ``margin`` and ``minimum_effect`` columns);
    ``srm``: its SRM frame (a failed check makes the experiment ``invalid``; so does an
    ``invalid_srm`` decision); ``days_run``: days of data per experiment (for the days still
    needed; units only without it); ``power``: the power the sample sizes were computed for.
    """
    if metrics.empty:
        return Recommendations(
            pd.DataFrame(columns=GUARDRAIL_COLUMNS), pd.DataFrame(columns=RECOMMENDATION_COLUMNS)
        )
    days_run = dict(days_run or {})
    guards = guardrails(metrics)
    guard_of: dict[tuple[str, str], list[Row]] = {}
    for g in guards[["exp_id", "variant", "metric_name", "outcome", "reason"]].to_dict("records"):
        guard_of.setdefault((str(g["exp_id"]), str(g["variant"])), []).append(g)
    rows_of: dict[str, list[Row]] = {}
    records = metrics[_COLUMNS].astype({"metric_id": str}).to_dict("records")
    for r in records:  # one pass over the frame; per experiment below (design-sized)
        rows_of.setdefault(str(r["exp_id"]), []).append(r)
    failed = _srm_failures(srm, srm_alpha)
    out = []
    for exp_id in sorted(rows_of):
        m = rows_of[exp_id]
        control = str(m[0]["control"])
        srm_text = failed.get(exp_id)
        if srm_text is None and any(r["decision"] == _SRM for r in m):
            srm_text = "the comparisons are invalid_srm"
        if srm_text is not None:
            out.append((exp_id, "", control, INVALID,
                        f"sample ratio mismatch ({srm_text}): the effects are not trustworthy",
                        math.nan, math.nan))  # fmt: skip
            continue
        by_variant: dict[str, list[Row]] = {}
        for r in m:
            if not r["is_control"]:
                by_variant.setdefault(str(r["variant"]), []).append(r)
        many = len(by_variant) > 1
        treatments = [
            _treatment(t, guard_of.get((exp_id, v), []), many)
            for v, t in sorted(by_variant.items())
        ]
        row = _combine(treatments, control)
        if row[2] == KEEP_RUNNING and any(t.pending for t in treatments):
            pending = {t.variant for t in treatments if t.pending}
            prim = [r for v in sorted(pending) for r in by_variant[v] if r["role"] == "primary"]
            ctrl = {r["metric_id"]: r["count"] for r in m if r["is_control"]}
            units, days, clause = _units_needed(prim, ctrl, days_run.get(exp_id), power)
            row = (*row[:3], f"{row[3]}; {clause}", units, days)
        out.append((exp_id, *row))
    return Recommendations(guards, pd.DataFrame(out, columns=RECOMMENDATION_COLUMNS))


def _combine(treatments: list[_Treatment], control: str) -> tuple[str, str, str, str, float, float]:
    """Across treatments: ship the best shippable one > dont_ship > keep_running (the units
    still needed are added by the caller)."""
    nan = math.nan
    if not treatments:
        return "", control, KEEP_RUNNING, "keep running: no treatment variant to compare", nan, nan
    by = {r: [t for t in treatments if t.recommendation == r] for r in RECOMMENDATIONS}
    if not by[SHIP] and not by[DONT_SHIP]:
        effects = [t.reason for t in treatments if t.pending]
        other = [t.reason for t in treatments if not t.pending]
        reason = "; ".join(
            ([f"no primary metric is significant yet: {', '.join(effects)}"] if effects else [])
            + other
        )
        return "", control, KEEP_RUNNING, f"keep running: {reason}", nan, nan
    first = max(by[SHIP], key=lambda t: t.rank) if by[SHIP] else by[DONT_SHIP][0]
    reason = first.reason
    others = [t for t in treatments if t is not first]
    if others:
        label = {SHIP: "also shippable", DONT_SHIP: "not to ship", KEEP_RUNNING: "inconclusive"}
        reason += "; " + ", ".join(f"{t.name} {label[t.recommendation]}" for t in others)
    return first.variant, control, first.recommendation, reason, nan, nan
