"""Experiment definitions: YAML files -> validated, resolved, immutable objects.

A definitions folder holds YAML files; each file is a mapping with any of the lists ``domains``,
``layers`` and ``experiments`` (the format is documented in ``docs/definitions.md`` and by the JSON
Schema in ``strata/schemas/definitions.schema.json``, generated from :class:`DefinitionFile`).

- **Domains** (seed 003) split traffic first: a unit is in domain ``d`` when it is in ``d``'s parent
  (the implicit root domain ``global`` holds everything) and ``slot(d.salt, unit_id)`` falls in
  ``d.slots``. Sibling domains share one salt and never overlap, so each unit is in at most one.
  ``overlapping`` domains hold any number of layers; ``non_overlapping`` ones exactly one.
- **Layers** hash units by ``unit_type`` with their own salt, so layers are independent; the
  ``launch`` layer lives in ``global`` and overlaps everything.
- **Experiments** in a layer are mutually exclusive: their variants own disjoint slot ranges, given
  explicitly (``start``/``end``) or as ``weight`` shares of the experiment's ``slots``.

Validation (:func:`load`) reports every problem as ``file: path: message`` and raises
:class:`DefinitionError` holding them all.

Usage:
    >>> from strata.definitions import bundled_path, load
    >>> defs = load(bundled_path())
    >>> sorted(e.id for e in defs.experiments)[:3]
    ['checkout_button', 'dark_mode', 'feed_density']
    >>> [(v.name, v.start, v.end) for v in defs.experiment("price_display").variants]
    [('control', 0, 2000), ('treatment', 2000, 4000)]
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from strata import safe_yaml
from strata.bucketing import SLOTS
from strata.contracts import (  # noqa: F401  (re-exported: their home is strata.contracts)
    ASSIGNED_STATUSES,
    ENDED_STATUSES,
    FROZEN_STATUSES,
    METRIC_ROLES,
    SHIPPED,
    STATUSES,
    UNIT_TYPES,
    MetricRole,
    Status,
    UnitType,
    outside_window,
)
from strata.errors import StrataError
from strata.metrics import (
    Cap,
    Direction,
    ExpressionError,
    Metric,
    capped_term,
    metric_forms,
    parse_linear,
)
from strata.rules import Rule, RuleNode, from_node

#: The implicit root domain: all traffic. The launch layer and top-level domains live in it.
ROOT_DOMAIN = "global"
SCHEMA_PATH = Path(__file__).with_name("schemas") / "definitions.schema.json"
_ID = r"^[a-z][a-z0-9_]*$"
_EXTENSIONS = (".yaml", ".yml")


class DefinitionError(StrataError):
    """Definitions that do not validate; ``problems`` holds one ``file: path: message`` each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


# --- pydantic models: the file format ---------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class HoldoutModel(_Strict):
    """A domain's holdout: the units with ``slot(salt, unit_id) < percent * 100`` are in no
    experiment of the domain (nested domains included)."""

    percent: float = Field(gt=0, lt=100, description="Share of the domain's units held out, %.")
    salt: str = Field(min_length=1, description="Salt of the holdout split (its own hash).")
    unit_type: Literal["user_id", "device_id"] = Field(
        "user_id", description="Unit of the long-term comparison rows (holdout vs the rest)."
    )
    start_date: dt.date | None = Field(None, description="Comparison window (with end_date).")
    end_date: dt.date | None = None
    holdout_vid: int | None = Field(None, ge=1, description="vid of the holdout (control).")
    rest_vid: int | None = Field(None, ge=1, description="vid of everyone else in the domain.")

    @model_validator(mode="after")
    def _comparison(self) -> HoldoutModel:
        given = [
            x is not None for x in (self.start_date, self.end_date, self.holdout_vid, self.rest_vid)
        ]
        if any(given) and not all(given):
            raise ValueError(
                "a holdout comparison needs start_date, end_date, holdout_vid and rest_vid"
            )
        if self.start_date and self.end_date and self.end_date < self.start_date:
            raise ValueError(f"end_date {self.end_date} is before start_date {self.start_date}")
        if self.holdout_vid is not None and self.holdout_vid == self.rest_vid:
            raise ValueError("holdout_vid and rest_vid must differ")
        return self


class DomainModel(_Strict):
    """A share of traffic (seed 003). Siblings share ``salt`` and own disjoint ``slots``."""

    id: str = Field(pattern=_ID)
    name: str | None = None
    description: str = ""
    parent: str = Field(ROOT_DOMAIN, description="Enclosing domain (nested domains).")
    salt: str = Field(min_length=1, description="Salt of the split among sibling domains.")
    slots: tuple[int, int] = Field(description="[start, end) of the parent's split, in 0..10000.")
    kind: Literal["overlapping", "non_overlapping"] = "overlapping"
    holdout: HoldoutModel | None = Field(
        None, description="Units excluded from every experiment in the domain (and its nested)."
    )


class LayerModel(_Strict):
    """Experiments in a layer are mutually exclusive; layers are independent (own salt)."""

    id: str = Field(pattern=_ID)
    description: str = ""
    domain: str = ROOT_DOMAIN
    salt: str = Field(min_length=1)
    unit_type: UnitType = Field(
        description="Hash key: device_id, user_id, url (a page, assigned online) or random (a "
        "fresh draw per request, online only, not analysable per unit)."
    )
    priority: int = Field(description="Parameter merge order: higher priority wins conflicts.")
    service: str | None = Field(None, description="Service scope; null = every service.")
    launch: bool = Field(False, description="The launch layer: overlaps all traffic.")


