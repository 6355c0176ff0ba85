-- Goals aggregated per variant in the ep-stats layout, cumulative from the experiment start to
-- each analysis date (`as_of_date`), for every goal and for the `exposure` goal ep-stats expects.
--   count          sum over units of the unit's goal count
--   sum_sqr_count  sum over units of (unit's goal count)^2
--   sum_value      sum over units of the unit's goal value
--   sum_sqr_value  sum over units of (unit's goal value)^2
--   count_unique   units with at least one such goal
-- `platform` is the dimension column ('' = all platforms).
-- Per-unit cumulative sums change only on days the unit has events, so the squares are built
-- from per-day increments (c_t^2 - c_{t-1}^2) instead of a units x days grid.
{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        unique_key=['as_of_date', 'exp_id', 'exp_variant_id', 'unit_type', 'agg_type', 'goal',
                    'platform'],
        partition_by=['as_of_date'],
    )
}}

with

unit_days as (

    -- per unit and day, by platform and over all platforms ('')
    select
        experiment_id,
        variant_id,
        unit_type,
        unit_id,
        goal,
        coalesce(platform, '') as platform,
        event_date,
        sum(goal_count) as goal_count,
        sum(goal_value) as goal_value
    from {{ ref('fct_unit_goals_daily') }}
    group by grouping sets (
        (experiment_id, variant_id, unit_type, unit_id, goal, platform, event_date),
        (experiment_id, variant_id, unit_type, unit_id, goal, event_date)
    )

),

cumulative as (

    select
        *,
        sum(goal_count) over unit_history as cum_count,
        sum(goal_value) over unit_history as cum_value,
        row_number() over unit_history as nth_day
    from unit_days
    window unit_history as (
        partition by experiment_id, variant_id, unit_type, unit_id, goal, platform
        order by event_date
        rows between unbounded preceding and current row
    )

),

increments as (

    select
        experiment_id,
        variant_id,
        unit_type,
        goal,
        platform,
        event_date,
        sum(goal_count) as d_count,
        sum(cum_count * cum_count - pow(cum_count - goal_count, 2)) as d_sqr_count,
        sum(goal_value) as d_value,
        sum(cum_value * cum_value - pow(cum_value - goal_value, 2)) as d_sqr_value,
        sum(case when nth_day = 1 then 1 else 0 end) as d_unique
    from cumulative
    group by experiment_id, variant_id, unit_type, goal, platform, event_date

),

exposure_increments as (

    select
        experiment_id,
        variant_id,
        unit_type,
        'exposure' as goal,
        '' as platform,
        exposure_date as event_date,
        count(*) as d_count,
        count(*) as d_sqr_count,
        cast(0 as double) as d_value,
        cast(0 as double) as d_sqr_value,
        count(*) as d_unique
    from {{ ref('int_units_exposed') }}
    group by experiment_id, variant_id, unit_type, exposure_date

),

targets as (

    select * from {{ ref('int_analysis_dates') }}
    {% if is_incremental() -%}
    where as_of_date >= (
        select date_sub(max(as_of_date), {{ var('lookback_days') }}) from {{ this }}
    )
    {%- endif %}

),

all_increments as (

    select *, 'unit' as agg_type from increments
    union all
    select *, 'global' as agg_type from exposure_increments

)

select
    t.as_of_date,
    i.experiment_id as exp_id,
    i.variant_id as exp_variant_id,
    {{ ep_unit_type('i.unit_type') }} as unit_type,
    i.agg_type,
    i.goal,
    i.platform,
    sum(i.d_count) as `count`,
    sum(i.d_sqr_count) as sum_sqr_count,
    sum(i.d_value) as sum_value,
    sum(i.d_sqr_value) as sum_sqr_value,
    sum(i.d_unique) as count_unique

from targets as t
inner join all_increments as i
    on t.experiment_id = i.experiment_id and i.event_date <= t.as_of_date
group by t.as_of_date, i.experiment_id, i.variant_id, i.unit_type, i.agg_type, i.goal, i.platform
