"""The rule engine: documented semantics, semver precedence, like escaping, and Python == Spark."""

from __future__ import annotations

import math
import random

import pytest
import semver
from hypothesis import given, settings
from hypothesis import strategies as st

from strata.rules import (
    OPERATORS,
    OPS_BY_TYPE,
    SEMVER_KEY_IDS,
    RuleError,
    evaluate,
    fields,
    like_regex,
    parse,
    predicates,
    semver_ids,
    semver_sort_key,
    to_column,
    to_json,
    with_semver_keys,
)


def field(name, op, *values, value_type=None):
    node = {"type": "field", "field": name, "op": op, "values": list(values)}
    if value_type:
        node["value_type"] = value_type
    return node


def NOT(rule):
    return {"type": "not", "children": [rule]}


# A literal of each type that the context values below are compared with.
LITERAL = {"string": "m", "int": 5, "float": 5.0, "bool": True, "semver": "1.2.3"}


class TestMissingNullAndWrongType:
    """The semantics table: no field predicate matches a missing, null or wrong-typed value."""

    @pytest.mark.parametrize(
        ("value_type", "op"), [(t, op) for t, ops in OPS_BY_TYPE.items() for op in ops]
    )
    @pytest.mark.parametrize("context", [{}, {"x": None}], ids=["missing", "null"])
    def test_every_operator_is_false_on_missing_and_null(self, value_type, op, context):
        lit = "m*" if op in ("like", "not_like") else LITERAL[value_type]
        rule = field("x", op, lit, value_type=value_type)
        assert evaluate(rule, context) is False
        assert evaluate(NOT(rule), context) is True

    @pytest.mark.parametrize(
        ("value_type", "wrong"),
        [
            ("string", 5),
            ("string", True),
            ("int", "5"),
            ("int", True),  # bool is not a number
            ("float", False),
            ("bool", 1),
            ("bool", "true"),
            ("semver", 123),
            ("semver", "1.2"),  # not a valid semver
            ("semver", "01.2.3"),  # leading zero
            ("semver", "１.2.3"),  # fullwidth digit: not ASCII
        ],
    )
    def test_wrong_typed_values_never_match_even_negated_operators(self, value_type, wrong):
        for op in OPS_BY_TYPE[value_type]:
            lit = "*" if op in ("like", "not_like") else LITERAL[value_type]
            assert evaluate(field("x", op, lit, value_type=value_type), {"x": wrong}) is False, op

    def test_int_and_float_rules_accept_both_numeric_kinds(self):
        assert evaluate(field("age", "gte", 18), {"age": 18.0})
        assert evaluate(field("score", "lt", 0.5), {"score": 0})
        assert evaluate(field("age", "in", 1, 2), {"age": 2.0})

    def test_nan_sorts_above_every_number_like_spark(self):
        nan = {"x": math.nan}
        assert [evaluate(field("x", op, 5.0), nan) for op in ("gt", "gte", "eq", "lt", "lte")] == [
            True,
            True,
            False,
            False,
            False,
        ]
        assert evaluate(field("x", "neq", 5.0), nan)
        assert evaluate(field("x", "not_in", 5.0), nan)


class TestOperators:
    @pytest.mark.parametrize(
        ("rule", "context", "expected"),
        [
            (field("c", "eq", "US"), {"c": "US"}, True),
            (field("c", "eq", "US"), {"c": "us"}, False),
            (field("c", "neq", "US"), {"c": "GB"}, True),
            (field("c", "in", "US", "GB"), {"c": "GB"}, True),
            (field("c", "not_in", "US", "GB"), {"c": "DE"}, True),
            (field("c", "gt", "b"), {"c": "ba"}, True),
            (field("c", "lt", "Z"), {"c": "a"}, False),  # code point order: 'Z' < 'a'
            (field("n", "lte", 3), {"n": 3}, True),
            (field("n", "gt", 3), {"n": 3}, False),
            (field("b", "eq", True), {"b": True}, True),
            (field("b", "neq", True), {"b": False}, True),
        ],
    )
    def test_comparisons(self, rule, context, expected):
        assert evaluate(rule, context) is expected

    def test_logic_nesting(self):
        rule = {
            "type": "or",
            "children": [
                {"type": "and", "children": [field("c", "eq", "US"), field("a", "gte", 18)]},
                NOT(field("p", "eq", True)),
            ],
        }
        assert evaluate(rule, {"c": "US", "a": 20, "p": True})
        assert not evaluate(rule, {"c": "US", "a": 17, "p": True})
        assert evaluate(rule, {"c": "GB", "a": 17})  # p missing: not(false)
        assert fields(parse(rule)) == {"c", "a", "p"}

    def test_no_rule_matches_everything(self):
        assert evaluate(None, {})