class CapModel(_Strict):
    """Winsorize the per-unit value: a fixed ``value`` or a pooled ``percentile`` (one of them)."""

    value: float | None = Field(None, description="Fixed cap, > 0, in the goal's units.")
    percentile: float | None = Field(
        None, description="Cap at this percentile (0 < p < 1) of the units' values, pooled."
    )


class MetricModel(_Strict):
    """A metric: ``nominator / denominator`` over goals (ep-stats expressions, parsed by
    :mod:`strata.metrics`, the engine's grammar), its role and how the engine tests it."""

    id: str = Field(pattern=_ID)
    name: str
    nominator: str
    denominator: str
    role: MetricRole = "secondary"
    direction: Direction = Field("increase", description="Which sign of the effect is a win.")
    covariate: str | None = Field(
        None,
        description="CUPED: a pre-period expression of unit terms, e.g. count(user.unit.pre_x).",
    )
    minimum_effect: float | None = Field(
        None, gt=0, description="Relative effect to power for (power and sample size)."
    )
    margin: float | None = Field(
        None,
        gt=0,
        description="Guardrails only: relative non-inferiority margin, e.g. 0.01 = a harm of up "
        "to 1% is acceptable (the recommendation's guardrail outcome).",
    )
    cap: CapModel | None = Field(
        None, description="Winsorize the nominator's per-unit value (docs/statistics.md)."
    )

    @field_validator("nominator", "denominator", "covariate")
    @classmethod
    def _expression(cls, text: str | None) -> str | None:
        if text is not None:
            try:
                parse_linear(text)
            except ExpressionError as exc:
                raise ValueError(str(exc)) from None
        return text

    @model_validator(mode="after")
    def _metric(self) -> MetricModel:
        try:
            metric_forms(self.nominator, self.denominator, self.covariate)
        except ExpressionError as exc:
            raise ValueError(str(exc)) from None
        return self

    def metric(self) -> Metric:
        return Metric(
            self.id,
            self.name,
            self.nominator,
            self.denominator,
            self.role,
            self.direction,
            self.covariate,
            self.minimum_effect,
            self.margin,
            Cap.from_json(self.cap.model_dump()) if self.cap else None,
        )


class VariantModel(_Strict):
    """A variant (seed 002 ``vid``): either a ``weight`` or an explicit ``[start, end)``."""

    vid: int = Field(ge=1)
    name: str = Field(min_length=1)
    is_control: bool = False
    weight: float | None = Field(None, gt=0)
    start: int | None = None
    end: int | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _range(self) -> VariantModel:
        explicit = (self.start is not None, self.end is not None)
        if self.weight is not None and any(explicit):
            raise ValueError("give either weight or start/end, not both")
        if self.weight is None and not all(explicit):
            raise ValueError("give a weight, or both start and end")
        if all(explicit):
            _check_range(self.start, self.end)  # type: ignore[arg-type]
        return self


class RampStepModel(_Strict):
    """One step of a ramp: from ``date`` on (UTC, inclusive), new units split by ``weights``
    (variant name -> weight) over ``slots`` (default: the experiment's ``slots``)."""

    date: dt.date
    weights: dict[str, float] = Field(description="Every variant's weight (> 0), by name.")
    slots: tuple[int, int] | None = Field(None, description="[start, end) split from this date.")

    @model_validator(mode="after")
    def _step(self) -> RampStepModel:
        bad = sorted(n for n, w in self.weights.items() if not w > 0)
        if bad:
            raise ValueError(f"ramp weights must be > 0, not for {bad}")
        if self.slots is not None:
            _check_range(*self.slots)
        return self


