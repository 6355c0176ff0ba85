"""Targeting rules (seed 002): one rule tree, evaluated in Python and compiled to a Spark Column.

A rule is a tree in seed 002's JSON shape::

    {"type": "and", "children": [
        {"type": "field", "field": "country", "op": "eq", "values": ["US"]},
        {"type": "field", "field": "age", "op": "gte", "values": [18]}]}

Logic nodes are ``and`` / ``or`` (one or more children) and ``not`` (exactly one child). A field
node compares one context field with literal ``values`` using one of ten operators (``eq neq gt
gte lt lte in not_in like not_like``; with ``and or not`` that is seed 002's 13). The field's type
(``string int float bool semver``) is ``value_type`` when given, else inferred from the literals.

Semantics (identical in :func:`evaluate` and :func:`to_column`; two-valued, never null):

- A field predicate matches only a *present value of the rule's type*. A missing field, a null, a
  value of another type (a string where the rule says ``int``, a bool where it says ``int``) or a
  string that is not a valid semver for a ``semver`` rule makes the predicate **false** — for every
  operator, the negated ones (``neq``, ``not_in``, ``not_like``) included. ``not`` is plain
  negation, so ``not(country eq "US")`` *does* match a unit without a country. Spark has no
  per-row "missing", so missing and null are the same thing on purpose.
- ``int`` and ``float`` rules accept any int or float value (never bool) and compare numerically;
  a NaN value sorts above every number (Spark's order): ``gt``/``gte``/``neq``/``not_in`` match it,
  ``eq``/``lt``/``lte``/``in`` do not.
- ``string`` comparisons (``gt`` ...) use Unicode code point order (= UTF-8 byte order in Spark).
- ``like``/``not_like``: the whole value must match; ``*`` matches any run of characters (newlines
  included); every other character, regex metacharacters and SQL ``%``/``_`` included, is literal.
- ``semver``: precedence per semver.org §11: major.minor.patch numerically, a pre-release sorts
  before its release, pre-release identifiers compare numerically when numeric, lexically (ASCII)
  otherwise, numeric < alphanumeric, a longer identifier list wins when all before are equal;
  build metadata is ignored (``1.0.0+a eq 1.0.0+b``).

Usage:
    >>> rule = {"type": "and", "children": [
    ...     {"type": "field", "field": "country", "op": "in", "values": ["US", "GB"]},
    ...     {"type": "field", "field": "app_version", "op": "gte", "values": ["2.0.0"],
    ...      "value_type": "semver"}]}
    >>> evaluate(rule, {"country": "US", "app_version": "2.1.0"})
    True
    >>> evaluate(rule, {"country": "US", "app_version": "2.0.0-beta.1"})
    False
    >>> evaluate({"type": "not", "children": [rule]}, {})
    True
    >>> evaluate({"type": "field", "field": "path", "op": "like", "values": ["/a.b/*"]},
    ...          {"path": "/a.b/c"})
    True
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import semver
from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pyspark.sql import Column, DataFrame
    from pyspark.sql.types import StructType

LOGIC_TYPES = ("and", "or", "not")
NODE_TYPES = (*LOGIC_TYPES, "field")
OPERATORS = ("eq", "neq", "gt", "gte", "lt", "lte", "in", "not_in", "like", "not_like")
VALUE_TYPES = ("string", "int", "float", "bool", "semver")
_ORDER_OPS = ("eq", "neq", "gt", "gte", "lt", "lte", "in", "not_in")
#: Which operators each field type supports (anything else is a definition error).
OPS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "string": OPERATORS,
    "int": _ORDER_OPS,
    "float": _ORDER_OPS,
    "bool": ("eq", "neq", "in", "not_in"),
    "semver": _ORDER_OPS,
}
_SET_OPS = ("in", "not_in")
#: int literals must fit Spark's LongType.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

#: semver.org's regex with ASCII digits only (Python's ``\d`` also matches other scripts' digits).
_NUM = r"(?:0|[1-9][0-9]*)"
_PRE_ID = r"(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
SEMVER_PATTERN = (
    rf"({_NUM})\.({_NUM})\.({_NUM})"
    rf"(?:-({_PRE_ID}(?:\.{_PRE_ID})*))?"
    r"(?:\+[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*)?"
)
_SEMVER_RE = re.compile(SEMVER_PATTERN)
#: The same pattern for Java's regex engine (``\z``: absolute end; ``$`` allows a final newline),
#: validity only, so without capturing groups (cheaper to match).
_SEMVER_JAVA = "^" + SEMVER_PATTERN.replace("(?:", "(").replace("(", "(?:") + "\\z"


class RuleError(ValueError):
    """A rule tree that is not valid; the message names the path inside the rule."""


# --- the rule tree: pydantic at the edge (definition files, JSON Schema) ----------------------


class RuleNode(BaseModel):
    """One node of a targeting rule tree, in seed 002's JSON shape."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["and", "or", "not", "field"] = Field(description="Node kind.")
    children: list[RuleNode] | None = Field(None, description="Sub-rules of and / or / not.")
    field: str | None = Field(None, min_length=1, description="Context field (field nodes).")
    op: (
        Literal["eq", "neq", "gt", "gte", "lt", "lte", "in", "not_in", "like", "not_like"] | None
    ) = Field(None, description="Comparison operator (field nodes).")
    values: list[str | bool | int | float] | None = Field(
        None, description="Literals; exactly one except for in / not_in."
    )
    value_type: Literal["string", "int", "float", "bool", "semver"] | None = Field(
        None, description="Type of the field; inferred from the literals when omitted."
    )

    @model_validator(mode="after")
    def _check(self) -> RuleNode:
        check_node(self)
        return self