class TestLike:
    @pytest.mark.parametrize(
        ("pattern", "value", "expected"),
        [
            ("en*", "en-US", True),
            ("en*", "fr", False),
            ("*", "", True),
            ("a*b*c", "aXXbYc", True),
            ("a*b*c", "aXXbYcd", False),  # whole value must match
            ("a.c", "abc", False),  # '.' is literal
            ("a.c", "a.c", True),
            ("1+1=2", "1+1=2", True),  # '+' is literal
            ("(x)[y]{z}^$|?\\", "(x)[y]{z}^$|?\\", True),
            ("50%", "50% off", False),  # SQL wildcards are literal too
            ("a_c", "abc", False),
            ("a_c", "a_c", True),
            ("a*", "a\nb", True),  # '*' spans newlines
        ],
    )
    def test_wildcards_and_escaping(self, pattern, value, expected):
        assert evaluate(field("s", "like", pattern), {"s": value}) is expected
        assert evaluate(field("s", "not_like", pattern), {"s": value}) is (not expected)

    @given(st.text(max_size=12), st.text(max_size=12))
    @settings(max_examples=300, deadline=None)
    def test_a_pattern_without_stars_matches_only_itself(self, pattern, value):
        pattern = pattern.replace("*", "")
        assert (like_regex(pattern).fullmatch(value) is not None) == (pattern == value)


# semver.org §11 example: each version has lower precedence than the next.
SEMVER_ORDER = [
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.1",
    "1.1.0",
    "2.0.0",
    "10.0.0",
]


class TestSemver:
    @pytest.mark.parametrize("i", range(len(SEMVER_ORDER) - 1))
    def test_semver_org_precedence(self, i):
        lo, hi = SEMVER_ORDER[i], SEMVER_ORDER[i + 1]
        assert evaluate(field("v", "lt", hi, value_type="semver"), {"v": lo})
        assert evaluate(field("v", "gt", lo, value_type="semver"), {"v": hi})
        assert not evaluate(field("v", "gte", hi, value_type="semver"), {"v": lo})

    def test_build_metadata_is_ignored(self):
        rule = field("v", "eq", "1.0.0+build.1", value_type="semver")
        assert evaluate(rule, {"v": "1.0.0+other"})
        assert not evaluate(rule, {"v": "1.0.0-rc.1+build.1"})

    def test_huge_numeric_identifiers_compare_numerically(self):
        big = "1.0.0-" + "9" * 30
        assert evaluate(field("v", "gt", "1.0.0-" + "9" * 29, value_type="semver"), {"v": big})
        assert evaluate(field("v", "lt", "1.0.0-a", value_type="semver"), {"v": big})


class TestValidation:
    @pytest.mark.parametrize(
        ("rule", "message"),
        [
            ({"type": "xor", "children": []}, "type"),
            (field("c", "contains", "x"), "op"),
            (field("a", "like", 18), "does not apply to int"),
            (field("b", "gt", True), "does not apply to bool"),
            (field("v", "gte", "1.2", value_type="semver"), "invalid semver literal '1.2'"),
            (field("c", "eq", "a", "b"), "exactly one value"),
            (field("c", "in"), "at least one value"),
            (field("c", "in", "a", 1), "mixed types"),
            (field("n", "eq", 2**70), "64 bits"),
            ({"type": "not", "children": [field("c", "eq", "a"), field("c", "eq", "b")]}, "one"),
            ({"type": "and", "children": []}, "at least one child"),
            ({"type": "field", "field": "c", "op": "eq"}, "needs ['values']"),
            ({"type": "and", "children": [field("c", "eq", "a")], "op": "eq"}, "only children"),
            ({"type": "field", "field": "c", "op": "eq", "values": ["a"], "x": 1}, "x"),
        ],
    )
    def test_bad_rules_are_rejected_with_a_reason(self, rule, message):
        with pytest.raises(RuleError, match="invalid rule") as exc:
            parse(rule)
        assert message in str(exc.value)

    def test_round_trip_makes_the_type_explicit(self):
        rule = parse(field("age", "in", 1, 2.5))
        assert to_json(rule)["value_type"] == "float"
        assert parse(to_json(rule)) == rule


# --- Python vs Spark parity on generated rules and contexts ---------------------------------

