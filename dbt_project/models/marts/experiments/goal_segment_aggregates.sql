-- goal_aggregates per segment: the same ep-stats columns for every segment of every segment
-- dimension (strata.contracts.SEGMENT_DIMENSIONS), one dimension at a time (a union of
-- per-dimension rows, never their cross product), at each experiment's newest analysis date.
--   dimension, segment  e.g. ('country', 'DE'); a unit is in one segment per dimension
--   count ... count_unique  as in goal_aggregates, over the units of the segment (all platforms)
-- plus the `exposure` / `global` row of each segment (its exposed units).
-- Capping, for the goals a metric of the experiment caps (null elsewhere, as in goal_aggregates):
--   value_cap             the experiment's cap at the date (int_segment_unit_goals: the one of
--                         goal_aggregates, pooled over variants and segments, not per segment)
--   sum_value_capped      sum over the segment's units of min(unit's goal value, value_cap)
--   sum_sqr_value_capped  sum over the segment's units of min(unit's goal value, value_cap)^2
-- so each dimension's segments add up to goal_aggregates' all-platform row, capped sums included.
{{ config(materialized='table') }}

with

unit_goals as (

    select * from {{ ref('int_segment_unit_goals') }}

),

segmented as (

    select
        u.as_of_date,
        u.experiment_id,
        u.variant_id,
        u.unit_type,
        u.unit_id,
        u.goal,
        u.goal_count,
        u.goal_value,
        u.value_cap,
        -- not least() alone: Spark's least skips nulls, and uncapped goals keep null sums
        case when u.value_cap is not null then least(u.goal_value, u.value_cap) end
            as capped_value,
        s.dimension,
        s.segment
    from unit_goals as u
        {{ lateral_view_segments('u') }}

),

goal_rows as (

    select
        as_of_date,
        experiment_id,
        variant_id,
        unit_type,
        'unit' as agg_type,
        goal,
        dimension,
        segment,
        sum(goal_count) as `count`,
        sum(goal_count * goal_count) as sum_sqr_count,
        sum(goal_value) as sum_value,
        sum(goal_value * goal_value) as sum_sqr_value,
        count(*) as count_unique,
        max(value_cap) as value_cap,
        sum(capped_value) as sum_value_capped,
        sum(capped_value * capped_value) as sum_sqr_value_capped
    from segmented
    where goal is not null
    group by as_of_date, experiment_id, variant_id, unit_type, goal, dimension, segment

),

exposure_rows as (

    select
        as_of_date,
        experiment_id,
        variant_id,
        unit_type,
        'global' as agg_type,
        'exposure' as goal,
        dimension,
        segment,
        count(distinct unit_id) as `count`,
        count(distinct unit_id) as sum_sqr_count,
        cast(0 as double) as sum_value,
        cast(0 as double) as sum_sqr_value,
        count(distinct unit_id) as count_unique,
        cast(null as double) as value_cap,
        cast(null as double) as sum_value_capped,
        cast(null as double) as sum_sqr_value_capped
    from segmented
    group by as_of_date, experiment_id, variant_id, unit_type, dimension, segment

),

all_rows as (

    select * from goal_rows
    union all
    select * from exposure_rows

)

select
    as_of_date,
    experiment_id as exp_id,
    variant_id as exp_variant_id,
    {{ ep_unit_type('unit_type') }} as unit_type,
    agg_type,
    goal,
    dimension,
    segment,
    `count`,
    sum_sqr_count,
    sum_value,
    sum_sqr_value,
    count_unique,
    value_cap,
    sum_value_capped,
    sum_sqr_value_capped

from all_rows
