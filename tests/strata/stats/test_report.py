"""HTML reports: self-contained pages with the forest plot, trend, SRM status and metric table."""

from __future__ import annotations

import re
from datetime import date, timedelta

import numpy as np
import pandas as pd

from strata.stats import evaluate
from strata.stats.aggregate import aggregate_arrays
from strata.stats.report import write_reports
from strata.stats.results import results_frame

START = date(2026, 5, 1)
DAYS = 4


def experiment(exp_id: str) -> dict:
    return {
        "experiment_id": exp_id,
        "variants": [{"vid": int(v), "is_control": v == "1", "weight": 1} for v in "123"],
        "metrics": [
            {
                "id": 1,
                "name": "clicks <script>alert(1)</script>",
                "role": "primary",
                "nominator": "count(user.unit.click)",
                "denominator": "count(user.global.exposure)",
            },
            {
                "id": 2,
                "name": "revenue",
                "role": "guardrail",
                "nominator": "value(user.unit.click)",
                "denominator": "count(user.global.exposure)",
            },
        ],
        "start_date": START,
        "end_date": START + timedelta(days=13),
    }


def history(lost_units: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(9)
    clicks = rng.poisson(np.array([1.0, 1.5, 1.0])[None, :, None], (2, 3, 400)).astype(float)
    clicks[1, 1, 400 - lost_units :] = np.nan  # exp "lossy" loses units in variant b
    frames = []
    for day in range(1, DAYS + 1):
        seen = np.where(np.arange(400) < day * 100, clicks, np.nan)
        goals, _ = aggregate_arrays(
            ["good", "lossy"], [["1", "2", "3"]] * 2, "user", {"click": (seen, seen * 2)}
        )
        when = START + timedelta(days=day - 1)
        ev = evaluate(goals, [experiment("good"), experiment("lossy")], analysis_date=when)
        frames.append(results_frame(ev, f"run{day}", {"strata.goal_aggregates": day}))
    return pd.concat(frames, ignore_index=True)


def test_reports_are_self_contained_and_show_effects(tmp_path):
    paths = write_reports(history(lost_units=150), tmp_path)
    assert sorted(p.name for p in paths) == ["good.html", "index.html", "lossy.html"]
    good = (tmp_path / "good.html").read_text()
    assert "<script" not in good  # metric names are escaped, no JS at all
    assert "&lt;script&gt;" in good
    assert not re.search(r"(src|href)=['\"]https?:", good)  # nothing loaded from elsewhere
    # forest plot: one point per metric × treatment comparison (2 metrics × 2 treatments)
    forest = good.split("<h2>Effects")[1].split("<h2>")[0]
    assert forest.count("<circle") == 4
    # the planted +50% effect on b is a significant win; c (no effect) is not
    assert "2 vs 1" in good
    table = good.split("<h2>Metrics</h2>")[1].split("<h2>")[0]
    b_row = next(r for r in table.split("<tr>") if "2 vs 1" in r and "clicks" in r)
    c_row = next(r for r in table.split("<tr>") if "3 vs 1" in r and "clicks" in r)
    assert "class='win'" in b_row
    assert "class='win'" not in c_row
    # cumulative effect over time: one trend per metric × comparison, one point per day
    trends = good.split("Cumulative effect over time")[1]
    lines = re.findall(r"<polyline points='([^']*)'", trends)
    assert len(lines) == 4
    assert all(len(points.split()) == DAYS for points in lines)
    assert "Sample ratio mismatch" not in good


def test_srm_failure_is_flagged_in_page_and_index(tmp_path):
    write_reports(history(lost_units=150), tmp_path)
    lossy = (tmp_path / "lossy.html").read_text()
    assert "Sample ratio mismatch: effects are not trustworthy" in lossy
    assert "invalid_srm" in lossy
    index = (tmp_path / "index.html").read_text()
    rows = {r.split("</a>")[0].split(">")[-1]: r for r in index.split("<tr>")[2:]}
    assert "class='bad'>SRM" in rows["lossy"]
    assert "2 vs 1: invalid_srm" in rows["lossy"]
    assert "class='ok'>ok" in rows["good"]
    assert "2 vs 1: win" in rows["good"]
    assert "3 vs 1: inconclusive" in rows["good"]


def test_cuped_variance_reduction_is_stored_and_shown(tmp_path):
    """A CUPED metric stores 1 - Var_cuped/Var_raw per variant; the page shows it."""
    from strata.stats import required_cross_terms

    rng = np.random.default_rng(11)
    pre = rng.poisson(2.0, (1, 2, 2000)).astype(float)
    clicks = rng.poisson(pre + 0.5)  # clicks during the test follow the pre-period clicks
    exp = experiment("cuped")
    exp["metrics"].append({"id": 3, "name": "clicks (CUPED)", "role": "secondary",
                           "nominator": "count(user.unit.click)",
                           "denominator": "count(user.global.exposure)",
                           "covariate": "count(user.unit.pre_click)"})  # fmt: skip
    exp["variants"] = exp["variants"][:2]
    pairs = required_cross_terms([exp])
    goals, cross = aggregate_arrays(
        ["cuped"], [["1", "2"]], "user", {"click": (clicks, clicks * 2), "pre_click": (pre, pre)},
        list(zip(pairs.term_x, pairs.term_y, strict=True)),
    )  # fmt: skip
    ev = evaluate(goals, [exp], cross, analysis_date=START)
    frame = results_frame(ev, "run", {})
    vr = frame[frame["statistic"] == "variance_reduction"]
    assert set(vr["metric_id"]) == {"3"}
    assert sorted(vr["variant"]) == ["1", "2"]
    # expected corr(click, pre)² = Cov² / (Var click · Var pre) = 2² / (4.5 · 2) ≈ 0.44
    assert ((vr["point"] > 0.3) & (vr["point"] < 0.9)).all()
    raw = ev.metrics.set_index(["metric_id", "variant"])
    cuped_se, raw_se = raw.loc[("3", "2"), "abs_se"], raw.loc[("1", "2"), "abs_se"]
    assert cuped_se < raw_se
    page = (write_reports(frame, tmp_path)[0]).read_text()
    assert "Variance reduction (CUPED)" in page
    assert f"<td>clicks (CUPED)</td><td>2</td><td>{vr['point'].iloc[1]:.1%}</td>" in page


def test_bayesian_view_is_shown_beside_the_frequentist_table(tmp_path):
    results = history()
    write_reports(results, tmp_path)
    good = (tmp_path / "good.html").read_text()
    section = good.split("<h2>Metrics</h2>")[1].split("<h3>Bayesian view</h3>")[1]
    rows = section.split("</table>")[0].split("<tr>")
    assert "<th>credible interval</th><th>P(beats control)</th>" in rows[1]
    body = [r for r in rows if "<td>" in r]
    assert len(body) == 4  # 2 metrics × 2 treatments
    latest = results[results["analysis_date"] == results["analysis_date"].max()]
    latest = latest[latest["experiment_id"] == "good"]
    p_win = latest.query("statistic == 'prob_beat_control' and variant == '2'")["point"]
    assert (p_win > 0.975).all()  # the planted +50% effect on b
    b_row = next(r for r in body if "2 vs 1" in r and "clicks" in r)
    assert f"<td>{p_win.iloc[0]:.1%}</td>" in b_row


def test_recommendation_comes_first_in_page_and_index(tmp_path):
    write_reports(history(lost_units=150), tmp_path)
    good = (tmp_path / "good.html").read_text()
    body = good.split("<body>")[1]
    headings = re.findall(r"<h2>([^<]*)</h2>", body)
    assert headings[0] == "Recommendation"  # before the verdicts, SRM, effects and tables
    rec = body.split("<h2>Recommendation</h2>")[1].split("<h2>")[0]
    assert "<span class='win'>ship</span> — ship 2: clicks &lt;script&gt;" in rec
    # the guardrail (revenue, no margin) of each treatment, with its outcome and reason
    guards = rec.split("<h3>Guardrails</h3>")[1]
    assert guards.count("<li>") == 2
    assert "revenue · 2 vs 1: <span class='ok'>ok</span> — revenue +" in guards
    assert "is significantly better" in guards
    lossy = (tmp_path / "lossy.html").read_text()
    assert "<span class='bad'>invalid (SRM)</span> — sample ratio mismatch (user p = " in lossy
    index = (tmp_path / "index.html").read_text()
    header = index.split("<tr>")[1]
    assert header.index("recommendation") < header.index("latest analysis")
    rows = {r.split("</a>")[0].split(">")[-1]: r for r in index.split("<tr>")[2:]}
    assert "<td class='win'>ship</td><td>ship 2: clicks" in rows["good"]
    assert "<td class='bad'>invalid (SRM)</td>" in rows["lossy"]


def test_results_without_recommendation_rows_still_render(tmp_path):
    """Rows written before the recommendation (no reason column, no such rows) still render."""
    old = history()
    old = old[~old["statistic"].isin(["recommendation", "guardrail"])].drop(columns="reason")
    write_reports(old, tmp_path)
    good = (tmp_path / "good.html").read_text()
    assert "No recommendation stored for this analysis." in good
    assert "<td>–</td><td>–</td>" in (tmp_path / "index.html").read_text()


def test_flagged_segments_are_shown_in_page_and_index(tmp_path):
    """A DE-only lift: the page lists country=DE as flagged with its effect and every
    heterogeneity test; the index names it; a page without segment rows has no section."""
    from strata.stats.results import segment_results_frame
    from strata.stats.segments import evaluate_segments

    rng = np.random.default_rng(12)
    frames = []
    for dim, segs in (
        ("country", {"US": 1.0, "GB": 1.0, "DE": 1.6}),
        ("visitor", {"new": 1.1, "returning": 1.1}),
    ):
        for seg, lift in segs.items():
            clicks = rng.poisson(np.array([1.0, lift, 1.0])[None, :, None], (1, 3, 1500)) * 1.0
            g, _ = aggregate_arrays(
                ["good"], [["1", "2", "3"]], "user", {"click": (clicks, clicks)}
            )
            frames.append(g.assign(dimension=dim, segment=seg))
    day = START + timedelta(days=DAYS - 1)
    seg = evaluate_segments(pd.concat(frames, ignore_index=True), [experiment("good")],
                            analysis_date=day)  # fmt: skip
    rows = pd.concat([history(), segment_results_frame(seg, "run-seg", {})], ignore_index=True)
    write_reports(rows, tmp_path)
    page = (tmp_path / "good.html").read_text()
    assert "<h2>Segments</h2>" in page
    assert "Flagged" in page
    assert re.search(r"<td>country=DE</td><td>clicks &lt;script&gt;", page)
    assert "country=US</td>" not in page
    assert "visitor=" not in page
    assert page.count("<td>heterogeneous</td>") == 0  # class attribute carries the style
    assert page.count(">heterogeneous</td>") >= 1
    assert ">homogeneous</td>" in page
    index = (tmp_path / "index.html").read_text()
    assert "1 2: country=DE" in index
    assert "<h2>Segments</h2>" not in (tmp_path / "lossy.html").read_text()