STRINGS = ["", "US", "GB", "us", "en-US", "a.b", "a%b", "a_b", "x*y", "\\", "ü", "日本", "a\nb"]
# Pre-release lists longer than the native key's default (8 identifiers) and numerals longer than
# 64 bits exercise the key's edge cases.
LONG_PRE = ".".join("abcdefghij")
VERSIONS = [
    "1.0.0",
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0+build.5",
    "1.0.0-rc.1+b",
    "2.0.0-1",
    "2.0.0-10",
    "2.0.0-x.7.z.92",
    "2.1.3",
    "10.20.30",
    "0.0.0",
    f"1.0.0-{LONG_PRE}",
    f"1.0.0-{LONG_PRE[:-2]}",
    f"1.0.0-{LONG_PRE[:-4]}",
    f"1.0.0-{LONG_PRE}.1",
    "1.0.0-1.2.3.4.5.6.7.8.9.10",
    "1.0.0-" + "9" * 30,
    "99999999999999999999.0.0",
    "1.0.0--x",
]
INVALID_VERSIONS = ["1.0", "01.0.0", "1.0.0-", "v1.0.0", "1.0.0-01", "1.0.0\n", "x", "1.0.0-a..b"]
SCHEMA = "s string, s2 string, v string, n bigint, i int, f double, b boolean, nope_typed boolean"
FIELDS = ["s", "s2", "v", "n", "i", "f", "b", "missing_field"]


def _value(rng, name):
    if rng.random() < 0.15:
        return None
    if name in ("s", "s2"):
        return rng.choice(STRINGS + VERSIONS[:3] + ["5", "true"])
    if name == "v":
        return rng.choice(VERSIONS + INVALID_VERSIONS + ["US"])
    if name == "n":
        return rng.randint(-3, 12)
    if name == "i":
        return rng.choice([-(2**31), 0, 1, 5, 7, 2**31 - 1])
    if name == "f":
        return rng.choice([math.nan, -0.0, 0.0, 0.5, 4.999, 5.0, 5.5, -1.5, math.inf, 1e300])
    return rng.random() < 0.5  # b, nope_typed


def _literal(rng, value_type, op):
    if op in ("like", "not_like"):
        base = rng.choice([*STRINGS, "US", "en"])
        cut = rng.randint(0, len(base))
        return rng.choice([base, base[:cut] + "*", "*" + base[cut:], base[:cut] + "*" + base[cut:]])
    return {
        "string": lambda: rng.choice(STRINGS),
        "int": lambda: rng.randint(-2, 10),
        "float": lambda: rng.choice([-1.5, 0.0, 0.5, 5.0, 4.5, 10.25]),
        "bool": lambda: rng.random() < 0.5,
        "semver": lambda: rng.choice(VERSIONS),
    }[value_type]()


def random_rule(rng, depth=0):
    if depth < 3 and rng.random() < 0.45:
        kind = rng.choice(["and", "or", "not"])
        n = 1 if kind == "not" else rng.randint(1, 3)
        return {"type": kind, "children": [random_rule(rng, depth + 1) for _ in range(n)]}
    value_type = rng.choice(list(OPS_BY_TYPE))
    op = rng.choice(OPS_BY_TYPE[value_type])
    # Mostly 1-3 values for in / not_in; sometimes more than Spark's InSet threshold (10).
    n = (rng.randint(11, 14) if rng.random() < 0.1 else rng.randint(1, 3)) if op in _SET else 1
    values = [_literal(rng, value_type, op) for _ in range(n)]
    return field(rng.choice(FIELDS), op, *values, value_type=value_type)


_SET = ("in", "not_in")
RULES = 10_000
CONTEXTS = 200
INLINE = 200  # trees whose semver keys are computed inline (big expressions: slow to compile)
INLINE_BATCH = 50
BATCH = 1_000  # trees per Spark query


