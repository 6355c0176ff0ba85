-- goal_aggregates per segment: the same ep-stats columns for every segment of every segment
-- dimension (strata.contracts.SEGMENT_DIMENSIONS), one dimension at a time (a union of
-- per-dimension rows, never their cross product), at each experiment's newest analysis date.
--   dimension, segment  e.g. ('country', 'DE'); a unit is in one segment per dimension
--   count ... count_unique  as in goal_aggregates, over the units of the segment (all platforms)
-- plus the `exposure` / `global` row of each segment (its exposed units).
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
        count(*) as count_unique
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
        count(distinct unit_id) as count_unique
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
    count_unique

from all_rows
