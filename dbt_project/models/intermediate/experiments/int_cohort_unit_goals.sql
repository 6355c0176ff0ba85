-- Per ramped experiment, analysis date, exposed unit and goal: the unit's goal count and value
-- from its exposure up to that date (pre_<goal> covariates included), with its ramp cohort
-- (ramp_period of stg_strata__assignments: the ramp period it was first assigned in). A ramped
-- experiment is one with units in a cohort past the first (ramp_period > 0); the others have no
-- rows here (one cohort: their pooled aggregates are already right). A unit without goals keeps
-- one row with a null goal: it is still exposed. Read by goal_cohort_aggregates and
-- goal_cohort_cross_aggregates (docs/statistics.md, "Ramps: analysis per cohort").
-- Incremental: a run recomputes the analysis dates of its recompute window (`lookback_days`
-- before the run's day) and overwrites those dates' partitions. Their totals are each unit's
-- running state (fct_unit_goal_state, through a day before every date of the window) plus the
-- daily rows after it, so a night reads the units and the new days, not the history. (A table
-- built unpartitioned by an earlier version keeps the window's dates only: all its incremental
-- readers read; `--full-refresh` rebuilds every date.)
-- depends_on: {{ ref('fct_unit_goal_state') }}
{{
    config(
        materialized='incremental',
        incremental_strategy='insert_overwrite',
        partition_by=['as_of_date'],
    )
}}

{%- set state = ref('fct_unit_goal_state') if is_incremental() else none %}

with

ramped as (

    select experiment_id
    from {{ ref('stg_strata__assignments') }}
    group by experiment_id
    having max(ramp_period) > 0

),

cohorts as (

    select
        a.experiment_id,
        a.unit_type,
        a.unit_id,
        a.ramp_period
    from {{ ref('stg_strata__assignments') }} as a
    left semi join ramped as r
        on a.experiment_id = r.experiment_id

),

targets as (

    select d.*
    from {{ ref('int_analysis_dates') }} as d
    left semi join ramped as r
        on d.experiment_id = r.experiment_id
    {% if is_incremental() -%}
        where {{ recompute_window('d.as_of_date', 'as_of_date') }}
    {%- endif %}

),

exposed as (

    select
        x.experiment_id,
        x.variant_id,
        x.unit_type,
        x.unit_id,
        x.exposure_date,
        c.ramp_period
    from {{ ref('int_units_exposed') }} as x
    inner join cohorts as c
        on
            x.experiment_id = c.experiment_id
            and x.unit_type = c.unit_type
            and x.unit_id = c.unit_id

),

totals as (

    select
        t.as_of_date,
        f.experiment_id,
        f.unit_type,
        f.unit_id,
        f.goal,
        sum(f.goal_count) as goal_count,
        sum(f.goal_value) as goal_value
    from {{ unit_goal_totals_rows(state) }} as f
    inner join targets as t
        on
            f.experiment_id = t.experiment_id
            and (f.event_date is null or f.event_date <= t.as_of_date)
    group by t.as_of_date, f.experiment_id, f.unit_type, f.unit_id, f.goal

)

select
    t.as_of_date,
    x.experiment_id,
    x.variant_id,
    x.unit_type,
    x.unit_id,
    x.ramp_period,
    g.goal,
    g.goal_count,
    g.goal_value

from exposed as x
inner join targets as t
    on x.experiment_id = t.experiment_id and x.exposure_date <= t.as_of_date
left join totals as g
    on
        t.as_of_date = g.as_of_date
        and x.experiment_id = g.experiment_id
        and x.unit_type = g.unit_type
        and x.unit_id = g.unit_id
