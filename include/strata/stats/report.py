"""Static HTML reports from the results table: one page per experiment and an index.

Pages are self-contained (inline CSS and SVG, no JavaScript, no CDN): first the recommendation
(ship / don't ship / keep running / invalid) with its reason and the guardrail outcomes
(:mod:`strata.stats.recommend`), then a forest plot of relative
effects with confidence intervals at the latest analysis date, the cumulative relative effect over
time per metric, SRM status, the metric table, the Bayesian view beside it (posterior effect with
its credible interval, probability to beat control, expected losses) and, for metrics with a CUPED
covariate, the variance reduction achieved per variant (1 − Var_cuped / Var_raw), and the
segments: the heterogeneity test of every dimension × metric × comparison and the flagged
segments with their effects (docs/statistics.md, "Segments").
``strata report EXP`` calls :func:`build_reports`.

Usage:
    >>> import pandas as pd
    >>> html = render_index(pd.DataFrame(columns=["experiment_id", "analysis_date"]))
    >>> "<title>Strata experiments</title>" in html
    True
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from strata.stats.results import (
    RECOMMENDATION_METRIC_ID,
    RESULTS_TABLE,
    SRM_METRIC_ID,
    VERDICT_METRIC_ID,
    read_results,
)

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

PLOT_WIDTH = 640
ROW_HEIGHT = 26
LABEL_WIDTH = 240
TREND_HEIGHT = 160
COLORS = {"win": "#1a7f37", "loss": "#cf222e", "invalid_srm": "#9a6700"}
#: How each recommendation reads, and its CSS class.
RECOMMENDATION_LABELS = {
    "ship": ("ship", "win"),
    "dont_ship": ("don't ship", "loss"),
    "keep_running": ("keep running", "pending"),
    "invalid": ("invalid (SRM)", "bad"),
}
GUARDRAIL_CLASSES = {"ok": "ok", "violated": "bad", "inconclusive": "pending"}
DEFAULT_COLOR = "#57606a"
CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#1f2328;max-width:1000px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #d0d7de;padding:3px 8px}
th{background:#f6f8fa}.ok{color:#1a7f37}.bad{color:#cf222e;font-weight:bold}
.win{color:#1a7f37;font-weight:bold}.loss{color:#cf222e;font-weight:bold}
.pending{color:#9a6700;font-weight:bold}
.rec{font-size:16px;border-left:4px solid #d0d7de;padding:4px 12px}
svg text{font-size:11px;font-family:system-ui,sans-serif}
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(x, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:+.2%}" if pct else f"{x:.4g}"


def _interval(lower: float, upper: float, p_value: float) -> str:
    """The relative interval; tested rows without one say so (Fieller: not estimable when the
    control mean is not significantly non-zero or the treatment arm is constant zero)."""
    if not (math.isfinite(lower) and math.isfinite(upper)) and math.isfinite(p_value):
        return "not estimable"
    return f"[{_fmt(lower, True)}, {_fmt(upper, True)}]"


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{CSS}</style></head><body>{body}</body></html>"
    )


def _scale(lo: float, hi: float, width: float):
    span = (hi - lo) or 1.0
    return lambda x: (x - lo) / span * width


def forest_plot(rows: pd.DataFrame) -> str:
    """SVG forest plot of ``rel_diff`` rows (point, lower, upper, decision, label)."""
    if rows.empty:
        return "<p>No comparisons.</p>"
    finite = rows[["lower", "upper", "point"]].to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    lo, hi = (min(finite.min(), 0.0), max(finite.max(), 0.0)) if finite.size else (-1.0, 1.0)
    pad = 0.05 * ((hi - lo) or 1.0)
    x = _scale(lo - pad, hi + pad, PLOT_WIDTH - LABEL_WIDTH - 20)
    height = ROW_HEIGHT * (len(rows) + 1)
    parts = [f"<svg width='{PLOT_WIDTH}' height='{height}' role='img'>"]
    zero = LABEL_WIDTH + x(0.0)
    parts.append(f"<line x1='{zero:.1f}' x2='{zero:.1f}' y1='0' y2='{height}' stroke='#8c959f'/>")
    for i, r in enumerate(rows.itertuples(index=False)):
        y = ROW_HEIGHT * (i + 0.5)
        color = COLORS.get(r.decision, DEFAULT_COLOR)
        parts.append(f"<text x='4' y='{y + 4:.1f}'>{_e(r.label)}</text>")
        if all(math.isfinite(v) for v in (r.lower, r.upper, r.point)):
            x1, x2, xp = (LABEL_WIDTH + x(v) for v in (r.lower, r.upper, r.point))
            parts.append(
                f"<line x1='{x1:.1f}' x2='{x2:.1f}' y1='{y:.1f}' y2='{y:.1f}' "
                f"stroke='{color}' stroke-width='2'/><circle cx='{xp:.1f}' cy='{y:.1f}' r='4' "
                f"fill='{color}'><title>{_e(r.label)}: {_fmt(r.point, True)} "
                f"[{_fmt(r.lower, True)}, {_fmt(r.upper, True)}]</title></circle>"
            )
    axis_y = height - 6
    for v in (lo, 0.0, hi):
        parts.append(
            f"<text x='{LABEL_WIDTH + x(v):.1f}' y='{axis_y}' text-anchor='middle'>"
            f"{_fmt(v, True)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def trend_plot(rows: pd.DataFrame, title: str) -> str:
    """SVG of cumulative relative effect over analysis dates, with its CI band."""
    rows = rows.sort_values("analysis_date")
    vals = rows[["point", "lower", "upper"]].to_numpy(dtype=float)
    if not np.isfinite(vals).any():
        return ""
    lo, hi = min(np.nanmin(vals), 0.0), max(np.nanmax(vals), 0.0)
    n = len(rows)
    xs = [40 + (PLOT_WIDTH - 60) * (i / max(n - 1, 1)) for i in range(n)]
    sy = _scale(lo, hi, TREND_HEIGHT - 30)

    def y(v: float) -> float:
        return TREND_HEIGHT - 15 - sy(v)

    ok = np.isfinite(vals).all(axis=1)
    band = [(xx, y(v[2])) for xx, v, k in zip(xs, vals, ok, strict=True) if k] + [
        (xx, y(v[1])) for xx, v, k in reversed(list(zip(xs, vals, ok, strict=True))) if k
    ]
    line = [(xx, y(v[0])) for xx, v in zip(xs, vals, strict=True) if np.isfinite(v[0])]

    def pts(points: list[tuple[float, float]]) -> str:
        return " ".join(f"{a:.1f},{b:.1f}" for a, b in points)

    dates = rows["analysis_date"].astype(str).tolist()
    return (
        f"<h4>{_e(title)}</h4><svg width='{PLOT_WIDTH}' height='{TREND_HEIGHT}' role='img'>"
        f"<polygon points='{pts(band)}' fill='#ddf4ff'/>"
        f"<polyline points='{pts(line)}' fill='none' stroke='#0969da' stroke-width='2'/>"
        f"<line x1='40' x2='{PLOT_WIDTH - 20}' y1='{y(0):.1f}' y2='{y(0):.1f}' stroke='#8c959f'/>"
        f"<text x='40' y='{TREND_HEIGHT - 2}'>{_e(dates[0])}</text>"
        f"<text x='{PLOT_WIDTH - 20}' y='{TREND_HEIGHT - 2}' text-anchor='end'>{_e(dates[-1])}"
        f"</text><text x='2' y='{y(hi) + 4:.1f}'>{_fmt(hi, True)}</text>"
        f"<text x='2' y='{y(lo):.1f}'>{_fmt(lo, True)}</text></svg>"
    )


def variance_reduction_table(now: pd.DataFrame) -> str:
    """The CUPED section: per metric and variant, the share of variance the covariate removed.

    Usage:
        >>> now = pd.DataFrame({"metric_id": "ctr", "metric_name": "CTR", "variant": ["1", "2"],
        ...     "statistic": "variance_reduction", "point": [0.412, 0.398]})
        >>> "<td>CTR</td><td>2</td><td>39.8%</td>" in variance_reduction_table(now)
        True
    """
    vr = now[now["statistic"] == "variance_reduction"].sort_values(["metric_id", "variant"])
    if vr.empty:
        return ""
    rows = "".join(
        f"<tr><td>{_e(r.metric_name)}</td><td>{_e(r.variant)}</td>"
        f"<td>{'–' if not math.isfinite(r.point) else f'{r.point:.1%}'}</td></tr>"
        for r in vr.itertuples(index=False)
    )
    return (
        "<h3>Variance reduction (CUPED)</h3><p>Share of the metric's variance removed by its "
        "pre-period covariate, 1 − Var<sub>CUPED</sub> / Var<sub>raw</sub>: the interval is "
        "that much narrower squared, as if the variant had 1 / (1 − reduction) times the units."
        "</p><table><tr><th>metric</th><th>variant</th><th>variance reduction</th></tr>"
        f"{rows}</table>"
    )


#: Results statistics of the Bayesian view (strata.stats.results.BAYES_STATISTICS) shown per row.
_BAYES_POINTS = ("prob_beat_control", "expected_loss_treatment", "expected_loss_control")


def _fmt_loss(x: float, pct: bool) -> str:
    """An expected loss: never negative, so unsigned."""
    if not math.isfinite(x):
        return "–"
    return f"{x:.2%}" if pct else f"{x:.4g}"


def bayes_table(now: pd.DataFrame) -> str:
    """The Bayesian view beside the frequentist table: per metric × comparison the posterior
    mean of the effect with its credible interval, P(treatment beats control) and the expected
    loss of shipping the treatment and of keeping the control.

    Usage:
        >>> now = pd.DataFrame({"metric_id": "ctr", "metric_name": "CTR", "role": "primary",
        ...     "variant": "2", "comparison": "2 vs 1", "statistic": ["bayes_rel_diff",
        ...     "prob_beat_control", "expected_loss_treatment", "expected_loss_control"],
        ...     "point": [0.031, 0.962, 0.0004, 0.0314], "lower": [0.001, None, None, None],
        ...     "upper": [0.061, None, None, None]})
        >>> "<td>+3.10%</td><td>[+0.10%, +6.10%]</td><td>96.2%</td>" in bayes_table(now)
        True
    """
    effect = now[now["statistic"].isin(["bayes_rel_diff", "bayes_abs_diff"])]
    if effect.empty:
        return ""
    pct = bool((effect["statistic"] == "bayes_rel_diff").all())
    key = ["metric_id", "variant"]
    points = {s: now[now["statistic"] == s].set_index(key)["point"] for s in _BAYES_POINTS}
    order = {"primary": 0, "guardrail": 1, "secondary": 2}
    effect = effect.sort_values(["role", "metric_id"], key=lambda s: s.map(order).fillna(s))
    rows = []
    for r in effect.itertuples(index=False):
        k = (r.metric_id, r.variant)
        p_beat = points["prob_beat_control"].get(k, math.nan)
        rows.append(
            f"<tr><td>{_e(r.metric_name)}</td><td>{_e(r.comparison)}</td>"
            f"<td>{_fmt(r.point, pct)}</td><td>[{_fmt(r.lower, pct)}, {_fmt(r.upper, pct)}]</td>"
            f"<td>{'–' if not math.isfinite(p_beat) else f'{p_beat:.1%}'}</td>"
            + "".join(
                f"<td>{_fmt_loss(points[s].get(k, math.nan), pct)}</td>"
                for s in ("expected_loss_treatment", "expected_loss_control")
            )
            + "</tr>"
        )
    scale = "relative effect" if pct else "absolute effect"
    return (
        f"<h3>Bayesian view</h3><p>Posterior of the {scale} (normal approximation, prior in "
        "docs/statistics.md): mean and credible interval, the probability that the treatment "
        "beats the control in the metric's direction, and the expected loss (risk) of shipping "
        "the treatment and of keeping the control. It does not change the decisions above.</p>"
        f"<table><tr><th>metric</th><th>comparison</th><th>{scale}</th><th>credible interval"
        "</th><th>P(beats control)</th><th>risk of treatment</th><th>risk of control</th></tr>"
        f"{''.join(rows)}</table>"
    )


def flagged_segments(now: pd.DataFrame) -> pd.DataFrame:
    """The flagged segments of results rows of one date: ``segment_rel_diff`` rows whose
    ``segment_deviation`` row says ``flagged``, with ``label`` ``dimension=segment``."""
    if "dimension" not in now.columns:
        return now.iloc[0:0]
    key = ["experiment_id", "metric_id", "variant", "dimension", "segment"]
    dev = now[(now["statistic"] == "segment_deviation") & (now["decision"] == "flagged")]
    eff = now[now["statistic"] == "segment_rel_diff"]
    out = eff.merge(dev[key], on=key, how="inner")
    out["label"] = out["dimension"].astype(str) + "=" + out["segment"].astype(str)
    return out.sort_values(key, kind="stable", ignore_index=True)


def segments_section(now: pd.DataFrame) -> str:
    """Flagged segments (effect, adjusted interval) and every heterogeneity test of the date."""
    if "dimension" not in now.columns:
        return ""
    het = now[now["statistic"] == "heterogeneity"]
    if het.empty:
        return ""
    flagged = flagged_segments(now)
    parts = ["<h2>Segments</h2>"]
    if flagged.empty:
        parts.append(
            "<p>No segment flagged: no dimension's heterogeneity test survives the false "
            "discovery rate control.</p>"
        )
    else:
        parts.append(
            "<p class='bad'>Flagged: these segments' effects differ from the rest of their "
            "dimension (heterogeneity test survives BH, and the rest is homogeneous without "
            "them).</p><table><tr><th>segment</th><th>metric</th><th>comparison</th>"
            "<th>rel. effect in segment</th><th>CI (adjusted)</th><th>adj. p</th></tr>"
        )
        for r in flagged.itertuples(index=False):
            parts.append(
                f"<tr><td>{_e(r.label)}</td><td>{_e(r.metric_name)}</td>"
                f"<td>{_e(r.comparison)}</td><td>{_fmt(r.point, True)}</td>"
                f"<td>{_interval(r.lower, r.upper, r.p_value)}</td>"
                f"<td>{_fmt(r.p_value_adjusted)}</td></tr>"
            )
        parts.append("</table>")
    parts.append(
        "<h3>Heterogeneity (treatment × segment), per dimension</h3><table><tr><th>dimension"
        "</th><th>metric</th><th>comparison</th><th>Cochran's Q</th><th>p</th><th>BH adj. p"
        "</th><th>result</th></tr>"
    )
    for r in het.sort_values(["dimension", "metric_id", "variant"]).itertuples(index=False):
        cls = "bad" if r.decision == "heterogeneous" else ""
        parts.append(
            f"<tr><td>{_e(r.dimension)}</td><td>{_e(r.metric_name)}</td>"
            f"<td>{_e(r.comparison)}</td><td>{_fmt(r.point)}</td><td>{_fmt(r.p_value)}</td>"
            f"<td>{_fmt(r.p_value_adjusted)}</td><td class='{cls}'>{_e(r.decision)}</td></tr>"
        )
    parts.append("</table>")
    return "".join(parts)


def _reason(row) -> str:
    """The row's reason; results written before the ``reason`` column have none."""
    reason = getattr(row, "reason", None)
    return "" if reason is None or reason != reason else str(reason)


