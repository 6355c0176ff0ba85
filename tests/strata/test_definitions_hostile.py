"""Hostile definition files (issue 12, item 7): each is refused with one ``file: path: message``.

The small fixtures are in ``tests/data/definitions/invalid/`` (checked by test_definitions.py);
here are the ones generated in tmp (too big to commit), the limits' boundaries, both parsers, and
the command line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from strata import safe_yaml
from strata.definitions import DefinitionError, load
from strata_apps.cli import main as cli

INVALID = Path(__file__).resolve().parents[1] / "data" / "definitions" / "invalid"
HOSTILE = [
    "impossible_date",
    "not_utf8",
    "recursive_anchor",
    "deep_nesting",
    "huge_integer",
    "infinite_weight",
    "duplicate_key",
    "alias_bomb",
    "empty",
    "non_string_key",
    "set_tag",
]

LAYER = "layers:\n  - {id: checkout, salt: checkout-test, unit_type: user_id, priority: 100}\n"


def experiment(i: int, *, params: str = "{}", extra: str = "") -> str:
    """One valid experiment of layer ``checkout`` taking slots [2i, 2i+2), as YAML list item."""
    return (
        f"  - id: exp_{i}\n    name: Experiment {i}\n    owner: team@strata.dev\n"
        f"    layer: checkout\n    start_date: 2026-11-08\n    end_date: 2026-11-14\n{extra}"
        f"    variants:\n"
        f"      - {{vid: {2 * i + 1}, name: control, is_control: true, start: {2 * i},"
        f" end: {2 * i + 1}, params: {params}}}\n"
        f"      - {{vid: {2 * i + 2}, name: treatment, start: {2 * i + 1}, end: {2 * i + 2}}}\n"
    )


def problems_of(path: Path) -> list[str]:
    with pytest.raises(DefinitionError) as exc:
        load(path)
    return exc.value.problems


class TestSize:
    def test_a_10_mb_file_is_refused_before_it_is_parsed(self, tmp_path, monkeypatch):
        big = tmp_path / "big.yaml"
        with big.open("w") as f:
            f.write(LAYER + "experiments:\n")
            i = 0
            while f.tell() < 10_000_000:
                f.write(experiment(i % 4000))
                i += 1

        def no_parsing(text):
            raise AssertionError("the parser ran on a file over the limit")

        monkeypatch.setattr(safe_yaml, "LOADER", no_parsing)
        (problem,) = problems_of(big)
        size = big.stat().st_size
        assert problem == (
            f"big.yaml: <root>: file is {size:,} bytes, over the 1,048,576-byte limit; "
            "split it into files"
        )

    def test_a_file_just_under_the_limit_loads(self, tmp_path):
        path = tmp_path / "many.yaml"
        text = LAYER + "experiments:\n"
        i = 0
        while len(text) + 400 < safe_yaml.MAX_BYTES:
            text += experiment(i)
            i += 1
        path.write_text(text)
        assert len(text) > safe_yaml.MAX_BYTES * 0.99
        defs = load(path)
        assert len(defs.experiments) == i > 2000


class TestDepth:
    @pytest.mark.parametrize("opener", ["[", "{a: "])
    def test_100000_levels_are_refused_not_a_crash(self, tmp_path, opener):
        # libyaml's composer recurses in C: this depth was a segmentation fault with CSafeLoader.
        closer = "]" if opener == "[" else "}"
        path = tmp_path / "deep.yaml"
        path.write_text(f"layers: {opener * 100_000}1{closer * 100_000}\n")
        assert problems_of(path) == ["deep.yaml: line 1: nested more than 64 levels deep"]

    def test_the_limit_is_64_levels(self):
        assert safe_yaml.load_text("[" * 64 + "]" * 64) is not None
        with pytest.raises(safe_yaml.YamlProblem, match="nested more than 64 levels deep"):
            safe_yaml.load_text("[" * 65 + "]" * 65)

    def test_the_deepest_rule_tree_accepted_validates_without_recursion_errors(self, tmp_path):
        # document > experiments > experiment > rule: depth 4; each `not` adds two levels, and
        # the field node's values list one: 29 `not`s reach 63, 30 are refused.
        def nested(levels: int) -> Path:
            rule = "{type: field, field: age, op: gte, values: [18]}"
            for _ in range(levels):
                rule = f"{{type: not, children: [{rule}]}}"
            path = tmp_path / f"rule_{levels}.yaml"
            path.write_text(
                LAYER + "experiments:\n" + experiment(0, extra=f"    targeting: {rule}\n")
            )
            return path

        assert load(nested(29)).experiment("exp_0").targeting is not None
        assert problems_of(nested(30)) == ["rule_30.yaml: line 10: nested more than 64 levels deep"]


class TestAliases:
    def test_anchors_and_merge_keys_within_the_budget_load(self, tmp_path):
        path = tmp_path / "shared.yaml"
        base = "&base {button: {color: grey, text: Buy}, banner: false}"
        path.write_text(
            LAYER
            + "experiments:\n"
            + experiment(0, params=base)
            + experiment(1, params="{<<: *base, banner: true}")  # an override, not a duplicate
        )
        defs = load(path)
        assert defs.experiment("exp_1").variants[0].params == {
            "button": {"color": "grey", "text": "Buy"},
            "banner": True,
        }

    def test_the_budget_counts_expanded_nodes(self):
        ten = "[" + ", ".join(["x"] * 9) + "]"  # a list and nine scalars: 10 nodes

        def aliases(n: int) -> str:
            return f"a: &a {ten}\nb: [" + ", ".join(["*a"] * n) + "]"

        assert len(safe_yaml.load_text(aliases(1000))["b"]) == 1000  # exactly 10,000
        with pytest.raises(safe_yaml.YamlProblem) as exc:
            safe_yaml.load_text(aliases(1001))
        assert (exc.value.where, exc.value.message) == (
            "line 2",
            "aliases stand for over 10,000 nodes (at *a)",
        )

    def test_a_key_that_is_its_own_alias_is_refused(self):
        with pytest.raises(safe_yaml.YamlProblem, match=r"alias \*k refers to its own anchor"):
            safe_yaml.load_text("&k {a: [*k]}")


class TestValues:
    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("a: 1\nb: {c: 1, c: 2}", "line 2: duplicate key 'c' (first at line 2)"),
            ("layers: []\nlayers: []", "line 2: duplicate key 'layers' (first at line 1)"),
            ("a: 9223372036854775808", "line 1: integer 9223372036854775808 does not fit"),
            ("a: -9223372036854775809", "line 1: integer -9223372036854775809 does not fit"),
            ("a: 0x10000000000000000", "line 1: integer 0x10000000000000000 does not fit"),
            ("a: .nan", "line 1: number .nan is not finite"),
            ("a: 1.0e+999", "line 1: number 1.0e+999 is not finite"),
            ("a: {1: x}", "line 1: mapping key 1 is a int, not a string"),
            ("a: {~: x}", "line 1: mapping key None is a NoneType, not a string"),
            ("a: {[1]: x}", "line 1: mapping key [1] is a list, not a string"),
            ("a: !!binary aGk=", "line 1: tag !!binary is not allowed"),
            ("a: !!python/object:os.system x", "line 1: tag !!python/object:os.system is not"),
            ("a: !custom x", "line 1: tag !custom is not allowed"),
            ("a: [1\nb: 2", "not valid YAML"),
            ("a: b\n---\nc: d", "line 2: not valid YAML: but found another document"),
            ("a: \x00", "line 1: not valid YAML: control characters are not allowed"),
        ],
    )
    def test_refused(self, text, message):
        with pytest.raises(safe_yaml.YamlProblem) as exc:
            safe_yaml.load_text(text)
        assert message in str(exc.value)

    def test_edges_of_the_accepted_values(self):
        assert safe_yaml.load_text(
            "a: [9223372036854775807, -9223372036854775808, 1.5e+300, 1e999, 2026-11-08, =,"
            " 2026-11-08 10:00:00]"
        ) == {
            "a": [2**63 - 1, -(2**63), 1.5e300, "1e999", "2026-11-08", "=", "2026-11-08 10:00:00"],
        }

    def test_a_date_in_params_is_text_and_the_version_is_computed(self, tmp_path):
        # yaml.safe_load made it a datetime.date, and canonical_json raised a TypeError.
        path = tmp_path / "date.yaml"
        path.write_text(LAYER + "experiments:\n" + experiment(0, params="{launch: 2026-12-01}"))
        defs = load(path)
        e = defs.experiment("exp_0")
        assert e.variants[0].params == {"launch": "2026-12-01"}
        assert e.start_date.isoformat() == "2026-11-08"
        assert len(defs.version) == 16


@pytest.mark.parametrize("name", HOSTILE)
def test_the_python_parser_refuses_each_file_the_same_way(name, monkeypatch):
    refused_by_c = problems_of(INVALID / f"{name}.yaml")
    monkeypatch.setattr(safe_yaml, "LOADER", safe_yaml.PyLoader)
    assert problems_of(INVALID / f"{name}.yaml") == refused_by_c


def test_the_c_parser_is_used_when_pyyaml_has_it():
    assert yaml.__with_libyaml__
    assert safe_yaml.LOADER is safe_yaml.CLoader
    assert issubclass(safe_yaml.CLoader, yaml.CSafeLoader)


class TestCli:
    @pytest.mark.parametrize("name", HOSTILE)
    def test_validate_prints_one_line_and_the_count(self, name, capsys):
        assert cli(["validate", str(INVALID / f"{name}.yaml")]) == 1
        out = capsys.readouterr()
        lines = out.err.splitlines()
        assert len(lines) == 2, out.err
        assert lines[0].startswith(f"{name}.yaml: ")
        assert lines[1] == f"1 problem(s) in {INVALID / f'{name}.yaml'}"

    def test_assign_refuses_an_empty_file_before_starting_spark(self, capsys, monkeypatch):
        import strata.stack

        def no_spark(*args, **kwargs):
            raise AssertionError("Spark started for definitions that do not load")

        monkeypatch.setattr(strata.stack, "spark_session", no_spark)
        empty = INVALID / "empty.yaml"
        assert cli(["assign", "--definitions", str(empty)]) == 1
        assert capsys.readouterr().err.splitlines() == [
            "empty.yaml: <root>: empty file; expected a mapping of domains/layers/experiments",
            f"1 problem(s) in {empty}",
        ]