def _infer_type(values: list[Any]) -> str:
    kinds = {
        "bool" if isinstance(v, bool) else "int" if isinstance(v, int) else type(v).__name__
        for v in values
    }
    if kinds == {"bool"}:
        return "bool"
    if kinds == {"str"}:
        return "string"
    if kinds == {"int"}:
        return "int"
    if kinds <= {"int", "float"}:
        return "float"
    raise RuleError(f"literals of mixed types {sorted(kinds)}: set value_type or fix the values")


def _check_literal(value: Any, value_type: str) -> None:
    bad = f"literal {value!r} is not a valid {value_type}"
    if value_type in ("string", "semver"):
        if not isinstance(value, str):
            raise RuleError(bad)
        if value_type == "semver" and not _SEMVER_RE.fullmatch(value):
            raise RuleError(f"invalid semver literal {value!r} (see semver.org, e.g. 1.2.3-beta.1)")
    elif value_type == "bool":
        if not isinstance(value, bool):
            raise RuleError(bad)
    elif value_type == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise RuleError(bad)
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise RuleError(f"int literal {value} does not fit in 64 bits")
    elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RuleError(f"literal {value!r} is not a finite float")


def check_node(node: RuleNode) -> None:
    """Structural and type checks of one node (children are checked when they are built)."""
    if node.type in LOGIC_TYPES:
        extra = [k for k in ("field", "op", "values", "value_type") if getattr(node, k) is not None]
        if extra:
            raise RuleError(f"a {node.type!r} node takes only children, not {extra}")
        if not node.children:
            raise RuleError(f"a {node.type!r} node needs at least one child")
        if node.type == "not" and len(node.children) != 1:
            raise RuleError(f"a 'not' node takes exactly one child, got {len(node.children)}")
        return
    if node.children is not None:
        raise RuleError("a 'field' node has no children")
    missing = [k for k in ("field", "op", "values") if getattr(node, k) is None]
    if missing:
        raise RuleError(f"a 'field' node needs {missing}")
    if not node.values:
        raise RuleError(f"operator {node.op!r} needs at least one value")
    if node.op not in _SET_OPS and len(node.values) != 1:
        raise RuleError(f"operator {node.op!r} takes exactly one value, got {len(node.values)}")
    value_type = node.value_type or _infer_type(node.values)
    if node.op not in OPS_BY_TYPE[value_type]:
        raise RuleError(
            f"operator {node.op!r} does not apply to {value_type} fields "
            f"(allowed: {', '.join(OPS_BY_TYPE[value_type])})"
        )
    for value in node.values:
        _check_literal(value, value_type)


# --- the rule tree inside: frozen dataclasses ------------------------------------------------


@dataclass(frozen=True)
class Logic:
    """``and`` / ``or`` / ``not`` over children."""

    type: Literal["and", "or", "not"]
    children: tuple[Rule, ...]


@dataclass(frozen=True)
class Predicate:
    """``field op values`` with a resolved value type."""

    field: str
    op: str
    values: tuple[Any, ...]
    value_type: str


Rule = Logic | Predicate


