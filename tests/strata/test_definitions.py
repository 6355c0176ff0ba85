"""Definition files: every validation error from a fixture, the bundled examples, schema, CLI."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import jsonschema
import pytest
import yaml

from strata.definitions import (
    SCHEMA_PATH,
    DefinitionError,
    bundled_path,
    format_plan,
    json_schema,
    load,
    metrics_json,
    plan_rows,
    variants_json,
)
from strata.metrics import ExpressionError, metric_forms, parse_linear
from strata.synthetic import DEFAULT_START_DATE, PLANTED_EFFECTS
from strata_apps.cli import main as cli

DATA = Path(__file__).resolve().parents[1] / "data" / "definitions"
INVALID = DATA / "invalid"

# fixture file -> (path inside the file, fragment of the message) of the expected problem(s).
EXPECTED = {
    "unknown_field": [("experiments[0].colour", "unknown field")],
    "wrong_type": [("layers[0].priority", "valid integer")],
    "duplicate_experiment_id": [
        ("experiments[1].id", "duplicate experiment id 'a' (first defined at")
    ],
    "duplicate_vid": [("experiments[0].variants[1].vid", "duplicate variant vid 1")],
    "range_outside": [("experiments[0].variants[1]", "[5000, 10001) is not inside [0, 10000)")],
    "overlap_in_layer": [
        ("experiments[1]", "second/control [5000, 8000) overlaps first/treatment [3000, 6000)")
    ],
    "layer_over_100": [("experiments[0]", "layer 'checkout' is over 100%: 140.00%")],
    "domain_over_100": [
        ("domains[0]", "domain 'global' is over 100%: 120.00%"),
        ("domains[1]", "domain 'right' [4000, 10000) overlaps domain 'left' [0, 6000)"),
    ],
    "end_before_start": [("experiments[0]", "end_date 2026-11-08 is before start_date")],
    "unknown_operator": [("experiments[0].targeting.children[0].op", "'eq', 'neq'")],
    "operator_type_mismatch": [
        ("experiments[0].targeting.children[1]", "operator 'like' does not apply to int")
    ],
    "invalid_semver": [("experiments[0].targeting", "invalid semver literal '1.2'")],
    "no_control": [("experiments[0]", "no control variant")],
    "layer_without_salt": [("layers[0].salt", "Field required")],
    "shared_salt": [("layers[1].salt", "duplicate layer salt 'same-salt'")],
    "unknown_layer": [("experiments[0].layer", "unknown layer 'nowhere'")],
    "bad_metric": [("experiments[0].metrics[0].nominator", "unexpected end at position 24")],
    "non_overlapping_two_layers": [("layers[1]", "non_overlapping domain 'labs' holds one layer")],
    "sibling_salts_differ": [("domains[0].salt", "must share one split salt")],
    "not_yaml": [("line 2", "not valid YAML")],
    # Hostile files (issue 12): each was a traceback, a hang or silently accepted.
    "impossible_date": [("experiments[0].start_date", "day value is outside expected range")],
    "not_utf8": [("line 8", "not UTF-8 text: byte 0xe9 at column 21")],
    "recursive_anchor": [("line 12", "alias *loop refers to its own anchor (recursive)")],
    "deep_nesting": [("line 11", "nested more than 64 levels deep")],
    "huge_integer": [("line 3", "(5,000 characters) does not fit in 64 bits")],
    "infinite_weight": [("line 12", "number .inf is not finite")],
    "duplicate_key": [("line 11", "duplicate key 'status' (first at line 8)")],
    "alias_bomb": [("line 20", "aliases stand for over 10,000 nodes (at *c)")],
    "empty": [("<root>", "empty file; expected a mapping of domains/layers/experiments")],
    "non_string_key": [("line 11", "mapping key True is a bool, not a string (quote it)")],
    "set_tag": [("line 10", "tag !!set is not allowed")],
}


def test_every_fixture_has_an_expectation():
    assert {p.stem for p in INVALID.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_invalid_fixture_reports_file_path_and_message(name):
    with pytest.raises(DefinitionError) as exc:
        load(INVALID / f"{name}.yaml")
    problems = exc.value.problems
    assert all(p.startswith(f"{name}.yaml: ") for p in problems), problems
    for path, fragment in EXPECTED[name]:
        hits = [p for p in problems if p.startswith(f"{name}.yaml: {path}: ") and fragment in p]
        assert hits, f"no problem at {path} with {fragment!r} in {problems}"


def test_problems_from_several_files_are_all_reported(tmp_path):
    for name in ("shared_salt", "unknown_field", "no_control"):
        (tmp_path / f"{name}.yaml").write_text((INVALID / f"{name}.yaml").read_text())
    with pytest.raises(DefinitionError) as exc:
        load(tmp_path)
    files = sorted(p.split(":")[0] for p in exc.value.problems)
    # Parse errors stop before cross-file checks, so the shared salt is not reported yet.
    assert files == ["no_control.yaml", "unknown_field.yaml"]


def test_an_empty_folder_is_an_error(tmp_path):
    with pytest.raises(DefinitionError, match=r"no \.yaml/\.yml definition files"):
        load(tmp_path)


class TestBundled:
    @pytest.fixture(scope="class")
    def defs(self):
        return load(bundled_path())

    def test_layout_has_domains_launch_layer_and_targeted_experiments(self, defs):
        assert {d.kind for d in defs.domains} == {"overlapping", "non_overlapping"}
        assert any(d.parent != "global" for d in defs.domains)  # nested
        assert [lay.id for lay in defs.layers if lay.launch] == ["launch"]
        targeted = [e for e in defs.experiments if e.assigned and e.targeting is not None]
        assert len(targeted) >= 5

    @pytest.mark.parametrize("effect", PLANTED_EFFECTS, ids=lambda e: e.experiment_id)
    def test_planted_effects_match_the_definitions(self, defs, effect):
        e = defs.experiment(effect.experiment_id)
        layer = defs.layer(e.layer)
        assert (layer.salt, layer.unit_type) == (effect.salt, effect.unit_type)
        treatment = [v for v in e.variants if not v.is_control]
        control = [v for v in e.variants if v.is_control]
        assert [(v.start, v.end) for v in treatment] == [(effect.slot_start, effect.slot_end)]
        (c,) = control
        assert c.end - c.start == effect.slot_end - effect.slot_start
        assert c.end <= effect.slot_start or c.start >= effect.slot_end
        assert e.start_date == DEFAULT_START_DATE.replace(day=DEFAULT_START_DATE.day + 7)
        assert e.end_date.isoformat() >= "2026-11-14"
        assert e.status == "running"

    def test_planted_segment_effect_matches_the_definitions(self, defs):
        """The segment-only effect sits on one treatment variant of onboarding_tour, on a goal
        only its `invites` metric reads, in a country the experiment targets."""
        from strata.synthetic import PLANTED_SEGMENT_EFFECT as effect

        e = defs.experiment(effect.experiment_id)
        assert (defs.layer(e.layer).salt, defs.layer(e.layer).unit_type) == (
            effect.salt,
            effect.unit_type,
        )
        (variant,) = [v for v in e.variants if v.vid == effect.variant]
        assert not variant.is_control
        assert (variant.start, variant.end) == (effect.slot_start, effect.slot_end)
        readers = [
            (x.id, m.id)
            for x in defs.experiments
            for m in x.metrics
            if f".{effect.goal})" in m.nominator + m.denominator + (m.covariate or "")
        ]
        assert readers == [("onboarding_tour", "invites")]
        assert effect.segment == ("country", "DE")
        assert "DE" in e.targeting_json["children"][0]["values"]

    def test_aa_experiment(self, defs):
        e = defs.experiment("price_display")
        assert defs.layer(e.layer).salt == "pricing-2026"
        assert [(v.is_control, v.start, v.end) for v in e.variants] == [
            (True, 0, 2000),
            (False, 2000, 4000),
        ]
        assert e.variants[0].params == e.variants[1].params

    def test_version_depends_on_content_not_formatting(self, defs, tmp_path):
        for f in bundled_path().glob("*.yaml"):
            data = yaml.safe_load(f.read_text())
            (tmp_path / f.name).write_text(yaml.safe_dump(data, default_flow_style=True))
        assert load(tmp_path).version == defs.version
        checkout = tmp_path / "checkout.yaml"
        checkout.write_text(checkout.read_text().replace("Buy now", "Buy it now"))
        assert load(tmp_path).version != defs.version

    def test_weighted_variants_split_the_experiment_slots(self, defs):
        tour = defs.experiment("onboarding_tour")
        assert [(v.start, v.end) for v in tour.variants] == [(0, 5000), (5000, 7500), (7500, 10000)]

    def test_plan_lists_every_variant_and_the_free_space(self, defs):
        rows = plan_rows(defs)
        variants = {(r["experiment"], r["vid"]) for r in rows if r["vid"] is not None}
        assert variants == {(e.id, v.vid) for e in defs.experiments for v in e.variants}
        free = {r["layer"]: r["of_layer"] for r in rows if r["experiment"] == "(free)"}
        assert free["pricing"] == pytest.approx(0.4)
        assert set(free) == {lay.id for lay in defs.layers}
        # checkout: main domain is 90% of traffic, the treatment half of the layer.
        row = next(r for r in rows if r["vid"] == 1002)
        assert row["of_traffic"] == pytest.approx(0.45)
        # onboarding: nested growth domain is 50% of main -> 45% of traffic, control 50% of it.
        row = next(r for r in rows if r["vid"] == 5001)
        assert row["of_traffic"] == pytest.approx(0.225)
        assert "4000 slots" in format_plan(defs)


class TestSchema:
    def test_committed_schema_is_the_generated_one(self):
        assert json.loads(SCHEMA_PATH.read_text()) == json_schema()

    @pytest.mark.parametrize("path", sorted(bundled_path().glob("*.yaml")), ids=lambda p: p.name)
    def test_bundled_files_validate_against_the_committed_schema(self, path):
        schema = json.loads(SCHEMA_PATH.read_text())
        data = json.loads(json.dumps(yaml.safe_load(path.read_text()), default=str))
        jsonschema.validate(data, schema)

    def test_schema_rejects_unknown_fields(self):
        schema = json.loads(SCHEMA_PATH.read_text())
        with pytest.raises(jsonschema.ValidationError, match="colour"):
            jsonschema.validate({"layers": [], "colour": 1}, schema)


@pytest.mark.parametrize(
    "expr",
    [
        "count(user.unit.purchase)",
        "value(user.unit.purchase) - 0.5 * value(user.unit.refund)",
        "(count(user.unit.x) + count(user.unit.y)) * 2",
        "count(user.unit.conversion(product=p_1))",
        "unique(user.unit.purchase) / 2",
    ],
)
def test_ep_stats_expressions_accepted(expr):
    parse_linear(expr)
    load_metric(nominator=expr)


#: What the engine refuses, definitions refuse too (one grammar: strata.metrics).
REJECTED = [
    "",
    "count(user.unit)",
    "count(user.level.x)",
    "count(a.unit.x) count(a.unit.y)",
    "(1",
    "1 +",
    "sum_sqr_count(user.unit.purchase)",
    "sum_sqr_value(user.unit.purchase)",
    "count(user.unit.click) * count(user.unit.view)",
    "count(user.unit.click) / count(user.unit.view)",
    "count(user.unit.click) + 1",
    "2",
]


@pytest.mark.parametrize("expr", REJECTED)
def test_bad_expressions_rejected_by_engine_and_definitions(expr):
    with pytest.raises(ExpressionError):
        parse_linear(expr)
    with pytest.raises(DefinitionError, match=r"metrics\[0\]\.nominator: "):
        load_metric(nominator=expr)


def load_metric(**fields):
    """Load minimal.yaml with its first experiment's metrics replaced by one metric."""
    base = yaml.safe_load((DATA / "valid" / "minimal.yaml").read_text())
    metric = {"id": "m", "name": "M", "nominator": "count(user.unit.purchase)",
              "denominator": "count(user.global.exposure)", **fields}  # fmt: skip
    base["experiments"][0]["metrics"] = [metric]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.yaml"
        path.write_text(yaml.safe_dump(base))
        return load(path).experiments[0].metrics[0]


