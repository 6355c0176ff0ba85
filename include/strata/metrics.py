"""ep-stats metric expressions, parsed safely (a tokenizer and a recursive-descent parser, no eval).

The one metric grammar of Strata: definitions (:mod:`strata.definitions`) validate with it and the
statistics engine (:mod:`strata.stats`) evaluates with it. It imports nothing heavy (no numpy,
pandas or scipy), so validating a definitions file stays light.

A metric is ``nominator / denominator`` where each side is an ep-stats expression such as
``count(user.unit.click)``, ``value(user.unit.revenue) - value(user.unit.refund)`` or
``unique(user.unit.purchase(product=a))``. Strata evaluates metrics per randomisation unit, so
each side must be *linear* in its goal terms: terms may be added, subtracted and scaled by numeric
constants. Anything else (a product or quotient of two goals, a bare constant added to a goal,
unknown functions, trailing text) is an :class:`ExpressionError` that names the expression and the
character position (:func:`parse_linear`). :func:`metric_forms` checks a whole metric: nominator,
denominator and an optional CUPED covariate. ep-stats accepts some of these and computes a
meaningless variance, or ignores trailing text silently; Strata refuses them.

Usage:
    >>> form = parse_linear("value(user.unit.revenue) - 0.5 * value(user.unit.refund)")
    >>> [(str(t), c) for t, c in form.items()]
    [('value(user.unit.revenue)', 1.0), ('value(user.unit.refund)', -0.5)]
    >>> parse_linear("count(user.unit.click) * count(user.unit.view)")
    Traceback (most recent call last):
    ...
    strata.metrics.ExpressionError: product of two goal terms is not per-unit linear ...
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, cast

from strata.contracts import MetricRole
from strata.errors import DataError


class ExpressionError(DataError):
    """A metric expression is not valid ep-stats syntax or not evaluable per unit."""


#: Functions of ep-stats expressions and the aggregate columns (sum, sum of squares) they read.
FUNCTION_COLUMNS: dict[str, tuple[str, str]] = {
    "count": ("count", "sum_sqr_count"),
    "value": ("sum_value", "sum_sqr_value"),
    "unique": ("count_unique", "count_unique"),
}
#: The engine's term for the winsorized value of a capped metric (not writable in an expression):
#: it reads the capped sums of ``goal_aggregates`` (see :class:`Cap`).
CAPPED_FUNCTION = "value_capped"
CAPPED_COLUMNS = ("sum_value_capped", "sum_sqr_value_capped")
AGG_TYPES = ("unit", "global")

_TOKEN = re.compile(
    r"\s*(?:(?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_\-]*)"
    r"|(?P<op>[-+*/().,=]))"
)
_DIM_VALUE = re.compile(r"\s*([A-Za-z0-9_\-.% /|]+?)\s*(?=[,)])")


@dataclass(frozen=True, order=True)
class Term:
    """One goal term: ``func(unit_type.agg_type.goal(dim=value, ...))``.

    ``dimensions`` is a sorted tuple of (name, value) pairs; the canonical text (``str(term)``) is
    the key used to match aggregate rows and cross-product rows.
    """

    func: str
    unit_type: str
    agg_type: str
    goal: str
    dimensions: tuple[tuple[str, str], ...] = field(default=())

    @property
    def goal_key(self) -> str:
        """Key of the aggregate row this term reads (without the function)."""
        return goal_key(self.unit_type, self.agg_type, self.goal, self.dimensions)

    @property
    def columns(self) -> tuple[str, str]:
        """The aggregate columns holding this term's per-unit sum and sum of squares."""
        return CAPPED_COLUMNS if self.func == CAPPED_FUNCTION else FUNCTION_COLUMNS[self.func]

    def __str__(self) -> str:
        return f"{self.func}({self.goal_key})"


def goal_key(
    unit_type: str, agg_type: str, goal: str, dimensions: Sequence[tuple[str, str]] = ()
) -> str:
    """Canonical text of a goal row: ``unit.agg.goal`` plus sorted non-empty dimensions.

    Usage:
        >>> goal_key("user", "unit", "buy", (("product", "b"), ("country", "")))
        'user.unit.buy(product=b)'
    """
    dims = ",".join(f"{k}={v}" for k, v in sorted(dimensions) if v != "")
    return f"{unit_type}.{agg_type}.{goal}" + (f"({dims})" if dims else "")


class LinearForm(dict):
    """A linear combination of goal terms: ``{Term: coefficient}`` (insertion-ordered)."""

    def scaled(self, factor: float) -> LinearForm:
        return LinearForm({t: c * factor for t, c in self.items()})

    def plus(self, other: LinearForm, sign: float) -> LinearForm:
        out = LinearForm(self)
        for t, c in other.items():
            out[t] = out.get(t, 0.0) + sign * c
        return out