def from_node(node: RuleNode) -> Rule:
    """The validated pydantic node as an immutable rule."""
    if node.type == "field":
        raw = node.values or []
        vtype = node.value_type or _infer_type(raw)
        values = tuple(float(v) if vtype == "float" else v for v in raw)
        return Predicate(str(node.field), str(node.op), values, vtype)
    return Logic(node.type, tuple(from_node(c) for c in node.children or ()))


def parse(rule: Mapping[str, Any] | RuleNode | Rule) -> Rule:
    """A rule from seed 002's JSON shape (validated; :class:`RuleError` names what is wrong)."""
    if isinstance(rule, Logic | Predicate):
        return rule
    if isinstance(rule, RuleNode):
        return from_node(rule)
    from pydantic import ValidationError

    try:
        return from_node(RuleNode.model_validate(rule))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        msg = first["msg"].removeprefix("Value error, ")
        raise RuleError(f"invalid rule at {where}: {msg}") from None


def to_json(rule: Rule) -> dict[str, Any]:
    """Seed 002's JSON shape of a rule (with ``value_type`` made explicit)."""
    if isinstance(rule, Logic):
        return {"type": rule.type, "children": [to_json(c) for c in rule.children]}
    return {
        "type": "field",
        "field": rule.field,
        "op": rule.op,
        "values": list(rule.values),
        "value_type": rule.value_type,
    }


def fields(rule: Rule) -> set[str]:
    """The context fields a rule reads."""
    if isinstance(rule, Predicate):
        return {rule.field}
    return set().union(*(fields(c) for c in rule.children))


# --- Python evaluation -----------------------------------------------------------------------


def like_regex(pattern: str) -> re.Pattern[str]:
    """``*`` wildcards, everything else literal.

    Usage:
        >>> bool(like_regex("a.*").fullmatch("a.bc")), bool(like_regex("a.*").fullmatch("abc"))
        (True, False)
    """
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def semver_key(value: str) -> semver.Version | None:
    """The parsed version, or None when ``value`` is not a valid semver string."""
    if not _SEMVER_RE.fullmatch(value):
        return None
    return semver.Version.parse(value)


def _typed(value: Any, value_type: str) -> tuple[bool, Any]:
    """(ok, comparable value): ok is False for null / wrong type / invalid semver."""
    if value is None:
        return False, None
    if value_type == "string":
        return isinstance(value, str), value
    if value_type == "bool":
        return isinstance(value, bool), value
    if value_type in ("int", "float"):
        return (isinstance(value, int | float) and not isinstance(value, bool)), value
    if not isinstance(value, str):  # semver
        return False, None
    key = semver_key(value)
    return key is not None, key


def _cmp(a: Any, b: Any, value_type: str) -> int:
    if value_type == "semver":
        return a.compare(b)
    if isinstance(a, float) and math.isnan(a):
        return 1  # Spark orders NaN above every number (literals are never NaN)
    return (a > b) - (a < b)


def _predicate(p: Predicate, context: Mapping[str, Any]) -> bool:
    ok, value = _typed(context.get(p.field), p.value_type)
    if not ok:
        return False
    if p.op in ("like", "not_like"):
        hit = like_regex(p.values[0]).fullmatch(value) is not None
        return hit if p.op == "like" else not hit
    literals = [semver.Version.parse(v) for v in p.values] if p.value_type == "semver" else p.values
    if p.op in _SET_OPS:
        hit = any(_cmp(value, lit, p.value_type) == 0 for lit in literals)
        return hit if p.op == "in" else not hit
    c = _cmp(value, literals[0], p.value_type)
    return {"eq": c == 0, "neq": c != 0, "gt": c > 0, "gte": c >= 0, "lt": c < 0, "lte": c <= 0}[
        p.op
    ]


def evaluate(rule: Mapping[str, Any] | RuleNode | Rule | None, context: Mapping[str, Any]) -> bool:
    """Does ``context`` (field -> value) satisfy ``rule``? ``None`` (no targeting) matches all."""
    if rule is None:
        return True
    r = parse(rule)
    if isinstance(r, Predicate):
        return _predicate(r, context)
    if r.type == "and":
        return all(evaluate(c, context) for c in r.children)
    if r.type == "or":
        return any(evaluate(c, context) for c in r.children)
    return not evaluate(r.children[0], context)


# --- Spark compilation (native Column expressions, no UDF) -----------------------------------