class TestMetricOptions:
    def test_defaults(self):
        m = load_metric()
        assert (m.direction, m.covariate, m.minimum_effect) == ("increase", None, None)
        assert set(m.as_json()) == {"id", "name", "nominator", "denominator", "role"}

    def test_options_accepted_and_stored(self):
        m = load_metric(direction="decrease", covariate="count(user.unit.pre_purchase)",
                        minimum_effect=0.05)  # fmt: skip
        assert (m.direction, m.covariate, m.minimum_effect) == (
            "decrease", "count(user.unit.pre_purchase)", 0.05)  # fmt: skip
        assert m.as_json()["covariate"] == "count(user.unit.pre_purchase)"

    @pytest.mark.parametrize(
        ("fields", "where", "message"),
        [
            ({"direction": "down"}, "direction", "'increase' or 'decrease'"),
            ({"minimum_effect": 0}, "minimum_effect", "greater than 0"),
            ({"minimum_effect": -0.1}, "minimum_effect", "greater than 0"),
            ({"covariate": "count(user.unit.pre_x"}, "covariate", "expected"),
            ({"covariate": "sum_sqr_count(user.unit.pre_x)"}, "covariate", "unknown function"),
            ({"covariate": "count(user.global.pre_x)"}, "", "covariate must use unit terms"),
            ({"covariate": "count(device.unit.pre_x)"}, "", "terms mix unit types"),
            ({"denominator": "count(user.unit.x) + count(user.global.y)"}, "", "mixes global"),
        ],
    )
    def test_options_validated(self, fields, where, message):
        with pytest.raises(DefinitionError) as exc:
            load_metric(**fields)
        (problem,) = exc.value.problems
        assert f"metrics[0]{'.' + where if where else ''}: " in problem
        assert message in problem

    def test_margin_on_a_guardrail_is_stored(self):
        m = load_metric(role="guardrail", margin=0.01)
        assert (m.role, m.margin) == ("guardrail", 0.01)
        assert m.as_json()["margin"] == 0.01
        assert "margin" not in load_metric(role="guardrail").as_json()

    @pytest.mark.parametrize("role", ["primary", "secondary"])
    def test_margin_only_on_guardrails(self, role):
        with pytest.raises(DefinitionError) as exc:
            load_metric(role=role, margin=0.01)
        (problem,) = exc.value.problems
        assert "experiments[0]: " in problem
        assert "metric 'm': margin is only for guardrail metrics" in problem
        assert f"(role is {role!r})" in problem

    @pytest.mark.parametrize("margin", [0, -0.01])
    def test_margin_must_be_positive(self, margin):
        with pytest.raises(DefinitionError, match=r"metrics\[0\]\.margin: .*greater than 0"):
            load_metric(role="guardrail", margin=margin)

    def test_margin_survives_the_experiments_table(self):
        """The stored metrics JSON carries the margin back to the engine's design."""
        from strata.stats.models import experiment_from_record

        e = load(bundled_path()).experiment("checkout_button")
        stored = json.dumps(metrics_json(e))
        design = experiment_from_record({"experiment_id": e.id, "variants": variants_json(e),
                                         "metrics": stored})  # fmt: skip
        assert {m.id: m.margin for m in design.metrics} == {
            "conversion": None, "revenue": 0.01, "sessions": None}  # fmt: skip
        assert design.metrics == e.metrics

    def test_engine_reads_the_stored_metric(self):
        from strata.stats.models import experiment_from_record

        e = load(bundled_path()).experiment("feed_ranking")
        design = experiment_from_record({"experiment_id": e.id, "variants": variants_json(e),
                                         "metrics": json.dumps(metrics_json(e))})  # fmt: skip
        assert design.metrics == e.metrics
        assert [v.vid for v in design.variants] == [v.vid for v in e.variants]
        assert all(isinstance(v.vid, int) for v in design.variants)