@dataclass
class _Node:
    """Parsed value: a constant (``form is None``) or a linear form of terms."""

    const: float | None
    form: LinearForm | None

    @property
    def k(self) -> float:
        """The constant of a constant node (``form is None``); typed for the checker."""
        return cast(float, self.const)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str) -> ExpressionError:
        return ExpressionError(f"{message} at position {self.pos} in expression {self.text!r}")

    def peek(self) -> tuple[str, str] | None:
        m = _TOKEN.match(self.text, self.pos)
        if not m or m.end() == m.start() or m.lastgroup is None:
            if self.text[self.pos :].strip():
                raise self.fail(f"unexpected character {self.text[self.pos :].strip()[0]!r}")
            return None
        return m.lastgroup, m.group(m.lastgroup)

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise self.fail("unexpected end")
        self.pos = cast("re.Match[str]", _TOKEN.match(self.text, self.pos)).end()  # peek matched
        return tok

    def expect(self, value: str) -> None:
        _kind, got = self.take()
        if got != value:
            raise self.fail(f"expected {value!r} but found {got!r}")

    def parse(self) -> _Node:
        node = self.expr()
        if (trailing := self.peek()) is not None:
            raise self.fail(f"unexpected trailing {trailing[1]!r}")
        return node

    def expr(self) -> _Node:
        node = self.product()
        while (tok := self.peek()) is not None and tok[1] in "+-":
            self.take()
            node = self.combine_sum(node, self.product(), 1.0 if tok[1] == "+" else -1.0)
        return node

    def product(self) -> _Node:
        node = self.unary()
        while (tok := self.peek()) is not None and tok[1] in "*/":
            self.take()
            node = self.combine_product(node, self.unary(), tok[1])
        return node

    def unary(self) -> _Node:
        tok = self.peek()
        if tok is not None and tok[1] == "-":
            self.take()
            node = self.unary()
            if node.form is None:
                return _Node(-node.k, None)
            return _Node(None, node.form.scaled(-1.0))
        return self.atom()

    def atom(self) -> _Node:
        kind, value = self.take()
        if kind == "number":
            return _Node(float(value), None)
        if value == "(":
            node = self.expr()
            self.expect(")")
            return node
        if kind == "name":
            return _Node(None, LinearForm({self.term(value): 1.0}))
        raise self.fail(f"unexpected {value!r}")

    def term(self, func: str) -> Term:
        if func not in FUNCTION_COLUMNS:
            raise self.fail(
                f"unknown function {func!r} (expected one of {sorted(FUNCTION_COLUMNS)})"
            )
        self.expect("(")
        parts = []
        for i in range(3):
            kind, name = self.take()
            if kind != "name":
                raise self.fail(f"expected a name in unit_type.agg_type.goal but found {name!r}")
            parts.append(name)
            if i < 2:
                self.expect(".")
        unit_type, agg_type, goal = parts
        if agg_type not in AGG_TYPES:
            raise self.fail(f"agg_type must be one of {AGG_TYPES}, not {agg_type!r}")
        dims: dict[str, str] = {}
        if self.peek() == ("op", "("):
            self.take()
            while True:
                kind, dim = self.take()
                if kind != "name":
                    raise self.fail(f"expected a dimension name but found {dim!r}")
                if self.peek() != ("op", "="):
                    raise self.fail(
                        f"dimension {dim!r}: only '=' filters are supported (ep-stats range "
                        "operators are not evaluable from aggregates)"
                    )
                self.take()
                m = _DIM_VALUE.match(self.text, self.pos)
                if not m:
                    raise self.fail(f"dimension {dim!r} has no value")
                if dim in dims:
                    raise self.fail(f"dimension {dim!r} given twice")
                dims[dim] = m.group(1)
                self.pos = m.end()
                if self.peek() == ("op", ","):
                    self.take()
                    continue
                self.expect(")")
                break
        self.expect(")")
        return Term(func, unit_type, agg_type, goal, tuple(sorted(dims.items())))

    def combine_sum(self, a: _Node, b: _Node, sign: float) -> _Node:
        if a.form is None and b.form is None:
            return _Node(a.k + sign * b.k, None)
        if a.form is None or b.form is None:
            raise self.fail(
                "a constant added to a goal term changes every unit's value and is not supported"
            )
        return _Node(None, a.form.plus(b.form, sign))

    def combine_product(self, a: _Node, b: _Node, op: str) -> _Node:
        if a.form is not None and b.form is not None:
            what = "product" if op == "*" else "quotient"
            raise self.fail(f"{what} of two goal terms is not per-unit linear")
        if op == "/":
            if b.form is not None:
                raise self.fail("dividing by a goal term is only allowed between the two sides")
            if b.const == 0:
                raise self.fail("division by zero")
            factor = 1.0 / b.k
            return (
                _Node(a.k * factor, None) if a.form is None else _Node(None, a.form.scaled(factor))
            )
        if a.form is None and b.form is None:
            return _Node(a.k * b.k, None)
        form, const = (a.form, b.k) if a.form is not None else (b.form, a.k)
        return _Node(None, cast(LinearForm, form).scaled(const))  # one side is a form here


