"""What the synthetic data generator plants: parameters, true effects and mess rates.

This module is the ground truth the later stages are checked against: the demo's evaluation must
find every effect listed in :data:`PLANTED_EFFECTS` (and nothing on the A/A experiment), and the
events pipeline must quarantine and count the mess at the rates below. The Spark code that uses it
lives in ``spark_jobs/generate_synthetic.py``.

A planted effect acts on the units whose slot in a layer (same formula as assignment:
``floor_mod(int64(xxh64(salt + ":" + unit_id, seed=42)), 10000)``) falls in ``[slot_start,
slot_end)``, from ``from_day`` (days after the start date) on, so the days before are a clean
pre-period for CUPED.

Usage:
    >>> effect = PLANTED_EFFECTS[0]
    >>> effect.experiment_id, effect.goal, effect.multiplier
    ('checkout_button', 'purchase', 1.15)
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Literal

EVENT_NAMES = ("session_start", "click", "add_to_cart", "purchase")
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
    goal: Literal["click", "add_to_cart", "purchase", "purchase_value"]
    multiplier: float
    from_day: int = 7


#: The experiments of the bundled example definitions use these salts and ranges.
#: ``price_display`` is an A/A experiment: its treatment range exists but carries no effect.
PLANTED_EFFECTS: tuple[PlantedEffect, ...] = (
    PlantedEffect("checkout_button", "checkout-2026", "user_id", 5000, 10000, "purchase", 1.15),
    PlantedEffect("feed_ranking", "ranking-2026", "device_id", 3000, 6000, "click", 1.08),
    PlantedEffect("upsell_banner", "upsell-2026", "user_id", 5000, 10000, "purchase_value", 1.10),
)


@dataclass(frozen=True)
class MessRates:
    """Shares of raw event rows that are deliberately wrong, as real landing data is."""

    duplicate: float = 0.01  # same event id delivered again (client retry)
    late: float = 0.02  # arrives 1-72 hours after it happened
    unknown_unit: float = 0.005  # device id not in the devices table
    malformed: float = 0.003  # null id / unknown name / negative value / future time


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
    effects: tuple[PlantedEffect, ...] = PLANTED_EFFECTS
    mess: MessRates = field(default_factory=MessRates)

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError(f"users must be >= 1, got {self.users}")
        if self.days < 1:
            raise ValueError(f"days must be >= 1, got {self.days}")

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