class ExperimentModel(_Strict):
    """One experiment: where it runs, who it targets, its variants and its metrics."""

    id: str = Field(pattern=_ID)
    name: str
    owner: str
    description: str = ""
    layer: str
    status: Status = "draft"
    start_date: dt.date
    end_date: dt.date
    platforms: list[str] = Field(default_factory=list, description="Channels (seed 003/004).")
    key: str | None = Field(None, description="Seed 004 deployment key / portal folder id.")
    slots: tuple[int, int] | None = Field(None, description="Range split by variant weights.")
    targeting: RuleNode | None = None
    variants: list[VariantModel] = Field(min_length=2)
    metrics: list[MetricModel] = Field(default_factory=list)
    sticky: bool | None = Field(
        None,
        description="Units keep the variant of the previous assignments snapshot (default: true "
        "when the experiment has a ramp, else false).",
    )
    ramp: list[RampStepModel] = Field(
        default_factory=list,
        description="Traffic changes over time: from each step's date, new units split by its "
        "weights (weighted variants only).",
    )
    shipped_variant: int | str | None = Field(
        None,
        description="status shipped: the variant (vid or name) whose params every unit in the "
        "layer's scope gets, through the launch layer.",
    )

    @model_validator(mode="after")
    def _check(self) -> ExperimentModel:
        if self.status == SHIPPED and self.shipped_variant is None:
            raise ValueError("a shipped experiment names its shipped_variant (vid or name)")
        if self.status != SHIPPED and self.shipped_variant is not None:
            raise ValueError(f"shipped_variant is only for status {SHIPPED!r}, not {self.status!r}")
        if self.shipped_variant is not None and self.shipped() is None:
            known = [f"{v.vid} ({v.name})" for v in self.variants]
            raise ValueError(
                f"shipped_variant {self.shipped_variant!r} is not a variant of the experiment; "
                f"its variants: {', '.join(known)}"
            )
        if self.end_date < self.start_date:
            raise ValueError(f"end_date {self.end_date} is before start_date {self.start_date}")
        controls = [v.name for v in self.variants if v.is_control]
        if not controls:
            raise ValueError("no control variant: mark one variant is_control: true")
        if len(controls) > 1:
            raise ValueError(f"more than one control variant: {controls}")
        weighted = [v.weight is not None for v in self.variants]
        if any(weighted) and not all(weighted):
            raise ValueError("variants mix weights and explicit start/end; use one style")
        if all(weighted) and self.slots is None:
            raise ValueError("weighted variants need the experiment's slots: [start, end)")
        if not any(weighted) and self.slots is not None:
            raise ValueError("slots is only for weighted variants; explicit ranges give their own")
        if self.slots is not None:
            _check_range(*self.slots)
        self._check_ramp()
        for m in self.metrics:
            if m.margin is not None and m.role != "guardrail":
                raise ValueError(
                    f"experiment {self.id!r}, metric {m.id!r}: margin is only for guardrail "
                    f"metrics (role is {m.role!r})"
                )
        _check_caps(self)
        return self

    def _check_ramp(self) -> None:
        if not self.ramp:
            return
        if self.slots is None:
            raise ValueError("a ramp needs weighted variants and the experiment's slots")
        names = [v.name for v in self.variants]
        previous = self.start_date
        for i, step in enumerate(self.ramp):
            if not self.start_date < step.date <= self.end_date:
                raise ValueError(
                    f"ramp[{i}].date {step.date} is not inside ({self.start_date}, "
                    f"{self.end_date}] (after start_date, up to end_date)"
                )
            if step.date <= previous and i > 0:
                raise ValueError(
                    f"ramp[{i}].date {step.date} is not after ramp[{i - 1}].date {previous}"
                )
            previous = step.date
            if sorted(step.weights) != sorted(names):
                raise ValueError(
                    f"ramp[{i}].weights must name every variant {sorted(names)}, "
                    f"got {sorted(step.weights)}"
                )

    def shipped(self) -> VariantModel | None:
        """The variant ``shipped_variant`` names (by vid, else by name), or None."""
        wanted = self.shipped_variant
        if wanted is None:
            return None
        for v in self.variants:
            if (isinstance(wanted, int) and v.vid == wanted) or v.name == str(wanted):
                return v
        return None


def _check_caps(e: ExperimentModel) -> None:
    """Each cap is valid, on a metric shape that allows one, and one goal has one cap."""
    by_goal: dict[str, tuple[str, Cap]] = {}
    for m in e.metrics:
        if m.cap is None:
            continue
        where = f"experiment {e.id!r}, metric {m.id!r}"
        try:
            cap = Cap.from_json(m.cap.model_dump())
            term = capped_term(metric_forms(m.nominator, m.denominator, m.covariate))
        except ExpressionError as exc:
            raise ValueError(f"{where}: {exc}") from None
        first = by_goal.setdefault(term.goal, (m.id, cap))
        if first[1] != cap:
            raise ValueError(
                f"{where}: cap {cap.as_json()} differs from metric {first[0]!r}'s cap "
                f"{first[1].as_json()} on goal {term.goal!r}; goal_aggregates carries one cap "
                "per experiment and goal"
            )


class DefinitionFile(_Strict):
    """One YAML file of a definitions folder."""

    domains: list[DomainModel] = Field(default_factory=list)
    layers: list[LayerModel] = Field(default_factory=list)
    experiments: list[ExperimentModel] = Field(default_factory=list)


def _check_range(start: int, end: int) -> None:
    if not (0 <= start < end <= SLOTS):
        raise ValueError(f"range [{start}, {end}) is not inside [0, {SLOTS}) or is empty")


def json_schema() -> dict[str, Any]:
    """JSON Schema of a definitions file (committed as ``schemas/definitions.schema.json``)."""
    schema = DefinitionFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Strata experiment definitions file"
    return schema