@pytest.mark.slow
def test_python_and_spark_agree_on_generated_rules_and_contexts(spark, monkeypatch):
    """10,000 random rule trees x 200 random contexts = 2,000,000 evaluations (nulls, NaN, wrong
    types, invalid semvers, long pre-release lists, regex and SQL metacharacters), one Spark query
    per 1,000 trees. The first 200 trees compute semver keys inline (``to_column`` alone, 50 per
    query); the others read keys precomputed by ``with_semver_keys`` for every string field, as
    the assignment job does."""
    from concurrent.futures import ThreadPoolExecutor

    from pyspark.sql import functions as F

    import strata.rules

    # Building Columns is one JVM round trip per node: share the Column of a repeated predicate
    # (about a third are distinct) and build trees from a few threads.
    built: dict = {}
    compile_predicate = strata.rules._predicate_column

    def shared(p, schema, keys):
        key = (p, tuple(sorted(keys)))
        if key not in built:
            built[key] = compile_predicate(p, schema, keys)
        return built[key]

    monkeypatch.setattr(strata.rules, "_predicate_column", shared)

    rng = random.Random(20261108)
    names = [f.strip().split()[0] for f in SCHEMA.split(",")]
    rows = [tuple(_value(rng, n) for n in names) for _ in range(CONTEXTS)]
    contexts = spark.createDataFrame(rows, SCHEMA).cache()
    # A missing key and a None value must behave the same: drop some None keys at random.
    py_contexts = [
        {k: v for k, v in r.asDict().items() if v is not None or rng.random() < 0.5}
        for r in contexts.collect()
    ]
    rules = [parse(random_rule(rng)) for _ in range(RULES)]
    seen = {op for r in rules for op in _ops(to_json(r))}
    assert seen == set(OPERATORS) | {"and", "or", "not"}
    assert {p.value_type for r in rules for p in predicates(r)} == set(OPS_BY_TYPE)
    strings = {"s": "__s_key", "s2": "__s2_key", "v": "__v_key"}
    semver = [p for r in rules[INLINE:] for p in predicates(r) if p.value_type == "semver"]
    n_ids = max([SEMVER_KEY_IDS] + [semver_ids(x) for p in semver for x in p.values])
    with_keys = with_semver_keys(contexts, strings, n_ids)
    starts = [*range(0, INLINE, INLINE_BATCH), *range(INLINE, RULES, BATCH)]
    mismatches, matched = [], 0
    with ThreadPoolExecutor(4) as pool:
        for start, end in zip(starts, [*starts[1:], RULES], strict=True):
            batch = rules[start:end]
            frame, keys = (contexts, {}) if start < INLINE else (with_keys, strings)
            key_cols = {f: F.col(k) for f, k in keys.items()}

            def build(rule, key_cols=key_cols):
                return to_column(rule, contexts.schema, semver_keys=key_cols)

            cols = list(pool.map(build, batch))
            got = [row[0] for row in frame.select(F.array(*cols)).collect()]
            for ci, ctx in enumerate(py_contexts):
                for ri, rule in enumerate(batch):
                    want = evaluate(rule, ctx)
                    matched += want
                    if got[ci][ri] is not want:
                        mismatches.append((rule, ctx, got[ci][ri], want))
    assert mismatches == [], f"{len(mismatches)} disagreements, first: {mismatches[:3]}"
    pairs = RULES * CONTEXTS
    assert 0.1 * pairs < matched < 0.9 * pairs  # both outcomes are well represented


def _ops(rule):
    if rule["type"] == "field":
        return {rule["op"]}
    return {rule["type"]}.union(*(_ops(c) for c in rule["children"]))


@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(0, 3),
            st.integers(0, 3),
            st.sampled_from(
                [None, "alpha", "alpha.1", "beta", "beta.2", "beta.11", "rc.1", "1", "10", "x.7"]
            ),
        ),
        min_size=2,
        max_size=2,
    )
)
@settings(max_examples=400, deadline=None)
def test_semver_operators_agree_with_the_semver_library(pair):
    (a, b) = [f"{x}.{y}.{z}" + (f"-{pre}" if pre else "") for x, y, z, pre in pair]
    expected = semver.Version.parse(a).compare(b)
    ops = {"lt": expected < 0, "eq": expected == 0, "gt": expected > 0, "gte": expected >= 0}
    for op, want in ops.items():
        assert evaluate(field("v", op, b, value_type="semver"), {"v": a}) is want


def test_semver_sort_keys_order_like_the_semver_library():
    for a in VERSIONS:
        for b in VERSIONS:
            ka, kb = semver_sort_key(a), semver_sort_key(b)
            assert (ka > kb) - (ka < kb) == semver.Version.parse(a).compare(b), (a, b)
    assert all(semver_sort_key(v) is None for v in INVALID_VERSIONS)


def test_native_semver_keys_equal_the_python_keys(spark):
    """Both native forms (one expression, staged projections) give the Python key exactly when
    the key holds every identifier, and compare like it otherwise."""
    from pyspark.sql import functions as F

    from strata.rules import semver_key_column

    values = VERSIONS + INVALID_VERSIONS + [None]
    df = spark.createDataFrame([(v,) for v in values], "v string")
    for n_ids in (SEMVER_KEY_IDS, 16):
        one = df.select("v", semver_key_column(F.col("v"), n_ids).alias("k"))
        staged = with_semver_keys(df, {"v": "k"}, n_ids)
        for frame in (one, staged):
            got = {r.v: (tuple(r.k) if r.k is not None else None) for r in frame.collect()}
            for v in values:
                want = semver_sort_key(v) if v is not None else None
                if want is None or semver_ids(v) <= n_ids:
                    assert got[v] == want, v
                else:  # truncated: still ordered like the full key against every short key
                    for w in VERSIONS:
                        kw = semver_sort_key(w)
                        if semver_ids(w) <= n_ids:
                            assert (got[v] > kw) - (got[v] < kw) == (want > kw) - (want < kw)