def recommendation_html(now: pd.DataFrame) -> str:
    """The recommendation first: its decision and one-sentence reason, then the guardrails.

    Usage:
        >>> now = pd.DataFrame({"metric_id": ["__recommendation__", "rev"],
        ...     "metric_name": ["recommendation", "revenue"], "comparison": ["2 vs 1"] * 2,
        ...     "statistic": ["recommendation", "guardrail"], "decision": ["ship", "ok"],
        ...     "reason": ["ship B: conversion +4.1% (CI +2.0% to +6.2%); guardrails ok (revenue)",
        ...                "revenue +0.3% (CI -0.5% to +1.0%) is within its 1% margin"]})
        >>> html = recommendation_html(now)
        >>> "<span class='win'>ship</span> — ship B: conversion +4.1%" in html
        True
    """
    top = now[now["metric_id"] == RECOMMENDATION_METRIC_ID]
    if top.empty:
        return "<h2>Recommendation</h2><p>No recommendation stored for this analysis.</p>"
    r = top.iloc[0]
    label, css = RECOMMENDATION_LABELS.get(r["decision"], (r["decision"], ""))
    guards = now[now["statistic"] == "guardrail"].sort_values(["comparison", "metric_name"])
    items = "".join(
        f"<li>{_e(g.metric_name)} · {_e(g.comparison)}: <span "
        f"class='{GUARDRAIL_CLASSES.get(g.decision, '')}'>{_e(g.decision)}</span> — "
        f"{_e(_reason(g))}</li>"
        for g in guards.itertuples(index=False)
    )
    return (
        f"<h2>Recommendation</h2><p class='rec'><span class='{css}'>{_e(label)}</span> — "
        f"{_e(_reason(r))}</p>" + (f"<h3>Guardrails</h3><ul>{items}</ul>" if items else "")
    )