def write_json_schema(path: Path = SCHEMA_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
    return path


# --- resolved definitions: dataclasses inside -------------------------------------------------


@dataclass(frozen=True)
class Domain:
    id: str
    name: str
    description: str
    parent: str
    salt: str
    start: int
    end: int
    kind: str
    #: Holdout: (salt, slots held out: ``slot(salt, unit) < holdout_slots``); None: no holdout.
    holdout_salt: str | None = None
    holdout_slots: int = 0


@dataclass(frozen=True)
class Layer:
    id: str
    description: str
    domain: str
    salt: str
    unit_type: str
    priority: int
    service: str | None
    launch: bool


@dataclass(frozen=True)
class VariantDefinition:
    """A variant as reviewed: seed 002 ``vid`` (an int), its slot range and its parameters."""

    vid: int
    name: str
    is_control: bool
    weight: float
    start: int
    end: int
    params: dict[str, Any]

    @property
    def params_json(self) -> str:
        return canonical_json(self.params)


@dataclass(frozen=True)
class RampStep:
    """From ``date`` on, new units split by these ranges (the period's ``variants``)."""

    date: dt.date
    variants: tuple[VariantDefinition, ...]


@dataclass(frozen=True)
class ExperimentDefinition:
    """An experiment as reviewed in a definitions file, resolved: what assignment serves and what
    the ``experiments`` table stores. The engine evaluates its
    :class:`strata.stats.models.ExperimentDesign` (read back from that table)."""

    id: str
    name: str
    owner: str
    description: str
    layer: str
    status: str
    start_date: dt.date
    end_date: dt.date
    platforms: tuple[str, ...]
    key: str | None
    targeting: Rule | None
    targeting_json: dict[str, Any] | None
    variants: tuple[VariantDefinition, ...]
    metrics: tuple[Metric, ...]
    #: Units keep their previous variant (see :mod:`strata.assignment`, sticky assignment).
    sticky: bool = False
    #: Ramp steps, dates increasing; before the first, ``variants`` hold (period 0).
    ramp: tuple[RampStep, ...] = ()
    #: status shipped: the vid of the variant every unit in the layer's scope is served.
    shipped_vid: int | None = None
    #: The definitions file that declares it (as shown in validation messages); not content.
    source: str = field(default="", compare=False)

    def period(self, day: dt.date) -> int:
        """The ramp period in effect on ``day``: 0 before the first step, ``i + 1`` from
        ``ramp[i].date`` on."""
        return sum(1 for step in self.ramp if step.date <= day)

    def variants_on(self, day: dt.date) -> tuple[VariantDefinition, ...]:
        """The variants with the slot ranges that split new units on ``day``."""
        p = self.period(day)
        return self.variants if p == 0 else self.ramp[p - 1].variants

    def periods(self) -> list[tuple[dt.date, tuple[VariantDefinition, ...]]]:
        """Every period's first day and variants: ``[(start_date, variants), *ramp]``."""
        return [(self.start_date, self.variants)] + [(s.date, s.variants) for s in self.ramp]

    @property
    def assigned(self) -> bool:
        """In an assigned status (whatever the day; see :meth:`assigned_on`)."""
        return self.status in ASSIGNED_STATUSES

    def window(self, day: dt.date) -> str | None:
        """``"not_started"``, ``"ended"`` or None (inside ``[start_date, end_date]``, UTC)."""
        return outside_window(self.start_date, self.end_date, day)

    def assigned_on(self, day: dt.date) -> bool:
        """Gets units on ``day``: an assigned status and ``day`` inside its window."""
        return self.assigned and self.window(day) is None

    @property
    def frozen(self) -> bool:
        """paused, stopped or shipped: keeps the assignments it had, gets no new unit."""
        return self.status in FROZEN_STATUSES

    @property
    def shipped_variant(self) -> VariantDefinition | None:
        """The variant a shipped experiment serves to every unit in its layer's scope."""
        return next((v for v in self.variants if v.vid == self.shipped_vid), None)


@dataclass(frozen=True)
class Holdout:
    """A domain holdout's long-term comparison: a pseudo-experiment ``experiment_id``
    (``holdout_<domain>``) whose control is the holdout and whose other variant is everyone else
    in the domain, on the primary metrics of the domain's experiments."""

    domain: str
    experiment_id: str
    salt: str
    slots: int
    unit_type: str
    start_date: dt.date
    end_date: dt.date
    holdout_vid: int
    rest_vid: int
    metrics: tuple[Metric, ...]

    def window(self, day: dt.date) -> str | None:
        return outside_window(self.start_date, self.end_date, day)


@dataclass(frozen=True)
class Definitions:
    """A validated definitions set; ``version`` hashes its canonical content."""

    domains: tuple[Domain, ...]
    layers: tuple[Layer, ...]
    experiments: tuple[ExperimentDefinition, ...]
    version: str
    #: Domain holdouts with a comparison window (see :class:`Holdout`).
    holdouts: tuple[Holdout, ...] = ()

    def domain(self, domain_id: str) -> Domain:
        return next(d for d in self.domains if d.id == domain_id)

    def layer(self, layer_id: str) -> Layer:
        return next(lay for lay in self.layers if lay.id == layer_id)

    def experiment(self, experiment_id: str) -> ExperimentDefinition:
        return next(e for e in self.experiments if e.id == experiment_id)

    def domain_chain(self, domain_id: str) -> list[Domain]:
        """The domains a unit must be in to reach ``domain_id``, outermost first."""
        chain = []
        while domain_id != ROOT_DOMAIN:
            d = self.domain(domain_id)
            chain.append(d)
            domain_id = d.parent
        return chain[::-1]

    def layer_experiments(self, layer_id: str) -> list[ExperimentDefinition]:
        return [e for e in self.experiments if e.layer == layer_id]


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces: the same params always give the same string.

    Usage:
        >>> canonical_json({"b": 1, "a": {"y": [1, 2], "x": None}})
        '{"a":{"x":null,"y":[1,2]},"b":1}'
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _weighted_ranges(start: int, end: int, weights: list[float]) -> list[tuple[int, int]]:
    """Split ``[start, end)`` by weights; boundaries are floors of cumulative shares."""
    total, cum, bounds = sum(weights), 0.0, [start]
    for w in weights[:-1]:
        cum += w
        bounds.append(start + int((end - start) * cum / total))
    bounds.append(end)
    return list(itertools.pairwise(bounds))


# --- loading and validation -------------------------------------------------------------------


@dataclass
class _Located:
    file: str
    path: str
    model: Any


def definition_files(path: Path) -> list[Path]:
    """The YAML files of a definitions file or folder (recursive, sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DefinitionError([f"{path}: no such file or folder"])
    files = sorted(p for p in path.rglob("*") if p.suffix in _EXTENSIONS and p.is_file())
    if not files:
        raise DefinitionError([f"{path}: no .yaml/.yml definition files in this folder"])
    return files


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _parse_file(path: Path, shown: str, problems: list[str]) -> DefinitionFile | None:
    """One file's model, or None after adding its problems (the YAML limits: :mod:`safe_yaml`)."""
    try:
        raw = safe_yaml.load_file(path)
    except safe_yaml.YamlProblem as exc:
        problems.append(f"{shown}: {exc.where}: {exc.message}")
        return None
    except OSError as exc:
        problems.append(f"{shown}: <root>: cannot read the file: {exc.strerror}")
        return None
    if raw is None:
        problems.append(
            f"{shown}: <root>: empty file; expected a mapping of domains/layers/experiments"
        )
        return None
    if not isinstance(raw, dict):
        problems.append(f"{shown}: <root>: expected a mapping of domains/layers/experiments")
        return None
    try:
        return DefinitionFile.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] in ("extra_forbidden",):
                msg = "unknown field"
            problems.append(f"{shown}: {_loc(err['loc'])}: {msg}")
        return None


