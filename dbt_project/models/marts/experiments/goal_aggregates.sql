-- Goals aggregated per variant in the ep-stats layout, cumulative from the experiment start to
-- each analysis date (`as_of_date`), for every goal and for the `exposure` goal ep-stats expects.
--   count          sum over units of the unit's goal count
--   sum_sqr_count  sum over units of (unit's goal count)^2
--   sum_value      sum over units of the unit's goal value
--   sum_sqr_value  sum over units of (unit's goal value)^2
--   count_unique   units with at least one such goal
-- `platform` is the dimension column ('' = all platforms).
-- Per-unit cumulative sums change only on days the unit has events, so the squares are built
-- from per-day increments instead of a units x days grid: when a unit's cumulative count moves
-- from C - c to C, its square grows by C^2 - (C - c)^2 = c * (2C - c).
-- Over all platforms, a unit's day total d is spread over its platform rows of that day: each row
-- adds c * (2C - d), where C is the unit's all-platform cumulative count; they sum to d * (2C - d).
-- Both series come from one pass over the unit rows, partitioned by unit and goal. The windows
-- list unit_id first: Spark sorts on a prefix of the first key, and a key with few values there
-- (experiment_id) makes every comparison fall through to the whole row (the sort ran 1.6x slower).
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

cumulative as (

    select
        experiment_id,
        variant_id,
        unit_type,
        goal,
        platform,
        event_date,
        goal_count,
        goal_value,
        -- the unit's series on this platform
        sum(goal_count) over platform_history as platform_cum_count,
        sum(goal_value) over platform_history as platform_cum_value,
        row_number() over platform_history as platform_nth_row,
        -- and over all its platforms: running totals up to and including the day, the day's total
        sum(goal_count) over unit_history as unit_cum_count,
        sum(goal_value) over unit_history as unit_cum_value,
        sum(goal_count) over unit_day as unit_day_count,
        sum(goal_value) over unit_day as unit_day_value,
        row_number() over unit_order as unit_nth_row
    from {{ ref('fct_unit_goals_daily') }}
    window
        platform_history as (
            partition by unit_id, unit_type, experiment_id, variant_id, goal, platform
            order by event_date
            rows between unbounded preceding and current row
        ),
        unit_history as (
            partition by unit_id, unit_type, experiment_id, variant_id, goal
            order by event_date
            range between unbounded preceding and current row
        ),
        unit_order as (
            partition by unit_id, unit_type, experiment_id, variant_id, goal
            order by event_date
        ),
        unit_day as (
            partition by unit_id, unit_type, experiment_id, variant_id, goal
            order by event_date
            range between current row and current row
        )

),

increments as (

    -- each unit row moves two series: its platform's and the all-platform one ('')
    select
        experiment_id,
        variant_id,
        unit_type,
        goal,
        series.platform,
        event_date,
        sum(goal_count) as d_count,
        sum(series.d_sqr_count) as d_sqr_count,
        sum(goal_value) as d_value,
        sum(series.d_sqr_value) as d_sqr_value,
        count_if(series.is_first_row) as d_unique
    from cumulative
        lateral view inline(array(
            named_struct(
                'platform', platform,
                'd_sqr_count', goal_count * (2 * platform_cum_count - goal_count),
                'd_sqr_value', goal_value * (2 * platform_cum_value - goal_value),
                'is_first_row', platform_nth_row = 1
            ),
            named_struct(
                'platform', '',
                'd_sqr_count', goal_count * (2 * unit_cum_count - unit_day_count),
                'd_sqr_value', goal_value * (2 * unit_cum_value - unit_day_value),
                'is_first_row', unit_nth_row = 1
            )
        )) series
    group by experiment_id, variant_id, unit_type, goal, series.platform, event_date

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
        where {{ recompute_window('as_of_date') }}
    {%- endif %}

),

all_increments as (

    select
        *,
        'unit' as agg_type
    from increments
    union all
    select
        *,
        'global' as agg_type
    from exposure_increments

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
    on t.experiment_id = i.experiment_id and t.as_of_date >= i.event_date
group by t.as_of_date, i.experiment_id, i.variant_id, i.unit_type, i.agg_type, i.goal, i.platform