@lru_cache(maxsize=4096)
def _parse_cached(text: str) -> tuple[tuple[Term, float], ...]:
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError(f"empty metric expression {text!r}")
    node = _Parser(text).parse()
    if node.form is None:
        raise ExpressionError(f"expression {text!r} has no goal term (a bare constant)")
    items = tuple((t, c) for t, c in node.form.items() if c != 0.0)
    if not items:
        raise ExpressionError(f"expression {text!r}: all goal terms cancel out")
    return items


def parse_linear(text: str) -> LinearForm:
    """Parse one ep-stats expression into ``{Term: coefficient}``; raise on anything else.

    Usage:
        >>> [(str(t), c) for t, c in parse_linear("count(user.global.exposure) / 2").items()]
        [('count(user.global.exposure)', 0.5)]
        >>> parse_linear("count(user.unit.click) foo")
        Traceback (most recent call last):
        ...
        strata.metrics.ExpressionError: unexpected trailing 'foo' at position 22 ...
    """
    return LinearForm(_parse_cached(text))


@dataclass(frozen=True)
class MetricForms:
    """A metric's parsed sides: ``nominator``, ``denominator`` and ``covariate`` (empty when no
    CUPED), whether it is a ratio metric (unit terms in the denominator) and its unit type."""

    nominator: LinearForm
    denominator: LinearForm
    covariate: LinearForm
    is_ratio: bool
    unit_type: str


def metric_forms(nominator: str, denominator: str, covariate: str | None = None) -> MetricForms:
    """Parse and check one metric as the engine evaluates it; raise :class:`ExpressionError`.

    Each side must parse (:func:`parse_linear`); the denominator is all ``global`` terms (a mean
    per unit) or all ``unit`` terms (a ratio metric); all terms share one unit type; a CUPED
    covariate uses ``unit`` terms.

    Usage:
        >>> f = metric_forms("count(user.unit.click)", "count(user.global.exposure)",
        ...                  "count(user.unit.pre_click)")
        >>> f.is_ratio, f.unit_type, [str(t) for t in f.covariate]
        (False, 'user', ['count(user.unit.pre_click)'])
        >>> metric_forms("count(user.unit.click)", "count(device.global.exposure)")
        Traceback (most recent call last):
        ...
        strata.metrics.ExpressionError: terms mix unit types ['device', 'user']
    """
    num = parse_linear(nominator)
    den = parse_linear(denominator)
    cov = parse_linear(covariate) if covariate else LinearForm()
    den_aggs = {t.agg_type for t in den}
    if len(den_aggs) != 1:
        raise ExpressionError("denominator mixes global and unit terms")
    unit_types = {t.unit_type for t in (*num, *den, *cov)}
    if len(unit_types) != 1:
        raise ExpressionError(f"terms mix unit types {sorted(unit_types)}")
    if any(t.agg_type != "unit" for t in cov):
        raise ExpressionError("CUPED covariate must use unit terms")
    (unit_type,) = unit_types
    return MetricForms(num, den, cov, den_aggs == {"unit"}, unit_type)