def load(path: Path | str, *, root: Path | None = None) -> Definitions:
    """Read, validate and resolve a definitions file or folder.

    Raises :class:`DefinitionError` listing every problem (``file: path: message``).
    """
    path = Path(path)
    problems: list[str] = []
    files = definition_files(path)
    base = root or (path if path.is_dir() else path.parent)
    domains: list[_Located] = []
    layers: list[_Located] = []
    experiments: list[_Located] = []
    for f in files:
        shown = str(f.relative_to(base)) if f.is_relative_to(base) else str(f)
        parsed = _parse_file(f, shown, problems)
        if parsed is None:
            continue
        domains += [_Located(shown, f"domains[{i}]", d) for i, d in enumerate(parsed.domains)]
        layers += [_Located(shown, f"layers[{i}]", lay) for i, lay in enumerate(parsed.layers)]
        experiments += [
            _Located(shown, f"experiments[{i}]", e) for i, e in enumerate(parsed.experiments)
        ]
    if problems:
        raise DefinitionError(problems)
    _cross_check(domains, layers, experiments, problems)
    if problems:
        raise DefinitionError(problems)
    return _resolve(domains, layers, experiments)


def _where(x: _Located, suffix: str = "") -> str:
    return f"{x.file}: {x.path}{suffix}"


def _duplicates(items: list[_Located], kind: str, key: str, problems: list[str]) -> None:
    seen: dict[Any, _Located] = {}
    for x in items:
        value = getattr(x.model, key)
        if value in seen:
            first = seen[value]
            problems.append(
                f"{_where(x, '.' + key)}: duplicate {kind} {key} {value!r} "
                f"(first defined at {_where(first)})"
            )
        else:
            seen[value] = x


def _overlaps(
    ranges: list[tuple[int, int, str, _Located]], container: str, problems: list[str]
) -> None:
    """Report overlapping [start, end) ranges (sorted sweep) and a total over 100%."""
    total = sum(end - start for start, end, _, _ in ranges)
    if total > SLOTS:
        names = ", ".join(sorted({name for _, _, name, _ in ranges}))
        problems.append(
            f"{_where(ranges[0][3])}: {container} is over 100%: {total / SLOTS:.2%} of slots "
            f"({names})"
        )
    ordered = sorted(ranges, key=lambda r: (r[0], r[1]))
    for (s1, e1, n1, x1), (s2, e2, n2, x2) in itertools.pairwise(ordered):
        if s2 < e1:
            problems.append(
                f"{_where(x2)}: {n2} [{s2}, {e2}) overlaps {n1} [{s1}, {e1}) "
                f"(at {_where(x1)}) in {container}"
            )


