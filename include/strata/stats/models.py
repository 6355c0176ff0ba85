"""Experiment designs and evaluation settings: pydantic at the edge, frozen dataclasses inside.

The shared contract (experiments dimension table): an experiment has ``experiment_id``,
``variants`` (list of ``{vid, name, is_control, weight, ...}``) and ``metrics`` (list of
``{id, name, nominator, denominator, role}``, ep-stats field names). Strata reads three optional
metric keys on top: ``covariate`` (a CUPED pre-period expression), ``direction`` (``increase`` |
``decrease``: which sign is a win), ``minimum_effect`` (relative MDE of interest for power) and,
on guardrails only, ``margin`` (relative non-inferiority margin, :mod:`strata.stats.recommend`).
Variants and metrics may arrive as JSON strings, as they are stored in Iceberg.

Usage:
    >>> exp = experiment_from_record({
    ...     "experiment_id": "e1",
    ...     "variants": '[{"vid": 2, "name": "B", "is_control": false, "weight": 1},'
    ...                 ' {"vid": 1, "name": "A", "is_control": true, "weight": 1}]',
    ...     "metrics": [{"id": 1, "name": "CTR", "nominator": "count(user.unit.click)",
    ...                  "denominator": "count(user.global.exposure)", "role": "primary"}],
    ... })
    >>> exp.control.vid, [v.vid for v in exp.variants], exp.metrics[0].role
    (1, [2, 1], 'primary')
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from strata.metrics import Cap, Direction, ExpressionError, Metric, Role, parse_linear
from strata.stats.errors import DesignError

DEFAULT_ALPHA = 0.05
DEFAULT_SRM_ALPHA = 0.001
DEFAULT_POWER = 0.8
DEFAULT_EXPOSURE_GOAL = "exposure"

Correction = Literal["holm", "bh", "bonferroni", "none"]


@dataclass(frozen=True)
class VariantDesign:
    """A variant as the engine sees it: seed 002 ``vid`` (an int) and its allocation weight."""

    vid: int
    name: str
    is_control: bool
    weight: float


@dataclass(frozen=True)
class ExperimentDesign:
    """What the engine evaluates: an experiments-table row (written from an
    :class:`strata.definitions.ExperimentDefinition`) read back and validated."""

    experiment_id: str
    variants: tuple[VariantDesign, ...]
    metrics: tuple[Metric, ...]
    start_date: date | None = None
    end_date: date | None = None
    #: Allocation shares per ramp period (rows: period 0 = the variants' weights, then each ramp
    #: step; columns: ``variants`` in order, each row summing to 1); empty without a ramp.
    periods: tuple[tuple[float, ...], ...] = ()

    @property
    def control(self) -> VariantDesign:
        return next(v for v in self.variants if v.is_control)

    @property
    def planned_days(self) -> int | None:
        if self.start_date is None or self.end_date is None:
            return None
        return (self.end_date - self.start_date).days + 1


@dataclass(frozen=True)
class EvaluationConfig:
    """How to test. ``correction_scope``: ``variants`` (per metric, across treatment variants, the
    ep-stats family) or ``metrics`` (per experiment, across all metrics × treatment variants).

    The Bayesian view (:mod:`strata.stats.bayes`): ``bayes_scale`` is the effect it is computed
    on (``relative`` lift or ``absolute`` difference); the prior on the effect is flat (improper)
    when ``bayes_prior_sd`` is None (the default), else ``N(bayes_prior_mean, bayes_prior_sd²)`` on
    the relative lift (e.g. ``bayes_prior_sd=0.3``, GrowthBook's proper prior)."""

    alpha: float = DEFAULT_ALPHA
    srm_alpha: float = DEFAULT_SRM_ALPHA
    correction: Correction = "holm"
    correction_scope: Literal["variants", "metrics"] = "variants"
    sequential: bool = True
    cuped: bool = True
    power: float = DEFAULT_POWER
    exposure_goal: str = DEFAULT_EXPOSURE_GOAL
    bayes_scale: Literal["relative", "absolute"] = "relative"
    bayes_prior_mean: float = 0.0
    bayes_prior_sd: float | None = None

    def __post_init__(self) -> None:
        self._check_bayes()
        for name in ("alpha", "srm_alpha", "power"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise DesignError(f"EvaluationConfig.{name} must be in (0, 1), got {value!r}")
        if self.correction not in ("holm", "bh", "bonferroni", "none"):
            raise DesignError(
                f"EvaluationConfig.correction must be holm|bh|bonferroni|none: {self.correction!r}"
            )
        if self.correction_scope not in ("variants", "metrics"):
            raise DesignError(
                f"EvaluationConfig.correction_scope invalid: {self.correction_scope!r}"
            )

    def _check_bayes(self) -> None:
        """A proper prior is on the relative lift: one prior sd cannot fit every metric's units."""
        if self.bayes_scale not in ("relative", "absolute"):
            raise DesignError(
                f"EvaluationConfig.bayes_scale must be relative|absolute: {self.bayes_scale!r}"
            )
        sd = self.bayes_prior_sd
        if sd is not None and not (sd > 0 and sd < float("inf")):
            raise DesignError(f"EvaluationConfig.bayes_prior_sd must be positive, got {sd!r}")
        if sd is not None and self.bayes_scale == "absolute":
            raise DesignError(
                "EvaluationConfig: a proper prior (bayes_prior_sd) is on the relative lift; "
                "use bayes_scale='relative' or a flat prior"
            )
        if not abs(self.bayes_prior_mean) < float("inf"):
            raise DesignError("EvaluationConfig.bayes_prior_mean must be finite")


# --- edge: pydantic models validating the shared contract ------------------------------------


class _VariantIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    vid: int
    name: str = ""
    is_control: bool = False
    weight: float = Field(ge=0.0)

    @model_validator(mode="before")
    @classmethod
    def _weight_from_slots(cls, data: Any) -> Any:
        """Variants given as slot ranges [start, end) carry their allocation in the range."""
        if isinstance(data, dict) and data.get("weight") is None:
            start, end = data.get("start"), data.get("end")
            if start is not None and end is not None:
                return {**data, "weight": float(end) - float(start)}
        return data


class _MetricIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    name: str
    nominator: str
    denominator: str
    role: Role = "secondary"
    direction: Direction = "increase"
    covariate: str | None = None
    minimum_effect: float | None = Field(default=None, gt=0.0)
    margin: float | None = Field(default=None, gt=0.0)
    cap: dict[str, Any] | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _str_id(cls, v: Any) -> str:
        return str(v)


class _ExperimentIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    experiment_id: str
    variants: list[_VariantIn]
    metrics: list[_MetricIn]
    start_date: date | None = None
    end_date: date | None = None

    @field_validator("variants", "metrics", mode="before")
    @classmethod
    def _json(cls, v: Any) -> Any:
        return json.loads(v) if isinstance(v, str) else v


def experiment_from_record(record: Mapping[str, Any]) -> ExperimentDesign:
    """Validate one experiments-table row (or an equivalent dict) into an :class:`ExperimentDesign`.

    Raises :class:`DesignError` naming the experiment and the problem: no or several controls,
    duplicate variant or metric ids, all-zero weights, unparsable metric expressions.
    """
    name = record.get("experiment_id", "<missing experiment_id>")
    try:
        spec = _ExperimentIn.model_validate(dict(record))
    except (ValidationError, json.JSONDecodeError) as exc:
        raise DesignError(f"experiment {name!r}: invalid definition: {exc}") from exc
    variants = tuple(
        VariantDesign(v.vid, v.name or str(v.vid), v.is_control, v.weight) for v in spec.variants
    )
    controls = [v.vid for v in variants if v.is_control]
    if len(controls) != 1:
        raise DesignError(
            f"experiment {name!r}: exactly one control variant needed, got {controls}"
        )
    if len(variants) < 2:
        raise DesignError(f"experiment {name!r}: at least two variants needed")
    _unique(name, "variant vid", [v.vid for v in variants])
    if sum(v.weight for v in variants) <= 0:
        raise DesignError(f"experiment {name!r}: variant weights sum to zero")
    metrics = tuple(
        Metric(
            m.id,
            m.name,
            m.nominator,
            m.denominator,
            m.role,
            m.direction,
            m.covariate,
            m.minimum_effect,
            m.margin,
            _cap(name, m),
        )
        for m in spec.metrics
    )
    _unique(name, "metric id", [m.id for m in metrics])
    for m in metrics:
        if m.margin is not None and m.role != "guardrail":
            raise DesignError(
                f"experiment {name!r}, metric {m.id!r}: margin is only for guardrail metrics "
                f"(role is {m.role!r})"
            )
    for m in metrics:
        for side in ("nominator", "denominator", "covariate"):
            text = getattr(m, side)
            if text is None:
                continue
            try:
                parse_linear(text)
            except ExpressionError as exc:
                raise DesignError(f"experiment {name!r}, metric {m.id!r} {side}: {exc}") from exc
    return ExperimentDesign(
        spec.experiment_id,
        variants,
        metrics,
        spec.start_date,
        spec.end_date,
        _periods(name, variants, record.get("ramp")),
    )


def _periods(
    experiment: str, variants: tuple[VariantDesign, ...], raw: Any
) -> tuple[tuple[float, ...], ...]:
    """Shares per ramp period from the ``experiments`` table's ``ramp`` JSON (a list of steps,
    each ``{date, variants: [{vid, weight, ...}]}``); empty when there is no ramp."""
    if raw is None or (isinstance(raw, float) and raw != raw):  # null / NaN from pandas
        return ()
    try:
        steps = json.loads(raw) if isinstance(raw, str) else raw
        if not steps:
            return ()
        rows = [[v.weight for v in variants]]
        for step in steps:
            by_vid = {int(v["vid"]): float(v["weight"]) for v in step["variants"]}
            rows.append([by_vid.get(v.vid, 0.0) for v in variants])
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise DesignError(f"experiment {experiment!r}: unreadable ramp {raw!r}: {exc}") from exc
    if any(sum(r) <= 0 for r in rows):
        raise DesignError(f"experiment {experiment!r}: a ramp period's weights sum to zero")
    return tuple(tuple(w / sum(r) for w in r) for r in rows)


def _cap(experiment: str, m: _MetricIn) -> Cap | None:
    if m.cap is None:
        return None
    try:
        return Cap.from_json(m.cap)
    except ExpressionError as exc:
        raise DesignError(f"experiment {experiment!r}, metric {m.id!r}: {exc}") from exc


def experiments_from_records(records: Sequence[Mapping[str, Any]]) -> list[ExperimentDesign]:
    """Validate many rows; experiment ids must be unique."""
    out = [experiment_from_record(r) for r in records]
    _unique("<all>", "experiment_id", [e.experiment_id for e in out])
    return out


def _unique(exp: str, what: str, values: Sequence[Any]) -> None:
    dup = sorted(v for v, n in Counter(values).items() if n > 1)
    if dup:
        raise DesignError(f"experiment {exp!r}: duplicate {what}: {dup}")