def _spark_kind(data_type: Any) -> str | None:
    """The rule value types a Spark column of this type can satisfy."""
    from pyspark.sql import types as T

    if isinstance(data_type, T.StringType):
        return "string"
    if isinstance(data_type, T.BooleanType):
        return "bool"
    numeric = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType)
    if isinstance(data_type, numeric):
        return "number"
    return None


#: Width of the length prefix of numeric pre-release identifiers (up to 99,999 digits).
_KEY_WIDTH = 5
#: Key separators: end of the pre-release list < between identifiers < any identifier character.
#: (Both sort below every identifier character [0-9A-Za-z-] and need no escaping in SQL.)
_KEY_END, _KEY_SEP = "!", ","
#: Pre-release identifiers native keys hold by default (see :func:`semver_key_column`).
SEMVER_KEY_IDS = 8
#: Fields of a semver sort key: each core numeral as (digit count, digits) — numeric order at any
#: length without building strings — then release after pre-release, then the pre-release key.
SEMVER_KEY_FIELDS = (
    ("major_len", "int"),
    ("major", "string"),
    ("minor_len", "int"),
    ("minor", "string"),
    ("patch_len", "int"),
    ("patch", "string"),
    ("release", "boolean"),
    ("pre", "string"),
)


def _pre_ident_key(ident: str) -> str:
    return f"0{len(ident):0{_KEY_WIDTH}d}{ident}" if ident.isdigit() else f"1{ident}"


def semver_sort_key(version: str) -> tuple[Any, ...] | None:
    """A tuple whose plain order is semver precedence; None for invalid versions.

    The fields are :data:`SEMVER_KEY_FIELDS`: core numerals as (length, digits) (numeric order at
    any length, no leading zeros), ``release`` (a release sorts after its pre-releases), and the
    pre-release identifiers as one string: numerals as ``0 + len + digits``, others ``1 + text``
    (numeric before alphanumeric), joined by ``,`` and closed by ``!`` (a shorter list
    first); build metadata dropped. :func:`semver_key_column` computes the same key natively as a
    struct (Spark orders structs field by field, strings by code point).

    Usage:
        >>> keys = [semver_sort_key(v) for v in ("1.0.0-alpha", "1.0.0-alpha.1", "1.0.0", "10.0.0")]
        >>> keys == sorted(keys)
        True
        >>> semver_sort_key("1.0.0+a") == semver_sort_key("1.0.0+b"), semver_sort_key("1.0")
        (True, None)
    """
    m = _SEMVER_RE.fullmatch(version)
    if m is None:
        return None
    core = tuple(x for n in m.groups()[:3] for x in (len(n), n))
    if m.group(4) is None:
        return (*core, True, "")
    pre = _KEY_SEP.join(_pre_ident_key(i) for i in m.group(4).split(".")) + _KEY_END
    return (*core, False, pre)


def semver_key_literal(version: str) -> Column:
    """:func:`semver_sort_key` of a valid literal as a constant struct Column."""
    from pyspark.sql import functions as F

    key = semver_sort_key(version)
    if key is None:
        raise RuleError(f"invalid semver literal {version!r}")
    # One SQL expression (one call into the JVM, not one per field). The strings hold only
    # digits, identifier characters and the two separators, so quoting needs no escapes.
    parts = []
    for v, (n, _) in zip(key, SEMVER_KEY_FIELDS, strict=True):
        sql = ("true" if v else "false") if isinstance(v, bool) else repr(v)
        parts.append(f"'{n}', {sql}")
    return F.expr(f"named_struct({', '.join(parts)})")


def _key_parts(col: Column) -> list[Column]:
    """Stage 1: the version without build metadata, and whether it is a valid semver."""
    from pyspark.sql import functions as F

    return [F.substring_index(col, "+", 1), col.rlike(_SEMVER_JAVA)]


def _key_split(plain: Column, dash: Column) -> list[Column]:
    """Stage 3: the core and the pre-release identifiers (null without a pre-release)."""
    from pyspark.sql import functions as F

    core = F.when(dash > 0, plain.substr(F.lit(1), dash - 1)).otherwise(plain)
    rest = plain.substr(dash + 1, F.lit(2**31 - 1))
    return [core, F.when(dash > 0, F.split(rest, r"\."))]