def _cross_check(
    domains: list[_Located],
    layers: list[_Located],
    experiments: list[_Located],
    problems: list[str],
) -> None:
    _duplicates(domains, "domain", "id", problems)
    _duplicates(layers, "layer", "id", problems)
    _duplicates(layers, "layer", "salt", problems)
    _duplicates(experiments, "experiment", "id", problems)
    variants = [
        _Located(e.file, f"{e.path}.variants[{i}]", v)
        for e in experiments
        for i, v in enumerate(e.model.variants)
    ]
    _duplicates(variants, "variant", "vid", problems)
    for e in experiments:
        names = [
            _Located(e.file, f"{e.path}.variants[{i}]", v) for i, v in enumerate(e.model.variants)
        ]
        _duplicates(names, "variant", "name", problems)
        _duplicates(
            [_Located(e.file, f"{e.path}.metrics[{i}]", m) for i, m in enumerate(e.model.metrics)],
            "metric",
            "id",
            problems,
        )

    domain_by_id = {d.model.id: d for d in domains}
    if ROOT_DOMAIN in domain_by_id:
        problems.append(f"{_where(domain_by_id[ROOT_DOMAIN], '.id')}: {ROOT_DOMAIN!r} is reserved")
    # Domains: parents exist, no cycles, siblings share a salt, no overlap, <= 100%.
    children: dict[str, list[_Located]] = defaultdict(list)
    for d in domains:
        if d.model.parent != ROOT_DOMAIN and d.model.parent not in domain_by_id:
            problems.append(f"{_where(d, '.parent')}: unknown domain {d.model.parent!r}")
            continue
        children[d.model.parent].append(d)
    for d in domains:
        seen, cur = {d.model.id}, d.model.parent
        while cur != ROOT_DOMAIN and cur in domain_by_id:
            if cur in seen:
                problems.append(f"{_where(d, '.parent')}: domain nesting cycle through {cur!r}")
                break
            seen.add(cur)
            cur = domain_by_id[cur].model.parent
    for parent, kids in children.items():
        salts = sorted({k.model.salt for k in kids})
        if len(salts) > 1:
            problems.append(
                f"{_where(kids[0], '.salt')}: sibling domains in {parent!r} must share one split "
                f"salt, found {salts}"
            )
        _overlaps(
            [(*k.model.slots, f"domain {k.model.id!r}", k) for k in kids],
            f"domain {parent!r}",
            problems,
        )
    # Holdout comparisons: their vids and pseudo-experiment ids are unique too.
    vids = {v.vid for e in experiments for v in e.model.variants}
    exp_ids = {e.model.id for e in experiments}
    for d in domains:
        h = d.model.holdout
        if h is None or h.holdout_vid is None:
            continue
        for name in ("holdout_vid", "rest_vid"):
            vid = getattr(h, name)
            if vid in vids:
                problems.append(f"{_where(d, '.holdout.' + name)}: vid {vid} is already used")
            vids.add(vid)
        if f"holdout_{d.model.id}" in exp_ids:
            problems.append(
                f"{_where(d, '.holdout')}: an experiment is named holdout_{d.model.id}, the id of "
                "this holdout's comparison"
            )
    # Holdouts hash on their own salt: not a domain split's or a layer's (else not independent).
    split_salts = {d.model.salt for d in domains} | {lay.model.salt for lay in layers}
    holdout_salts: dict[str, _Located] = {}
    for d in domains:
        h = d.model.holdout
        if h is None:
            continue
        if h.salt in split_salts:
            problems.append(
                f"{_where(d, '.holdout.salt')}: {h.salt!r} is also a domain or layer salt; a "
                "holdout needs its own salt"
            )
        elif h.salt in holdout_salts:
            problems.append(
                f"{_where(d, '.holdout.salt')}: duplicate holdout salt {h.salt!r} (first at "
                f"{_where(holdout_salts[h.salt])})"
            )
        holdout_salts.setdefault(h.salt, d)
    # Layers: known domain, launch layer rules, non-overlapping domains hold one layer.
    layer_by_id = {lay.model.id: lay for lay in layers}
    per_domain: dict[str, list[_Located]] = defaultdict(list)
    for lay in layers:
        m = lay.model
        if m.domain != ROOT_DOMAIN and m.domain not in domain_by_id:
            problems.append(f"{_where(lay, '.domain')}: unknown domain {m.domain!r}")
        if m.launch and m.domain != ROOT_DOMAIN:
            problems.append(
                f"{_where(lay, '.domain')}: the launch layer must be in {ROOT_DOMAIN!r}"
            )
        per_domain[m.domain].append(lay)
    for did, lays in per_domain.items():
        dom = domain_by_id.get(did)
        if dom is not None and dom.model.kind == "non_overlapping" and len(lays) > 1:
            problems.append(
                f"{_where(lays[1])}: non_overlapping domain {did!r} holds one layer, found "
                f"{sorted(x.model.id for x in lays)}"
            )
    launch = [lay for lay in layers if lay.model.launch]
    if len(launch) > 1:
        problems.append(f"{_where(launch[1], '.launch')}: more than one launch layer")
    if not launch:
        for e in experiments:
            if e.model.status == SHIPPED:
                problems.append(
                    f"{_where(e, '.status')}: a shipped experiment is served through the launch "
                    "layer, and the definitions declare none (a layer with launch: true)"
                )
    # Experiments: known layer, slot ranges disjoint inside the layer and <= 100%, on every
    # day of a ramp schedule (each step's ranges against every experiment's ranges that day).
    # Stopped and shipped experiments never get units again: their slots are free for new
    # experiments.
    per_layer: dict[str, list[_Located]] = defaultdict(list)
    for e in experiments:
        if e.model.layer not in layer_by_id:
            problems.append(f"{_where(e, '.layer')}: unknown layer {e.model.layer!r}")
            continue
        if e.model.status in ENDED_STATUSES:
            continue
        per_layer[e.model.layer].append(e)
    for lid, located in per_layer.items():
        days: list[dt.date | None] = [None]
        days += sorted({s.date for e in located for s in e.model.ramp})
        for day in days:
            ranges = []
            for e in located:
                m = e.model
                step = _step_on(m, day)
                for i, (start, end) in enumerate(_variant_ranges(m, step)):
                    path = e.path if step is None else f"{e.path}.ramp[{m.ramp.index(step)}]"
                    ranges.append(
                        (start, end, f"{m.id}/{m.variants[i].name}", _Located(e.file, path, m))
                    )
            container = f"layer {lid!r}" + ("" if day is None else f" from {day}")
            before = len(problems)
            _overlaps(ranges, container, problems)
            if day is not None and len(problems) > before:
                # report a ramp day only for what it adds (a base overlap persists every day)
                base = {p.split(" in layer ")[0] for p in problems[:before]}
                problems[before:] = [
                    p for p in problems[before:] if p.split(" in layer ")[0] not in base
                ]


def _step_on(m: ExperimentModel, day: dt.date | None) -> RampStepModel | None:
    """The ramp step in effect on ``day`` (None: the base ranges)."""
    if day is None:
        return None
    steps = [s for s in m.ramp if s.date <= day]
    return steps[-1] if steps else None


def _variant_ranges(m: ExperimentModel, step: RampStepModel | None = None) -> list[tuple[int, int]]:
    if step is not None:
        slots = step.slots or m.slots
        assert slots is not None  # validated: a ramp needs weighted variants
        return _weighted_ranges(*slots, [step.weights[v.name] for v in m.variants])
    if m.slots is not None:
        return _weighted_ranges(*m.slots, [v.weight or 0.0 for v in m.variants])
    return [(v.start, v.end) for v in m.variants]  # type: ignore[misc]


