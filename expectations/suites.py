"""Great Expectations suites, one per guarded table, named after it.

Raw data is messy by nature, so the raw suite bounds the mess (``mostly``) instead of forbidding
it: the staging models quarantine the bad rows, and a *surge* of them is what should stop the
pipeline. Tables Strata writes itself (assignments, goal_aggregates) must be exactly right.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from strata import contracts

if TYPE_CHECKING:
    import great_expectations as gx

#: Share of raw rows that must be well-formed; the generator plants ~0.3% malformed rows.
RAW_WELL_FORMED_SHARE = 0.98
#: Share of a value goal's events (purchases) with a usable (non-negative) amount; ~4% are broken
#: in the synthetic data.
PURCHASE_VALID_SHARE = 0.9


def raw_events() -> gx.ExpectationSuite:
    """Event names and values follow the goals catalogue (``strata.contracts.goals``)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    return gx.ExpectationSuite(
        name=contracts.RAW_EVENTS,
        expectations=[
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            gxe.ExpectColumnValuesToNotBeNull(column="arrived_at"),
            gxe.ExpectColumnValuesToNotBeNull(column="event_id", mostly=RAW_WELL_FORMED_SHARE),
            gxe.ExpectColumnValuesToNotBeNull(column="device_id", mostly=RAW_WELL_FORMED_SHARE),
            gxe.ExpectColumnValuesToBeInSet(
                column="event_name",
                value_set=list(contracts.goal_names()),
                mostly=RAW_WELL_FORMED_SHARE,
            ),
            *(
                gxe.ExpectColumnValuesToBeBetween(
                    column="value",
                    min_value=0,
                    mostly=PURCHASE_VALID_SHARE,
                    row_condition=f"event_name = '{goal}'",
                    condition_parser="spark",
                )
                for goal in contracts.value_goals()
            ),
        ],
    )


def assignments() -> gx.ExpectationSuite:
    import great_expectations as gx
    import great_expectations.expectations as gxe

    return gx.ExpectationSuite(
        name=contracts.ASSIGNMENTS,
        expectations=[
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            *(
                gxe.ExpectColumnValuesToNotBeNull(column=c)
                for c in ("unit_type", "unit_id", "experiment_id", "variant_id", "slot")
            ),
            gxe.ExpectColumnValuesToBeInSet(
                column="unit_type", value_set=list(contracts.UNIT_ID_TYPES)
            ),
            gxe.ExpectColumnValuesToBeBetween(column="slot", min_value=0, max_value=9999),
            gxe.ExpectCompoundColumnsToBeUnique(
                column_list=["experiment_id", "unit_type", "unit_id"]
            ),
        ],
    )


def goal_aggregates() -> gx.ExpectationSuite:
    import great_expectations as gx
    import great_expectations.expectations as gxe

    return gx.ExpectationSuite(
        name=contracts.GOAL_AGGREGATES,
        expectations=[
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            *(
                gxe.ExpectColumnValuesToNotBeNull(column=c)
                for c in ("as_of_date", "exp_id", "exp_variant_id", "goal", "count")
            ),
            gxe.ExpectColumnValuesToBeInSet(column="agg_type", value_set=["unit", "global"]),
            gxe.ExpectColumnValuesToBeBetween(column="count_unique", min_value=0),
            gxe.ExpectColumnValuesToBeBetween(column="sum_sqr_value", min_value=0),
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="count", column_B="count_unique", or_equal=True
            ),
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="sum_sqr_count", column_B="count", or_equal=True
            ),
            gxe.ExpectCompoundColumnsToBeUnique(
                column_list=[
                    "as_of_date",
                    "exp_id",
                    "exp_variant_id",
                    "unit_type",
                    "agg_type",
                    "goal",
                    *contracts.DIMENSIONS,
                ]
            ),
        ],
    )


SUITES = {
    contracts.RAW_EVENTS: raw_events,
    contracts.ASSIGNMENTS: assignments,
    contracts.GOAL_AGGREGATES: goal_aggregates,
}