def test_metric_forms_one_grammar():
    f = metric_forms("count(u.unit.c)", "count(u.unit.v)", "count(u.unit.pre_c)")
    assert f.is_ratio
    assert f.unit_type == "u"


class TestCli:
    def test_validate_ok(self, capsys):
        assert cli(["validate", str(bundled_path())]) == 0
        assert "OK" in capsys.readouterr().out

    def test_validate_reports_one_line_per_problem_and_exits_1(self, capsys):
        assert cli(["validate", str(INVALID / "domain_over_100.yaml")]) == 1
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 3  # two problems and the count
        assert err[0].startswith("domain_over_100.yaml: domains[0]: ")

    def test_plan(self, capsys):
        assert cli(["plan", str(DATA / "valid")]) == 0
        out = capsys.readouterr().out
        assert "button" in out
        assert "50.00%" in out


def test_design_vid_is_an_int():
    from strata.stats import DesignError
    from strata.stats.models import experiment_from_record

    record = {"experiment_id": "e", "metrics": [],
              "variants": [{"vid": "3001", "is_control": True, "weight": 1},
                           {"vid": 3002, "weight": 1}]}  # fmt: skip
    assert [v.vid for v in experiment_from_record(record).variants] == [3001, 3002]
    record["variants"][1]["vid"] = "treatment"
    with pytest.raises(DesignError, match=r"variants\.1\.vid"):
        experiment_from_record(record)
