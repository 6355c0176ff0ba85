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
-- Capping (winsorization, docs/statistics.md), only for the experiment x goal pairs a metric
-- caps (int_metric_caps); null elsewhere:
--   value_cap             the cap: the fixed cap_value, or the cap_percentile of the units'
--                         cumulative values of the series (units with the goal; both variants
--                         pooled), exact: linear between the order statistics around (n - 1) * p
--   sum_value_capped      sum over units of min(unit's goal value, value_cap)
--   sum_sqr_value_capped  sum over units of min(unit's goal value, value_cap)^2
-- A percentile cap moves with the analysis date, so min(V, cap) is not a sum of daily increments:
-- these come from each unit's value as of every analysis date (capped goals' rows x dates).
-- The table was created without these columns by earlier versions: on_schema_change adds them.
-- Incremental runs window over each unit's running totals (fct_unit_goal_state, dated on its
-- day, before every date the run recomputes) and the daily rows after it, not over every daily
-- row since the start (macro unit_goal_rows): same sums, a night's cost flat in the history.
-- depends_on: {{ ref('fct_unit_goal_state') }}
{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        on_schema_change='append_new_columns',
        unique_key=['as_of_date', 'exp_id', 'exp_variant_id', 'unit_type', 'agg_type', 'goal',
                    'platform'],
        partition_by=['as_of_date'],
        incremental_predicates=window_merge_predicates('as_of_date'),
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
    from {{ unit_goal_rows() }}
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

),

aggregates as (

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
    group by
        t.as_of_date, i.experiment_id, i.variant_id, i.unit_type, i.agg_type, i.goal, i.platform

),

capped_goal_rows as (

    select f.*
    from {{ unit_goal_rows() }} as f
    left semi join {{ ref('int_metric_caps') }} as c
        on f.experiment_id = c.experiment_id and f.goal = c.goal

),

capped_rows as (

    -- the unit rows of the capped goals, each in its platform's series and the all-platform one
    select
        experiment_id,
        variant_id,
        unit_type,
        unit_id,
        goal,
        series.platform,
        event_date,
        goal_value
    from capped_goal_rows
        lateral view explode(array(platform, '')) series as platform

),

capped_unit_values as (

    -- each unit's cumulative value of a capped goal as of every analysis date
    select
        t.as_of_date,
        r.experiment_id,
        r.variant_id,
        r.unit_type,
        r.unit_id,
        r.goal,
        r.platform,
        sum(r.goal_value) as unit_value
    from capped_rows as r
    inner join targets as t
        on r.experiment_id = t.experiment_id and r.event_date <= t.as_of_date
    group by
        t.as_of_date, r.experiment_id, r.variant_id, r.unit_type, r.unit_id, r.goal, r.platform

),

ranked as (

    select
        v.*,
        c.cap_value,
        c.cap_percentile,
        row_number() over pooled_order as value_rank,
        (count(*) over pooled - 1) * c.cap_percentile as cap_position
    from capped_unit_values as v
    inner join {{ ref('int_metric_caps') }} as c
        on v.experiment_id = c.experiment_id and v.goal = c.goal
    window
        pooled as (partition by v.as_of_date, v.experiment_id, v.unit_type, v.goal, v.platform),
        pooled_order as (
            partition by v.as_of_date, v.experiment_id, v.unit_type, v.goal, v.platform
            order by v.unit_value
        )

),

caps as (

    -- the fixed cap, or the percentile: v_(lo) + (pos - lo) * (v_(hi) - v_(lo)), 1-based ranks
    select
        as_of_date,
        experiment_id,
        unit_type,
        goal,
        platform,
        coalesce(
            max(cap_value),
            max(case when value_rank = floor(cap_position) + 1 then unit_value end)
            + (max(cap_position) - floor(max(cap_position)))
            * (
                max(case when value_rank = ceil(cap_position) + 1 then unit_value end)
                - max(case when value_rank = floor(cap_position) + 1 then unit_value end)
            )
        ) as value_cap
    from ranked
    group by as_of_date, experiment_id, unit_type, goal, platform

),

capped as (

    select
        v.as_of_date,
        v.experiment_id as exp_id,
        v.variant_id as exp_variant_id,
        {{ ep_unit_type('v.unit_type') }} as unit_type,
        v.goal,
        v.platform,
        max(c.value_cap) as value_cap,
        sum(least(v.unit_value, c.value_cap)) as sum_value_capped,
        sum(least(v.unit_value, c.value_cap) * least(v.unit_value, c.value_cap))
            as sum_sqr_value_capped
    from capped_unit_values as v
    inner join caps as c
        on
            v.as_of_date = c.as_of_date
            and v.experiment_id = c.experiment_id
            and v.unit_type = c.unit_type
            and v.goal = c.goal
            and v.platform = c.platform
    group by v.as_of_date, v.experiment_id, v.variant_id, v.unit_type, v.goal, v.platform

)

select
    a.*,
    c.value_cap,
    c.sum_value_capped,
    c.sum_sqr_value_capped

from aggregates as a
left join capped as c
    on
        a.agg_type = 'unit'
        and a.as_of_date = c.as_of_date
        and a.exp_id = c.exp_id
        and a.exp_variant_id = c.exp_variant_id
        and a.unit_type = c.unit_type
        and a.goal = c.goal
        and a.platform = c.platform
