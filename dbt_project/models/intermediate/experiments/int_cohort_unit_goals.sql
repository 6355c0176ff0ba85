-- Per ramped experiment, analysis date, exposed unit and goal: the unit's goal count and value
-- from its exposure up to that date (pre_<goal> covariates included), with its ramp cohort
-- (ramp_period of stg_strata__assignments: the ramp period it was first assigned in). A ramped
-- experiment is one with units in a cohort past the first (ramp_period > 0); the others have no
-- rows here (one cohort: their pooled aggregates are already right). A unit without goals keeps
-- one row with a null goal: it is still exposed. Read by goal_cohort_aggregates and
-- goal_cohort_cross_aggregates (docs/statistics.md, "Ramps: analysis per cohort").
{{ config(materialized='table') }}

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
    from {{ ref('fct_unit_goals_daily') }} as f
    inner join targets as t
        on f.experiment_id = t.experiment_id and f.event_date <= t.as_of_date
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