def _resolve(
    domains: list[_Located], layers: list[_Located], experiments: list[_Located]
) -> Definitions:
    ds = tuple(
        Domain(
            m.id,
            m.name or m.id,
            m.description,
            m.parent,
            m.salt,
            m.slots[0],
            m.slots[1],
            m.kind,
            *((m.holdout.salt, round(m.holdout.percent * SLOTS / 100)) if m.holdout else ()),
        )
        for m in sorted((d.model for d in domains), key=lambda m: m.id)
    )
    ls = tuple(
        Layer(m.id, m.description, m.domain, m.salt, m.unit_type, m.priority, m.service, m.launch)
        for m in sorted((lay.model for lay in layers), key=lambda m: (m.priority, m.id))
    )
    es = []
    for located in sorted(experiments, key=lambda x: x.model.id):
        m = located.model
        ranges = _variant_ranges(m)
        variants = tuple(
            VariantDefinition(
                v.vid,
                v.name,
                v.is_control,
                v.weight if v.weight is not None else float(end - start),
                start,
                end,
                v.params,
            )
            for v, (start, end) in zip(m.variants, ranges, strict=True)
        )
        es.append(
            ExperimentDefinition(
                m.id,
                m.name,
                m.owner,
                m.description,
                m.layer,
                m.status,
                m.start_date,
                m.end_date,
                tuple(m.platforms),
                m.key,
                from_node(m.targeting) if m.targeting else None,
                m.targeting.model_dump(exclude_none=True) if m.targeting else None,
                variants,
                tuple(x.metric() for x in m.metrics),
                m.sticky if m.sticky is not None else bool(m.ramp),
                tuple(_ramp_step(m, step) for step in m.ramp),
                shipped.vid if (shipped := m.shipped()) is not None else None,
                located.file,
            )
        )
    scratch = Definitions(ds, ls, tuple(es), "")
    found = [_holdout(m, scratch) for m in sorted((d.model for d in domains), key=lambda m: m.id)]
    holdouts = tuple(h for h in found if h is not None)
    content: dict[str, Any] = {  # no holdout: the content (so the version) is as before
        "domains": [
            {k: v for k, v in d.__dict__.items() if d.holdout_salt or not k.startswith("holdout")}
            for d in ds
        ],
        "layers": [lay.__dict__ for lay in ls],
        "experiments": [_experiment_json(e) for e in es],
    }
    if holdouts:
        content["holdouts"] = [holdout_record(h) for h in holdouts]
    version = hashlib.sha256(canonical_json(content).encode()).hexdigest()[:16]
    return Definitions(ds, ls, tuple(es), version, holdouts)


def _holdout(m: DomainModel, defs: Definitions) -> Holdout | None:
    """The comparison of domain ``m``'s holdout (None: no window given, exclusion only), on the
    primary metrics of every experiment in the domain or its nested domains (first by id)."""
    h = m.holdout
    if h is None or h.start_date is None or h.end_date is None:
        return None
    assert h.holdout_vid is not None  # validated: all four given together
    assert h.rest_vid is not None
    metrics: dict[str, Metric] = {}
    for e in defs.experiments:
        if m.id in [d.id for d in defs.domain_chain(defs.layer(e.layer).domain)]:
            for x in e.metrics:
                if x.role == "primary":
                    metrics.setdefault(x.id, x)
    return Holdout(
        m.id,
        f"holdout_{m.id}",
        h.salt,
        round(h.percent * SLOTS / 100),
        h.unit_type,
        h.start_date,
        h.end_date,
        h.holdout_vid,
        h.rest_vid,
        tuple(metrics.values()),
    )


def holdout_variants(h: Holdout) -> list[dict[str, Any]]:
    """The comparison's ``variants`` (as :func:`variants_json`): the holdout (control, its
    slots of the holdout split) and the rest of the domain."""
    return [
        {
            "vid": h.holdout_vid,
            "name": "holdout",
            "is_control": True,
            "weight": float(h.slots),
            "start": 0,
            "end": h.slots,
            "params": {},
        },
        {
            "vid": h.rest_vid,
            "name": "rest",
            "is_control": False,
            "weight": float(SLOTS - h.slots),
            "start": h.slots,
            "end": SLOTS,
            "params": {},
        },
    ]


def holdout_record(h: Holdout) -> dict[str, Any]:
    """What the ``experiments`` table stores of a holdout comparison (status ``holdout``: never
    published to the lookup table) besides the definitions version."""
    return {
        "experiment_id": h.experiment_id,
        "name": f"Holdout of domain {h.domain}",
        "owner": "strata",
        "description": f"{h.slots / SLOTS:.2%} of domain {h.domain!r} in none of its experiments "
        "(control) vs everyone else in the domain, on its experiments' primary metrics",
        "layer_id": "",
        "domain_id": h.domain,
        "unit_type": h.unit_type,
        "status": "holdout",
        "start_date": h.start_date.isoformat(),
        "end_date": h.end_date.isoformat(),
        "variants": holdout_variants(h),
        "metrics": [x.as_json() for x in h.metrics],
    }