def _key_fields(core: Column, ids: Column, n_ids: int) -> list[Column]:
    """Stage 4: the three core numerals and the pre-release key string."""
    from pyspark.sql import functions as F

    def ident(i: Column) -> Column:
        # Valid identifiers are [0-9A-Za-z-]+; a numeral has no letter and no '-'. A missing
        # identifier (past the end of the list) gives null, which concat_ws skips.
        num = F.concat(F.lit("0"), F.lpad(F.length(i).cast("string"), _KEY_WIDTH, "0"), i)
        return F.when(F.translate(i, "0123456789", "") == "", num).otherwise(
            F.concat(F.lit("1"), i)
        )

    listed = F.concat_ws(_KEY_SEP, *[ident(F.get(ids, i)) for i in range(n_ids)])
    # Past n_ids identifiers: a trailing separator instead of the end mark (see semver_key_column).
    end = F.when(F.size(ids) > n_ids, F.lit(_KEY_SEP)).otherwise(F.lit(_KEY_END))
    return [
        F.substring_index(core, ".", 1),
        F.substring_index(F.substring_index(core, ".", 2), ".", -1),
        F.substring_index(core, ".", -1),
        F.when(ids.isNull(), F.lit("")).otherwise(F.concat(listed, end)),
    ]


def _key_struct(valid: Column, nums: list[Column], ids: Column, pre: Column) -> Column:
    """Stage 5: the key struct, null unless ``valid``."""
    from pyspark.sql import functions as F

    values = [x for n in nums for x in (F.length(n), n)] + [ids.isNull(), pre]
    key = F.struct(*[v.alias(n) for v, (n, _) in zip(values, SEMVER_KEY_FIELDS, strict=True)])
    return F.when(valid, key)


def semver_key_column(col: Column, n_ids: int = SEMVER_KEY_IDS) -> Column:
    """:func:`semver_sort_key` as one native struct expression (null when not a valid semver).

    Exact for versions with up to ``n_ids`` pre-release identifiers. A longer list keeps its first
    ``n_ids`` identifiers and ends with a separator instead of the end mark: no longer the full
    key, but it compares exactly like it with every key of at most ``n_ids`` identifiers — the
    first ``n_ids`` decide, else the longer list wins — so a rule whose literals have at most
    ``n_ids`` identifiers each evaluates exactly (no higher-order function, whose interpreted
    evaluation would turn off whole-stage code generation for the whole projection).
    :func:`with_semver_keys` computes the same in stages, each part once per row (faster).
    """
    from pyspark.sql import functions as F

    plain, valid = _key_parts(col)
    core, ids = _key_split(plain, F.instr(plain, "-"))
    *nums, pre = _key_fields(core, ids, n_ids)
    return _key_struct(valid, nums, ids, pre)


def semver_ids(version: str) -> int:
    """How many pre-release identifiers a valid version has (keys must hold at least that many)."""
    m = _SEMVER_RE.fullmatch(version)
    return 0 if m is None or m.group(4) is None else len(m.group(4).split("."))


def with_semver_keys(
    df: DataFrame, keys: Mapping[str, str], n_ids: int = SEMVER_KEY_IDS
) -> DataFrame:
    """``df`` plus a column ``keys[field]`` = ``semver_key_column(field, n_ids)`` per field.

    Computed in chained projections so every intermediate (the part without build metadata, the
    position of '-', the core, the split identifiers) is computed once per row: Spark does not
    eliminate common subexpressions inside a CASE branch, and the one-expression form repeats
    them. Every expression is code-generated (whole-stage code generation stays on).
    """
    from pyspark.sql import functions as F

    if not keys:
        return df
    tmp = {f: f"__svk{i}" for i, f in enumerate(keys)}

    def c(f: str, part: str) -> Column:
        return F.col(f"{tmp[f]}_{part}")

    def stage(frame: DataFrame, names: tuple[str, ...], parts: Any) -> DataFrame:
        new = [x.alias(f"{tmp[f]}_{n}") for f in keys for n, x in zip(names, parts(f), strict=True)]
        return frame.select("*", *new)

    out = stage(df, ("plain", "valid"), lambda f: _key_parts(F.col(f"`{f}`")))
    out = stage(out, ("dash",), lambda f: [F.instr(c(f, "plain"), "-")])
    out = stage(out, ("core", "ids"), lambda f: _key_split(c(f, "plain"), c(f, "dash")))
    nums = ("major", "minor", "patch")
    out = stage(out, (*nums, "pre"), lambda f: _key_fields(c(f, "core"), c(f, "ids"), n_ids))
    return out.select(
        *[F.col(f"`{n}`") for n in df.columns],
        *[
            _key_struct(c(f, "valid"), [c(f, n) for n in nums], c(f, "ids"), c(f, "pre")).alias(
                name
            )
            for f, name in keys.items()
        ],
    )