def render_experiment_report(results: pd.DataFrame, experiment_id: str) -> str:
    """HTML page of one experiment from its results rows (all dates)."""
    res = results[results["experiment_id"] == experiment_id]
    if res.empty:
        return _page(experiment_id, f"<h1>{_e(experiment_id)}</h1><p>No results yet.</p>")
    latest = res["analysis_date"].max()
    now = res[res["analysis_date"] == latest]
    srm = now[now["metric_id"] == SRM_METRIC_ID]
    srm_ok = bool((srm["decision"] == "passed").all()) if len(srm) else None
    srm_html = (
        "<p>No exposure data for an SRM check.</p>"
        if srm_ok is None
        else "".join(
            f"<p class='{'ok' if r.decision == 'passed' else 'bad'}'>{_e(r.metric_name)}: "
            f"{_e(r.decision)} (χ² = {_fmt(r.point)}, p = {_fmt(r.p_value)})</p>"
            for r in srm.itertuples(index=False)
        )
    )
    if srm_ok is False:
        srm_html += "<p class='bad'>Sample ratio mismatch: effects are not trustworthy.</p>"
    verdict = now[now["metric_id"] == VERDICT_METRIC_ID]
    verdict_html = "".join(
        f"<li>{_e(r.comparison)}: <span class='{_e(r.decision)}'>{_e(r.decision)}</span></li>"
        for r in verdict.itertuples(index=False)
    )
    rel = now[now["statistic"] == "rel_diff"].copy()
    rel["label"] = rel["metric_name"].astype(str) + " · " + rel["comparison"].astype(str)
    order = {"primary": 0, "guardrail": 1, "secondary": 2}
    rel = rel.sort_values(["role", "metric_id"], key=lambda s: s.map(order).fillna(s))
    means = now[now["statistic"] == "mean"].set_index(["metric_id", "variant"])["point"]
    counts = now[now["statistic"] == "count"].set_index(["metric_id", "variant"])["point"]
    table = [
        "<table><tr><th>metric</th><th>role</th><th>comparison</th><th>mean</th><th>units</th>"
        "<th>rel. effect</th><th>CI (adjusted)</th><th>p</th><th>adj. p</th><th>decision</th></tr>"
    ]
    for r in rel.itertuples(index=False):
        key = (r.metric_id, r.variant)
        table.append(
            f"<tr><td>{_e(r.metric_name)}</td><td>{_e(r.role)}</td><td>{_e(r.comparison)}</td>"
            f"<td>{_fmt(means.get(key))}</td><td>{_fmt(counts.get(key))}</td>"
            f"<td>{_fmt(r.point, True)}</td><td>{_interval(r.lower, r.upper, r.p_value)}"
            f"</td><td>{_fmt(r.p_value)}</td><td>{_fmt(r.p_value_adjusted)}</td>"
            f"<td class='{_e(r.decision)}'>{_e(r.decision)}</td></tr>"
        )
    table.append("</table>")
    table.append(bayes_table(now))
    table.append(variance_reduction_table(now))
    history = res[res["statistic"] == "rel_diff"]
    trends = "".join(
        trend_plot(g, f"{name} · {comp}")
        for (name, comp), g in history.groupby(["metric_name", "comparison"], sort=True)
    )
    body = (
        f"<p><a href='index.html'>all experiments</a></p><h1>{_e(experiment_id)}</h1>"
        f"<p>Analysis date {_e(latest)} · window {_e(now['window'].iloc[0])} · run "
        f"{_e(now['run_id'].iloc[0])}</p>{recommendation_html(now)}"
        f"<h2>Verdict per treatment</h2><ul>{verdict_html}</ul>"
        f"<h2>Data quality</h2>{srm_html}"
        f"<p>Inputs (Iceberg snapshots): <code>{_e(now['input_snapshots'].iloc[0])}</code></p>"
        f"<h2>Effects (relative, with adjusted confidence intervals)</h2>{forest_plot(rel)}"
        f"<h2>Metrics</h2>{''.join(table)}{segments_section(now)}"
        f"<h2>Cumulative effect over time</h2>{trends}"
    )
    return _page(f"Strata · {experiment_id}", body)


