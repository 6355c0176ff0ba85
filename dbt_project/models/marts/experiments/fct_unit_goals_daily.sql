-- Per unit, experiment, goal, platform and day: how many goal events and their summed value.
-- Pre-period goals (pre_<goal>, the CUPED covariates) are dated on the unit's exposure day.
-- Incremental: each run recomputes the last `lookback_days` event dates from the deduplicated
-- staging events and merges them, so late events are counted exactly once and re-running a day
-- reproduces it. The events it reads are those of the window and of the pre-periods of the
-- experiments open in it (attributable_event_dates: date literals, so only their partitions).
-- depends_on: {{ ref('stg_strata__experiments') }}
{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        unique_key=['experiment_id', 'unit_type', 'unit_id', 'goal', 'platform', 'event_date'],
        partition_by=['event_date'],
        incremental_predicates=window_merge_predicates('event_date'),
    )
}}

with

attributed as (

    select * from {{ ref('int_goals_attributed') }}
    {% if is_incremental() -%}
        where
            {{ recompute_window('event_date') }}
            and {{ attributable_event_dates('occurred_date') }}
    {%- endif %}

)

select
    experiment_id,
    variant_id,
    unit_type,
    unit_id,
    goal,
    platform,
    event_date,
    count(*) as goal_count,
    coalesce(sum(value), 0) as goal_value

from attributed
group by experiment_id, variant_id, unit_type, unit_id, goal, platform, event_date