def _predicate_column(p: Predicate, schema: StructType, semver_keys: dict[str, Column]) -> Column:
    from pyspark.sql import functions as F

    if p.field not in schema.fieldNames():
        return F.lit(False)  # missing field == null: no predicate matches
    col = F.col(f"`{p.field}`")
    kind = _spark_kind(schema[p.field].dataType)
    wanted = {"string": "string", "semver": "string", "bool": "bool"}.get(p.value_type, "number")
    if kind != wanted:
        return F.lit(False)  # wrong-typed values never match
    present = col.isNotNull()

    if p.value_type == "semver":
        # Compare order-preserving keys: the literal's computed here, the column's natively
        # (or precomputed once per row by the caller, when the same field is used often; it
        # must then hold at least as many pre-release identifiers as every literal has).
        n_ids = max(SEMVER_KEY_IDS, *[semver_ids(v) for v in p.values])
        col = semver_keys[p.field] if p.field in semver_keys else semver_key_column(col, n_ids)
        present = col.isNotNull()
        lits = [semver_key_literal(v) for v in p.values]
        expr = _compare(col, p.op, lits)
        return present & expr  # never null: false AND null is false

    if p.op in ("like", "not_like"):
        sql = "".join("%" if ch == "*" else "\\" + ch if ch in "\\%_" else ch for ch in p.values[0])
        hit = col.like(sql)
        expr = hit if p.op == "like" else ~hit
    else:
        if wanted == "number":
            col = (
                col.cast("double") if p.value_type == "float" or _is_fractional(schema, p) else col
            )
            lits = [F.lit(float(v)) if p.value_type == "float" else F.lit(v) for v in p.values]
        else:
            lits = [F.lit(v) for v in p.values]
        expr = _compare(col, p.op, lits)
    return present & expr  # never null: false AND null is false; non-null values compare


def _compare(col: Column, op: str, lits: list[Column]) -> Column:
    if op in _SET_OPS:
        hit = col.isin(*lits)
        return hit if op == "in" else ~hit
    lit = lits[0]
    return {
        "eq": col == lit,
        "neq": col != lit,
        "gt": col > lit,
        "gte": col >= lit,
        "lt": col < lit,
        "lte": col <= lit,
    }[op]


def _is_fractional(schema: StructType, p: Predicate) -> bool:
    from pyspark.sql import types as T

    return isinstance(schema[p.field].dataType, T.FloatType | T.DoubleType)


def to_column(
    rule: Mapping[str, Any] | RuleNode | Rule | None,
    schema: StructType,
    *,
    semver_keys: dict[str, Column] | None = None,
) -> Column:
    """The rule as a native, never-null boolean Spark Column over rows of ``schema``.

    ``semver_keys`` optionally maps a field to a column holding ``semver_key_column(field, n)``
    computed once per row (the assignment job does this when many rules read one field), with
    ``n`` at least :data:`SEMVER_KEY_IDS` and at least the pre-release identifier count of every
    semver literal on that field (:func:`semver_ids`).
    """
    semver_keys = semver_keys or {}
    from pyspark.sql import functions as F

    if rule is None:
        return F.lit(True)
    r = parse(rule)
    if isinstance(r, Predicate):
        return _predicate_column(r, schema, semver_keys)
    cols = [to_column(c, schema, semver_keys=semver_keys) for c in r.children]
    if r.type == "not":
        return ~cols[0]
    out = cols[0]
    for c in cols[1:]:
        out = (out & c) if r.type == "and" else (out | c)
    return out


def type_mismatches(rule: Rule | None, schema: StructType) -> list[str]:
    """Fields the rule reads that ``schema`` lacks or holds with another type (always false)."""
    if rule is None:
        return []
    problems = []
    for p in predicates(rule):
        if p.field not in schema.fieldNames():
            problems.append(f"{p.field}: missing")
            continue
        kind = _spark_kind(schema[p.field].dataType)
        wanted = {"string": "string", "semver": "string", "bool": "bool"}.get(
            p.value_type, "number"
        )
        if kind != wanted:
            problems.append(
                f"{p.field}: {p.value_type} rule on a {schema[p.field].dataType} column"
            )
    return sorted(set(problems))


def predicates(rule: Rule) -> list[Predicate]:
    if isinstance(rule, Predicate):
        return [rule]
    return [p for c in rule.children for p in predicates(c)]