def _ramp_step(m: ExperimentModel, step: RampStepModel) -> RampStep:
    slots = step.slots or m.slots
    assert slots is not None  # validated: a ramp needs weighted variants
    weights = [step.weights[v.name] for v in m.variants]
    ranges = _weighted_ranges(*slots, weights)
    return RampStep(
        step.date,
        tuple(
            VariantDefinition(v.vid, v.name, v.is_control, w, start, end, v.params)
            for v, w, (start, end) in zip(m.variants, weights, ranges, strict=True)
        ),
    )


def ramp_json(e: ExperimentDefinition) -> list[dict[str, Any]]:
    """The ``experiments.ramp`` column content: per step its date and ``{vid, weight, start,
    end}`` per variant (empty without a ramp)."""
    return [
        {
            "date": step.date.isoformat(),
            "variants": [
                {"vid": v.vid, "weight": v.weight, "start": v.start, "end": v.end}
                for v in step.variants
            ],
        }
        for step in e.ramp
    ]


def _experiment_json(e: ExperimentDefinition) -> dict[str, Any]:
    extra: dict[str, Any] = {}  # only when set: definitions without them keep their version
    if e.sticky:
        extra["sticky"] = True
    if e.ramp:
        extra["ramp"] = ramp_json(e)
    if e.shipped_vid is not None:
        extra["shipped_vid"] = e.shipped_vid
    return extra | {
        "id": e.id,
        "name": e.name,
        "owner": e.owner,
        "description": e.description,
        "layer": e.layer,
        "status": e.status,
        "start_date": e.start_date.isoformat(),
        "end_date": e.end_date.isoformat(),
        "platforms": list(e.platforms),
        "key": e.key,
        "targeting": e.targeting_json,
        "variants": variants_json(e),
        "metrics": metrics_json(e),
    }


def variants_json(e: ExperimentDefinition) -> list[dict[str, Any]]:
    """The ``experiments.variants`` column content: {vid, name, is_control, weight, start, ...}."""
    return [
        {
            "vid": v.vid,
            "name": v.name,
            "is_control": v.is_control,
            "weight": v.weight,
            "start": v.start,
            "end": v.end,
            "params": v.params,
        }
        for v in e.variants
    ]


def metrics_json(e: ExperimentDefinition) -> list[dict[str, Any]]:
    """The ``experiments.metrics`` column content: ep-stats keys plus Strata's options when set."""
    return [m.as_json() for m in e.metrics]


def bundled_path() -> Path:
    """The example definitions shipped in ``include/definitions``."""
    return Path(__file__).resolve().parents[1] / "definitions"


# --- plan: a dry-run traffic table ------------------------------------------------------------


def domain_share(defs: Definitions, domain_id: str) -> float:
    """Share of all traffic that reaches ``domain_id`` (product of nested shares)."""
    share = 1.0
    for d in defs.domain_chain(domain_id):
        share *= (d.end - d.start) / SLOTS
    return share


def plan_rows(defs: Definitions) -> list[dict[str, Any]]:
    """One row per variant and one ``(free)`` row per layer: shares of layer and of all traffic."""
    rows = []
    for lay in sorted(defs.layers, key=lambda x: (x.domain, x.priority, x.id)):
        dshare = domain_share(defs, lay.domain)
        used = 0
        for e in sorted(defs.layer_experiments(lay.id), key=lambda x: x.variants[0].start):
            for v in e.variants:
                size = v.end - v.start
                used += size
                rows.append(
                    {
                        "domain": lay.domain,
                        "layer": lay.id,
                        "unit_type": lay.unit_type,
                        "experiment": e.id,
                        "status": e.status,
                        "variant": f"{v.name}{' (control)' if v.is_control else ''}",
                        "vid": v.vid,
                        "slots": f"[{v.start}, {v.end})",
                        "of_layer": size / SLOTS,
                        "of_traffic": size / SLOTS * dshare,
                        "targeted": e.targeting is not None,
                    }
                )
        rows.append(
            {
                "domain": lay.domain,
                "layer": lay.id,
                "unit_type": lay.unit_type,
                "experiment": "(free)",
                "status": "",
                "variant": "",
                "vid": None,
                "slots": f"{SLOTS - used} slots",
                "of_layer": (SLOTS - used) / SLOTS,
                "of_traffic": (SLOTS - used) / SLOTS * dshare,
                "targeted": False,
            }
        )
    return rows


def format_plan(defs: Definitions) -> str:
    """The plan as a text table (``strata plan PATH``)."""
    from tabulate import tabulate

    lines = [f"definitions version {defs.version}", "", "Domains:"]
    dom_rows = [
        [
            d.id,
            d.parent,
            d.kind,
            d.salt,
            f"[{d.start}, {d.end})",
            f"{domain_share(defs, d.id):.2%}",
        ]
        for d in defs.domains
    ]
    lines.append(
        tabulate(dom_rows, headers=["domain", "parent", "kind", "salt", "slots", "of traffic"])
    )
    lines += ["", "Layers, experiments and variants:"]
    rows = [
        [
            r["domain"],
            r["layer"],
            r["unit_type"],
            r["experiment"],
            r["status"],
            r["variant"],
            r["vid"] if r["vid"] is not None else "",
            r["slots"],
            f"{r['of_layer']:.2%}",
            f"{r['of_traffic']:.2%}",
            "yes" if r["targeted"] else "",
        ]
        for r in plan_rows(defs)
    ]
    headers = ["domain", "layer", "unit", "experiment", "status", "variant", "vid", "slots"]
    headers += ["of layer", "of traffic", "targeting"]
    lines.append(tabulate(rows, headers=headers))
    lines.append("")
    lines.append("(of traffic: before targeting; targeting only narrows it)")
    return "\n".join(lines)