def render_index(results: pd.DataFrame) -> str:
    """HTML index of all experiments in ``results`` with their latest status."""
    rows = []
    for exp_id, res in results.groupby("experiment_id", sort=True):
        latest = res["analysis_date"].max()
        now = res[res["analysis_date"] == latest]
        srm = now[now["metric_id"] == SRM_METRIC_ID]
        srm_ok = (srm["decision"] == "passed").all()
        verdict = now[now["metric_id"] == VERDICT_METRIC_ID]
        decisions = ", ".join(f"{r.comparison}: {r.decision}" for r in verdict.itertuples())
        top = now[now["metric_id"] == RECOMMENDATION_METRIC_ID]
        if top.empty:
            rec = "<td>–</td><td>–</td>"
        else:
            r = next(top.itertuples(index=False))
            label, css = RECOMMENDATION_LABELS.get(r.decision, (r.decision, ""))
            rec = f"<td class='{css}'>{_e(label)}</td><td>{_e(_reason(r))}</td>"
        flagged = flagged_segments(now)
        segments = ", ".join(
            f"{r.metric_id} {r.variant}: {r.label}" for r in flagged.itertuples(index=False)
        )
        rows.append(
            f"<tr><td><a href='{_e(exp_id)}.html'>{_e(exp_id)}</a></td>{rec}<td>{_e(latest)}</td>"
            f"<td class='{'ok' if srm_ok else 'bad'}'>{'ok' if srm_ok else 'SRM'}</td>"
            f"<td>{_e(decisions) or '–'}</td><td>{_e(segments) or '–'}</td></tr>"
        )
    body = (
        "<h1>Strata experiments</h1><table><tr><th>experiment</th><th>recommendation</th>"
        "<th>reason</th><th>latest analysis</th>"
        "<th>SRM</th><th>verdict per treatment</th><th>flagged segments</th></tr>"
        f"{''.join(rows)}</table>"
    )
    return _page("Strata experiments", body)


def write_reports(
    results: pd.DataFrame, out_dir: Path, experiment_ids: Sequence[str] | None = None
) -> list[Path]:
    """Write ``<experiment>.html`` per experiment and ``index.html``; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = sorted(results["experiment_id"].unique()) if experiment_ids is None else experiment_ids
    paths = []
    for exp_id in ids:
        path = out_dir / f"{exp_id}.html"
        path.write_text(render_experiment_report(results, exp_id), encoding="utf-8")
        paths.append(path)
    index = out_dir / "index.html"
    index.write_text(render_index(results), encoding="utf-8")
    return [*paths, index]


def build_reports(
    catalog: Catalog,
    out_dir: Path,
    experiment_ids: Sequence[str] | None = None,
    namespace: str = "strata",
    table: str = RESULTS_TABLE,
) -> list[Path]:
    """``strata report [EXP]``: read the results table and write the HTML pages."""
    results = read_results(catalog, None, table, namespace)
    return write_reports(results, out_dir, experiment_ids)
