-- goal_aggregates per ramp cohort, for the ramped experiments only (int_cohort_unit_goals): the
-- same ep-stats columns over the units first assigned in each ramp period (`ramp_period`),
-- cumulative from the experiment start to each as_of_date, all platforms, plus the `exposure` /
-- `global` row of each cohort (its exposed units). The evaluation tests SRM per cohort against
-- that period's weights and stratifies effects by cohort (strata.stats.engine). Not a segment
-- dimension: nothing here is tested for heterogeneity.
-- Incremental: a run merges the analysis dates of its recompute window (int_cohort_unit_goals
-- holds their units' totals), reading and rewriting only those dates' partitions.
{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        unique_key=['as_of_date', 'exp_id', 'exp_variant_id', 'unit_type', 'agg_type', 'goal',
                    'ramp_period'],
        partition_by=['as_of_date'],
        incremental_predicates=window_merge_predicates('as_of_date'),
    )
}}

with

unit_goals as (

    select * from {{ ref('int_cohort_unit_goals') }}
    {% if is_incremental() -%}
        where {{ recompute_window('as_of_date') }}
    {%- endif %}

),

goal_rows as (

    select
        as_of_date,
        experiment_id,
        variant_id,
        unit_type,
        ramp_period,
        'unit' as agg_type,
        goal,
        sum(goal_count) as `count`,
        sum(goal_count * goal_count) as sum_sqr_count,
        sum(goal_value) as sum_value,
        sum(goal_value * goal_value) as sum_sqr_value,
        count(*) as count_unique
    from unit_goals
    where goal is not null
    group by as_of_date, experiment_id, variant_id, unit_type, ramp_period, goal

),

exposure_rows as (

    select
        as_of_date,
        experiment_id,
        variant_id,
        unit_type,
        ramp_period,
        'global' as agg_type,
        'exposure' as goal,
        count(distinct unit_id) as `count`,
        count(distinct unit_id) as sum_sqr_count,
        cast(0 as double) as sum_value,
        cast(0 as double) as sum_sqr_value,
        count(distinct unit_id) as count_unique
    from unit_goals
    group by as_of_date, experiment_id, variant_id, unit_type, ramp_period

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
    ramp_period,
    `count`,
    sum_sqr_count,
    sum_value,
    sum_sqr_value,
    count_unique

from all_rows
