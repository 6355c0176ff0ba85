"""Layered assignment, the pure-Python reference (the Spark job must agree with it on every unit).

For one unit (its type, id and targeting context):

1. **Domains first** (seed 003): a layer is reachable only when the unit is in every domain on the
   path from ``global`` to the layer's domain (``slot(domain.salt, unit_id)`` in the domain's
   slots). Domain membership is hashed on the unit id of the layer's own unit type.
2. **Each layer independently**: ``slot(layer.salt, unit_id)`` picks at most one variant — the one
   whose ``[start, end)`` holds the slot, of a *running* experiment *inside its window* on the
   day ``as_of`` (``start_date <= as_of <= end_date``, both inclusive, UTC; default today UTC)
   whose targeting rule matches the context. A unit in an experiment's range that the rule does
   not match is in no experiment of that layer (slots never fall through to another experiment).
3. **Parameters** (seed 002): per service, the params of the unit's variants in layers scoped to
   that service (or to every service) are deep-merged in layer order — ascending ``priority``, then
   layer id — so on a conflict the **higher priority wins**. This answers seed 004's open question
   on priority order. Nested mappings merge key by key; any other value (lists included) replaces.

Usage:
    >>> from strata.definitions import bundled_path, load
    >>> defs = load(bundled_path())
    >>> ctx = {"age": 30, "country": "US", "is_premium": False, "org_plan": "free",
    ...        "org_seats": 10}
    >>> day = dt.date(2026, 11, 8)  # the demo's first day: every running experiment is live
    >>> rows = assign_unit(defs, "user_id", "u00000042", ctx, as_of=day)
    >>> [(r.experiment_id, r.variant_name) for r in rows]  # doctest: +NORMALIZE_WHITESPACE
    [('checkout_button', 'treatment'), ('onboarding_tour', 'control'),
     ('upsell_banner', 'treatment')]
    >>> view = service_view(rows, ["checkout"])["checkout"]
    >>> view["parameters"]["button"], view["vids"], view["matched_layers"]
    ({'text': 'Buy now', 'color': 'green'}, [2002, 1002], ['upsell', 'checkout'])
    >>> [r.experiment_id for r in assign_unit(defs, "user_id", "u00000042", ctx,
    ...                                       as_of=dt.date(2026, 11, 20))]  # two have ended
    ['onboarding_tour']
    >>> deep_merge({"a": {"x": 1, "y": 2}}, {"a": {"y": 3}, "b": [1]})
    {'a': {'x': 1, 'y': 3}, 'b': [1]}
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import secrets
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from strata.bucketing import SLOTS, slot
from strata.contracts import (
    PER_REQUEST_UNIT_TYPES,
    REGION_OF_COUNTRY,
    REQUEST_FIELDS,
    SHIPPED,
    SHIPPED_ROW_PREFIX,
    shipped_row_id,
    utc_today,
)
from strata.keyspace import normalize_url
from strata.rules import evaluate, fields

#: ``slot_of(salt, unit_id)``: where a unit falls in a domain's or layer's split.
SlotOf = Callable[[str, str], int]

if TYPE_CHECKING:
    from strata.definitions import (
        Definitions,
        ExperimentDefinition,
        Layer,
        VariantDefinition,
    )


@dataclass(frozen=True)
class Assignment:
    """One row of the ``assignments`` table (without the run columns)."""

    unit_type: str
    unit_id: str
    experiment_id: str
    variant_id: int
    variant_name: str
    is_control: bool
    layer_id: str
    domain_id: str
    layer_priority: int
    service: str | None
    slot: int
    params: str  # canonical JSON
    #: The day the unit got this variant (kept across runs while it keeps it), and the ramp
    #: period in effect that day (its cohort: :meth:`ExperimentDefinition.period`).
    first_assigned_date: dt.date | None = None
    ramp_period: int = 0

    def key(self) -> tuple[Any, ...]:
        return tuple(self.__dict__.values())


@dataclass(frozen=True)
class Previous:
    """A unit's row for one experiment in the previous ``assignments`` snapshot (what sticky
    assignment and ``first_assigned_date`` read). ``first_assigned_date`` is None for rows
    written before the column existed (read as the experiment's ``start_date``)."""

    variant_id: int
    slot: int
    first_assigned_date: dt.date | None = None


def in_domain(defs: Definitions, domain_id: str, unit_id: str, slot_of: SlotOf = slot) -> bool:
    """Is the unit inside ``domain_id`` (and every domain enclosing it)?"""
    return all(d.start <= slot_of(d.salt, unit_id) < d.end for d in defs.domain_chain(domain_id))


def held_out(defs: Definitions, domain_id: str, unit_id: str, slot_of: SlotOf = slot) -> bool:
    """Is the unit in the holdout of ``domain_id`` or of a domain enclosing it? Then it is in no
    experiment of the domain: ``slot(holdout salt, unit_id) < holdout slots`` (percent x 100)."""
    return any(
        d.holdout_salt is not None and slot_of(d.holdout_salt, unit_id) < d.holdout_slots
        for d in defs.domain_chain(domain_id)
    )


def holdout_assignments(
    defs: Definitions, unit_type: str, unit_id: str, *, as_of: dt.date | None = None
) -> list[Assignment]:
    """The unit's rows of the domain holdouts' comparisons on ``as_of`` (default today UTC):
    for each holdout with a comparison window holding the day, of the unit's type, whose domain
    the unit is in (and not held out by an enclosing domain), a row of the pseudo-experiment
    ``holdout_<domain>``: variant ``holdout`` (the control) or ``rest``. Batch only: these rows
    are written to ``assignments``, never served (status ``holdout``)."""
    day = as_of or utc_today()
    out = []
    for h in defs.holdouts:
        if h.unit_type != unit_type or h.window(day) is not None:
            continue
        if not in_domain(defs, h.domain, unit_id) or held_out(
            defs, defs.domain(h.domain).parent, unit_id
        ):
            continue
        s = slot(h.salt, unit_id)
        held = s < h.slots
        out.append(
            Assignment(
                unit_type,
                unit_id,
                h.experiment_id,
                h.holdout_vid if held else h.rest_vid,
                "holdout" if held else "rest",
                held,
                "",
                h.domain,
                0,
                None,
                s,
                "{}",
                day,
                0,
            )
        )
    return out


def assign_layer(
    defs: Definitions,
    layer: Layer,
    unit_id: str,
    context: Mapping[str, Any],
    *,
    as_of: dt.date | None = None,
    only: Collection[str] | None = None,
    slot_of: SlotOf = slot,
    previous: Mapping[str, Previous] | None = None,
) -> Assignment | None:
    """The unit's variant in one layer on the day ``as_of`` (default today UTC), or None.

    ``only`` restricts the experiments considered (the others' slots then give None);
    ``slot_of`` replaces the slot formula (:func:`assign_random` draws instead).
    ``previous``: the unit's rows of the previous snapshot by experiment id. A unit keeps
    its previous variant (and slot) of a *sticky* experiment that is assigned on the day, still
    has that variant and whose targeting still matches (re-checked; the domain too), whatever
    today's ranges say; it is then in no other experiment of the layer. Otherwise the slot
    picks the variant in the ranges of the day (:meth:`ExperimentDefinition.variants_on`).
    """
    if not in_domain(defs, layer.domain, unit_id, slot_of) or held_out(
        defs, layer.domain, unit_id, slot_of
    ):
        return None
    day = as_of or utc_today()
    previous = previous or {}
    experiments = [
        e
        for e in defs.layer_experiments(layer.id)
        if e.assigned_on(day) and (only is None or e.id in only)
    ]

    def row(e: ExperimentDefinition, v: VariantDefinition, s: int, first: dt.date) -> Assignment:
        return Assignment(
            layer.unit_type,
            unit_id,
            e.id,
            v.vid,
            v.name,
            v.is_control,
            layer.id,
            layer.domain,
            layer.priority,
            layer.service,
            s,
            v.params_json,
            first,
            e.period(first),
        )

    for e in experiments:  # sticky: the previous variant wins over today's ranges
        prev = previous.get(e.id)
        if not e.sticky or prev is None:
            continue
        kept = next((v for v in e.variants_on(day) if v.vid == prev.variant_id), None)
        if kept is not None and evaluate(e.targeting, context):
            return row(e, kept, prev.slot, prev.first_assigned_date or e.start_date)
    s = slot_of(layer.salt, unit_id)
    for e in experiments:
        for v in e.variants_on(day):
            if v.start <= s < v.end:
                if not evaluate(e.targeting, context):
                    return None
                prev = previous.get(e.id)
                first = day
                if prev is not None and prev.variant_id == v.vid:
                    first = prev.first_assigned_date or e.start_date
                return row(e, v, s, first)
    return None


def shipped_assignments(
    defs: Definitions,
    unit_type: str,
    unit_id: str,
    context: Mapping[str, Any],
    *,
    as_of: dt.date | None = None,
) -> list[Assignment]:
    """The rows serving shipped experiments to this unit: one per shipped experiment of a layer
    hashing ``unit_type`` whose domains hold the unit and whose targeting matches it, whatever
    its slot and the day. Experiment id ``shipped:<id>`` (outside the experiment's analysis),
    the shipped variant, the launch layer's id and priority, the experiment layer's service;
    ``first_assigned_date`` the day ``as_of`` (default today UTC), ramp period 0."""
    day = as_of or utc_today()
    launch = next((lay for lay in defs.layers if lay.launch), None)
    out = []
    for e in defs.experiments:
        layer = defs.layer(e.layer)
        v = e.shipped_variant
        if e.status != SHIPPED or launch is None or v is None or layer.unit_type != unit_type:
            continue
        if in_domain(defs, layer.domain, unit_id) and evaluate(e.targeting, context):
            out.append(
                Assignment(
                    unit_type,
                    unit_id,
                    shipped_row_id(e.id),
                    v.vid,
                    v.name,
                    v.is_control,
                    launch.id,
                    layer.domain,
                    launch.priority,
                    layer.service,
                    slot(layer.salt, unit_id),
                    v.params_json,
                    day,
                    0,
                )
            )
    return out


def assign_unit(
    defs: Definitions,
    unit_type: str,
    unit_id: str,
    context: Mapping[str, Any],
    *,
    as_of: dt.date | None = None,
    only: Collection[str] | None = None,
    previous: Mapping[str, Previous] | None = None,
) -> list[Assignment]:
    """Every experiment the unit is in on the day ``as_of`` (default today UTC), and the shipped
    experiments it is served (:func:`shipped_assignments`), by id (``only``: among these
    experiments; ``previous``: the unit's rows of the previous snapshot by experiment id, for
    sticky experiments, see :func:`assign_layer`). A url unit is hashed in its normal form
    (:func:`strata.keyspace.normalize_url`), which is also the context's ``url``. The rows a
    paused, stopped or shipped experiment keeps from earlier runs are history, not a function of
    the unit: the assignment job carries them over; they are never served."""
    if unit_id is None:
        raise ValueError(f"unit_id is None for unit type {unit_type!r}")
    if unit_type in PER_REQUEST_UNIT_TYPES:
        raise ValueError(f"{unit_type!r} layers have no unit: use assign_random")
    if unit_type == "url":  # the page is the unit: rules read it in the same normal form
        unit_id = normalize_url(unit_id)
        context = {**context, "url": unit_id}
    day = as_of or utc_today()
    rows = [
        a
        for layer in defs.layers
        if layer.unit_type == unit_type
        and (
            a := assign_layer(
                defs, layer, unit_id, context, as_of=day, only=only, previous=previous
            )
        )
        is not None
    ]
    rows += shipped_assignments(defs, unit_type, unit_id, context, as_of=day)
    return sorted(rows, key=lambda a: a.experiment_id)


def draw_slot(_salt: str = "", _unit_id: str = "") -> int:
    """A fresh uniform slot in ``[0, SLOTS)`` from the OS's CSPRNG (``secrets``): no hash, so two
    requests are independent draws."""
    return secrets.randbelow(SLOTS)


def assign_random(
    defs: Definitions,
    context: Mapping[str, Any],
    *,
    as_of: dt.date | None = None,
    slot_of: SlotOf = draw_slot,
) -> list[Assignment]:
    """Seed 003's ``random`` experiments for one request: every ``random`` layer (and every domain
    on its path) draws a fresh slot, then targeting and windows apply as for any unit. Served
    online only: the rows (``unit_id`` empty) are never written to the assignments or the lookup
    table, and such experiments are not analysable per unit. ``slot_of`` is for tests (a seeded
    draw); the default is :func:`draw_slot`."""
    day = as_of or utc_today()
    rows = [
        a
        for layer in defs.layers
        if layer.unit_type in PER_REQUEST_UNIT_TYPES
        and (a := assign_layer(defs, layer, "", context, as_of=day, slot_of=slot_of)) is not None
    ]
    return sorted(rows, key=lambda a: a.experiment_id)


def online_only(defs: Definitions, experiment_id: str) -> bool:
    """Is the experiment assigned online only, per request, never by the batch job? Its layer's
    unit type has no unit table (``url``, ``random``), or its targeting reads a field only a
    request carries (:data:`strata.contracts.REQUEST_FIELDS`: ``channel``, ``url``).

    Usage:
        >>> from strata.definitions import bundled_path, load
        >>> defs = load(bundled_path())
        >>> [e.id for e in defs.experiments if online_only(defs, e.id)]
        []
    """
    e = defs.experiment(experiment_id)
    if defs.layer(e.layer).unit_type in ("url", *PER_REQUEST_UNIT_TYPES):
        return True
    return e.targeting is not None and bool(fields(e.targeting) & set(REQUEST_FIELDS))


def online_experiments(defs: Definitions) -> frozenset[str]:
    """The ids of the experiments :func:`online_only` holds for."""
    return frozenset(e.id for e in defs.experiments if online_only(defs, e.id))


def targeting_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """A request context as targeting rules read it: ``url`` in its normal form, ``region``
    from ``country`` (:data:`strata.contracts.REGION_OF_COUNTRY`) when the context has none, the
    same derivation as the assignment job's unit contexts.

    Usage:
        >>> targeting_context({"country": "DE", "url": "HTTPS://Shop.example.com:443/cart#x"})
        {'country': 'DE', 'url': 'https://shop.example.com/cart', 'region': 'eu'}
    """
    out = dict(context)
    url = out.get("url")
    if isinstance(url, str) and url:
        out["url"] = normalize_url(url)
    country = out.get("country")
    if out.get("region") is None and isinstance(country, str) and country in REGION_OF_COUNTRY:
        out["region"] = REGION_OF_COUNTRY[country]
    return out


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge: mappings merge key by key, anything else in ``override`` replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merge_order(assignments: Iterable[Assignment]) -> list[Assignment]:
    """Seed 002's merge order: ascending layer priority, then layer id (later wins); in one layer
    a shipped experiment's row comes before the experiment's (which overrides it)."""
    return sorted(
        assignments,
        key=lambda a: (
            a.layer_priority,
            a.layer_id,
            not a.experiment_id.startswith(SHIPPED_ROW_PREFIX),
        ),
    )


@dataclass(frozen=True)
class Served:
    """What seed 002's merge needs of one served variant, whatever its source (an
    :class:`Assignment`, or a lookup table's catalog entry)."""

    layer_priority: int
    layer_id: str
    service: str | None
    variant_id: int
    params: Mapping[str, Any]
    #: A shipped experiment's params (served through the launch layer): merged before the
    #: experiments of the same layer, so a running launch-layer experiment overrides them.
    shipped: bool = False


def merged_services(served: Iterable[Served], services: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Seed 002's response ``results``: per service the params deep-merged in merge order
    (ascending layer priority, then layer id: the higher priority wins), the ``vids`` and the
    ``matched_layers`` in that order. A layer with no service scope applies to every service.

    Usage:
        >>> rows = [Served(200, "l2", "svc", 1002, {"a": {"x": 2}}),
        ...         Served(100, "l1", None, 1001, {"a": {"x": 1, "y": 1}, "b": 1})]
        >>> merged_services(rows, ["svc", "other"])  # doctest: +NORMALIZE_WHITESPACE
        {'svc': {'parameters': {'a': {'x': 2, 'y': 1}, 'b': 1}, 'vids': [1001, 1002],
                 'matched_layers': ['l1', 'l2']},
         'other': {'parameters': {'a': {'x': 1, 'y': 1}, 'b': 1}, 'vids': [1001],
                   'matched_layers': ['l1']}}
    """
    rows = sorted(served, key=lambda r: (r.layer_priority, r.layer_id, not r.shipped))
    out: dict[str, dict[str, Any]] = {}
    for svc in services:
        params: dict[str, Any] = {}
        vids, layers = [], []
        for r in rows:
            if r.service is None or r.service == svc:
                params = deep_merge(params, r.params)
                vids.append(r.variant_id)
                layers.append(r.layer_id)
        out[svc] = {"parameters": params, "vids": vids, "matched_layers": layers}
    return out


def served(a: Assignment) -> Served:
    """An assignment row as :func:`merged_services` takes it."""
    shipped = a.experiment_id.startswith(SHIPPED_ROW_PREFIX)
    params = json.loads(a.params)
    return Served(a.layer_priority, a.layer_id, a.service, a.variant_id, params, shipped)


def service_view(
    assignments: Iterable[Assignment], services: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """Seed 002's response ``results`` for assignment rows (:func:`merged_services`)."""
    return merged_services([served(a) for a in assignments], services)
