"""What the synthetic data generator plants: parameters, true effects and mess rates.

This module is the ground truth the later stages are checked against: the demo's evaluation must
find every effect listed in :data:`PLANTED_EFFECTS` (and nothing on the A/A experiment), and the
events pipeline must quarantine and count the mess at the rates below. The Spark code that uses it
lives in ``spark_jobs/generate_synthetic.py``.

A planted effect acts on the units whose slot in a layer (same formula as assignment:
``floor_mod(int64(xxh64(salt + ":" + unit_id, seed=42)), 10000)``) falls in ``[slot_start,
slot_end)``, from ``from_day`` (days after the start date) on, so the days before are a clean
pre-period for CUPED. An effect with a ``segment`` acts only on the units of that segment (the
segment effect the heterogeneity test must find: :data:`PLANTED_SEGMENT_EFFECT`).

The heavy-tail case (:data:`HEAVY_TAIL`) is what capping is checked on: purchase amounts are
lognormal, so a few users' revenue is far above the rest; the A/A experiment ``price_display``
evaluates revenue per user raw and capped at the buyers' 99th percentile, and capping must lower
the variance and still find nothing.

Usage:
    >>> effect = PLANTED_EFFECTS[0]
    >>> effect.experiment_id, effect.goal, effect.multiplier
    ('checkout_button', 'purchase', 1.15)
    >>> HEAVY_TAIL.experiment_id, HEAVY_TAIL.capped_metric, HEAVY_TAIL.goal
    ('price_display', 'revenue_capped', 'purchase')
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Literal

from strata.contracts import Goal, goal_names, goals

#: The goals of the catalogue (strata/goals.yaml, or $STRATA_GOALS_FILE) when this was imported.
EVENT_NAMES = goal_names()
#: The goals the built-in session funnel of spark_jobs/generate_synthetic.py produces.
FUNNEL_GOALS = ("session_start", "click", "add_to_cart", "purchase")
PLATFORMS = ("ios", "android", "web")
COUNTRIES = ("US", "GB", "DE", "FR", "IN", "BR", "JP", "CZ")
ORG_PLANS = ("free", "pro", "enterprise")

DEFAULT_START_DATE = dt.date(2026, 11, 1)
DEFAULT_USERS = 100_000
DEFAULT_DAYS = 14
DEFAULT_SEED = 7


@dataclass(frozen=True)
class PlantedEffect:
    """A true treatment effect: ``goal`` rate (or purchase value) times ``multiplier``."""

    experiment_id: str
    salt: str
    unit_type: Literal["user_id", "device_id"]
    slot_start: int
    slot_end: int
    #: A funnel goal, ``purchase_value``, or a rate goal of the catalogue (``synthetic: {rate}``).
    goal: str
    multiplier: float
    from_day: int = 7
    #: ``(dimension, value)``: only units in that segment (the generator knows ``country``).
    segment: tuple[str, str] | None = None
    #: The treatment variant the slot range belongs to (the demo's results name it).
    variant: int | None = None


#: The experiments of the bundled example definitions use these salts and ranges.
#: ``price_display`` is an A/A experiment: its treatment range exists but carries no effect.
PLANTED_EFFECTS: tuple[PlantedEffect, ...] = (
    PlantedEffect("checkout_button", "checkout-2026", "user_id", 5000, 10000, "purchase", 1.15),
    PlantedEffect("feed_ranking", "ranking-2026", "device_id", 3000, 6000, "click", 1.08),
    PlantedEffect("upsell_banner", "upsell-2026", "user_id", 5000, 10000, "purchase_value", 1.10),
)
#: The one segment-only effect: onboarding_tour's short tour (vid 5002, slots [5000, 7500) of
#: ``onboarding-2026``) raises invites ×1.5 for German users and nowhere else. Its metric
#: ``invites`` must be flagged as heterogeneous by country, segment DE, and nothing else anywhere.
PLANTED_SEGMENT_EFFECT = PlantedEffect(
    "onboarding_tour", "onboarding-2026", "user_id", 5000, 7500, "invite", 1.5,
    segment=("country", "DE"), variant=5002,
)  # fmt: skip
#: Every effect the generator plants.
ALL_PLANTED_EFFECTS: tuple[PlantedEffect, ...] = (*PLANTED_EFFECTS, PLANTED_SEGMENT_EFFECT)
#: What the generator can condition a segment effect on (columns of its device-day rows).
GENERATOR_SEGMENTS = ("country", "platform")


#: A purchase's amount: exp(mu + sigma * N(0, 1)), drawn per session (mean ~ 45.6; per user, the
#: sum over the purchases of a week has a long right tail).
PURCHASE_VALUE_MU = 3.5
PURCHASE_VALUE_SIGMA = 0.8


@dataclass(frozen=True)
class HeavyTailCase:
    """A heavy-tailed per-unit value evaluated raw and capped (winsorized) in an A/A experiment:
    the capped metric's variance must be lower and its decision still inconclusive."""

    experiment_id: str
    goal: str
    raw_metric: str
    capped_metric: str