@dataclass(frozen=True)
class Cap:
    """Winsorization of a metric's per-unit value: ``min(V_u, cap)`` before the sums.

    Exactly one of ``value`` (a fixed cap, > 0, in the goal's units) or ``percentile`` (in
    (0, 1): the cap is that percentile of the per-unit cumulative values of the goal's units, both
    variants pooled, per experiment and analysis date; exact, linear interpolation between order
    statistics). Stored in the metric's JSON as ``{"value": 500.0}`` or ``{"percentile": 0.99}``.

    Usage:
        >>> Cap.from_json({"percentile": 0.99}).as_json()
        {'percentile': 0.99}
        >>> Cap.from_json({"value": 0})
        Traceback (most recent call last):
        ...
        strata.metrics.ExpressionError: cap value must be a number > 0, got 0.0
    """

    value: float | None = None
    percentile: float | None = None

    def __post_init__(self) -> None:
        if (self.value is None) == (self.percentile is None):
            raise ExpressionError("cap needs exactly one of `value` (> 0) or `percentile` (0..1)")
        v, p = self.value, self.percentile
        if v is not None and not (_finite(v) and v > 0):
            raise ExpressionError(f"cap value must be a number > 0, got {v!r}")
        if p is not None and not (_finite(p) and 0 < p < 1):
            raise ExpressionError(f"cap percentile must be in (0, 1) exclusive, got {p!r}")

    @classmethod
    def from_json(cls, obj: Any) -> Cap:
        if isinstance(obj, Cap):
            return obj
        if not isinstance(obj, dict) or set(obj) - {"value", "percentile"}:
            raise ExpressionError(f"cap must be {{value: x}} or {{percentile: p}}, got {obj!r}")
        for key, v in obj.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise ExpressionError(f"cap {key} must be a number, got {v!r}")
        value, pct = obj.get("value"), obj.get("percentile")
        return cls(
            float(value) if value is not None else None, float(pct) if pct is not None else None
        )

    def as_json(self) -> dict[str, float]:
        if self.value is not None:
            return {"value": self.value}
        return {"percentile": cast(float, self.percentile)}


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def capped_term(forms: MetricForms) -> Term:
    """The one ``value(<unit>.unit.<goal>)`` term a cap applies to; raise if the metric's shape
    does not allow a cap.

    A cap winsorizes the per-unit value of the nominator's goal. Strata caps a mean per unit of a
    single value term (any constant factor): a ratio metric or a CUPED covariate would need
    capped cross-products (goal_cross_aggregates has none), and several terms would need capped
    cross-products between them, so those are refused.

    Usage:
        >>> str(capped_term(metric_forms("value(user.unit.purchase) / 100",
        ...                              "count(user.global.exposure)")))
        'value(user.unit.purchase)'
        >>> capped_term(metric_forms("count(user.unit.click)", "count(user.global.exposure)"))
        Traceback (most recent call last):
        ...
        strata.metrics.ExpressionError: cap applies to a value(...) term, not count(...) ...
    """
    if forms.is_ratio:
        raise ExpressionError(
            "cap is not supported on a ratio metric (unit terms in the denominator): its "
            "variance needs capped cross-products, which goal_cross_aggregates does not carry"
        )
    if forms.covariate:
        raise ExpressionError(
            "cap is not supported with a CUPED covariate: the adjustment needs capped "
            "cross-products, which goal_cross_aggregates does not carry"
        )
    if len(forms.nominator) != 1:
        raise ExpressionError(
            f"cap needs a nominator of one value(...) term, got {len(forms.nominator)} terms"
        )
    (term,) = forms.nominator
    if term.func != "value" or term.agg_type != "unit":
        raise ExpressionError(
            f"cap applies to a value(...) term, not {term.func}(...) (nominator {term})"
        )
    return term


Role = MetricRole  # the contract (strata.contracts), named as the engine reads it
Direction = Literal["increase", "decrease"]
#: Metric keys Strata reads on top of ep-stats' and their defaults; a stored metric (the
#: experiments table's ``metrics`` JSON) carries them only when they differ from the default.
METRIC_OPTIONS: dict[str, Any] = {
    "direction": "increase",
    "covariate": None,
    "minimum_effect": None,
    "margin": None,
    "cap": None,
}


@dataclass(frozen=True)
class Metric:
    """One metric of an experiment, in the definitions file and in the engine alike.

    ``nominator / denominator`` over goals (ep-stats names), its ``role``, the ``direction`` that
    is a win, an optional CUPED ``covariate`` (a pre-period expression), the relative
    ``minimum_effect`` to power for, for a guardrail its relative non-inferiority ``margin``
    (e.g. ``0.01``: a harm of up to 1% is acceptable; :mod:`strata.stats.recommend`), and an
    optional winsorization ``cap`` (:class:`Cap`).

    Usage:
        >>> m = Metric("ctr", "CTR", "count(user.unit.click)", "count(user.global.exposure)",
        ...            "primary", covariate="count(user.unit.pre_click)")
        >>> m.as_json()["covariate"], "direction" in m.as_json()
        ('count(user.unit.pre_click)', False)
    """

    id: str
    name: str
    nominator: str
    denominator: str
    role: Role = "secondary"
    direction: Direction = "increase"
    covariate: str | None = None
    minimum_effect: float | None = None
    margin: float | None = None
    cap: Cap | None = None

    def as_json(self) -> dict[str, Any]:
        """The stored form: ep-stats keys, plus each option that differs from its default."""
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "nominator": self.nominator,
            "denominator": self.denominator,
            "role": self.role,
        }
        for key, default in METRIC_OPTIONS.items():
            value = getattr(self, key)
            if value != default:
                out[key] = value.as_json() if isinstance(value, Cap) else value
        return out