#: The bundled definitions' price_display carries both metrics (include/definitions/more.yaml).
HEAVY_TAIL = HeavyTailCase("price_display", "purchase", "revenue", "revenue_capped")


@dataclass(frozen=True)
class MessRates:
    """Shares of raw event rows that are deliberately wrong, as real landing data is."""

    duplicate: float = 0.01  # same event id delivered again (client retry)
    late: float = 0.02  # arrives 1-72 hours after it happened
    unknown_unit: float = 0.005  # device id not in the devices table
    malformed: float = 0.003  # null id / unknown name / negative value / future time


def rate_goals(catalogue: tuple[Goal, ...] | None = None) -> tuple[tuple[str, float], ...]:
    """``(name, per-session probability)`` of the catalogue's goals declared ``{rate: p}``.

    The funnel goals are generated by the funnel; a goal marked ``funnel`` must be one of them.
    """
    catalogue = goals() if catalogue is None else catalogue
    odd = [g.name for g in catalogue if g.synthetic == "funnel" and g.name not in FUNNEL_GOALS]
    if odd:
        raise ValueError(
            f"goal(s) {odd} are marked `synthetic: funnel`, but the generator's funnel makes only "
            f"{', '.join(FUNNEL_GOALS)}: declare them `synthetic: {{rate: p}}` instead"
        )
    return tuple((g.name, g.synthetic_rate) for g in catalogue if g.synthetic_rate is not None)


@dataclass(frozen=True)
class GeneratorConfig:
    """Parameters of one generation run; the same config and seed give the same rows."""

    users: int = DEFAULT_USERS
    days: int = DEFAULT_DAYS
    seed: int = DEFAULT_SEED
    start_date: dt.date = DEFAULT_START_DATE
    users_per_org: int = 20
    daily_active_rate: float = 0.07  # per device and day, before the user's activity factor
    clicks_per_session: float = 3.0
    add_to_cart_rate: float = 0.25  # per session
    purchase_rate: float = 0.30  # per add_to_cart session
    effects: tuple[PlantedEffect, ...] = ALL_PLANTED_EFFECTS
    mess: MessRates = field(default_factory=MessRates)
    #: Goals of the catalogue beyond the funnel: ``(name, per-session probability)``.
    extra_goals: tuple[tuple[str, float], ...] = field(default_factory=rate_goals)

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError(f"users must be >= 1, got {self.users}")
        if self.days < 1:
            raise ValueError(f"days must be >= 1, got {self.days}")
        for e in self.effects:
            if e.segment is not None and e.segment[0] not in GENERATOR_SEGMENTS:
                raise ValueError(
                    f"planted effect of {e.experiment_id}: the generator plants segment effects "
                    f"by {', '.join(GENERATOR_SEGMENTS)}, not {e.segment[0]!r}"
                )

    @property
    def orgs(self) -> int:
        return max(1, self.users // self.users_per_org)

    def as_properties(self) -> dict[str, str]:
        """Recorded as Iceberg table properties so every table says how it was made."""
        return {
            "strata.generator.users": str(self.users),
            "strata.generator.days": str(self.days),
            "strata.generator.seed": str(self.seed),
            "strata.generator.start-date": self.start_date.isoformat(),
        }
