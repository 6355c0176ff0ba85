-- Goal events that count for an experiment, from the units' events joined to their exposure:
--   * the unit's own events at or after its first exposure and before the window closes, as
--     goals named after the event. Events before exposure never count;
--   * its events in the `pre_period_days` before the experiment started, as goals named
--     pre_<event> and dated on the exposure day (the covariates CUPED uses; a unit brings its
--     covariate into the analysis when it enters it).
-- Exposure happens inside the window, so the two ranges never overlap. They are two joins, each
-- of the events of its days only (some experiment's window, some experiment's pre-period: an
-- event of neither is never shuffled), and a filter on `event_date` reaches the side it comes
-- from: the events' days for the goals after exposure, the exposure day for the pre-period
-- goals. A night's run (fct_unit_goals_daily) then joins the pre-period events with the units
-- exposed in its window only, not with every unit ever exposed.
{{ config(materialized='view') }}

with

exposed as (

    select
        x.experiment_id,
        x.variant_id,
        x.unit_type,
        x.unit_id,
        x.exposed_at,
        x.exposure_date,
        w.starts_at - interval {{ var('pre_period_days') }} days as pre_period_starts_at,
        w.starts_at,
        w.ends_at
    from {{ ref('int_units_exposed') }} as x
    inner join {{ ref('stg_strata__experiments') }} as w
        on x.experiment_id = w.experiment_id

),

window_days as (

    select distinct d.event_date
    from {{ ref('stg_strata__experiments') }} as w
        lateral view explode(sequence(w.start_date, w.end_date)) d as event_date

),

pre_period_days as (

    select distinct d.event_date
    from {{ ref('stg_strata__experiments') }} as w
        lateral view explode(sequence(
            date_sub(w.start_date, {{ var('pre_period_days') }}), date_sub(w.start_date, 1)
        )) d as event_date

),

window_events as (

    select e.*
    from {{ ref('int_events_by_unit') }} as e
    left semi join window_days as d
        on e.event_date = d.event_date

),

pre_period_events as (

    select e.*
    from {{ ref('int_events_by_unit') }} as e
    left semi join pre_period_days as d
        on e.event_date = d.event_date

),

after_exposure as (

    select
        x.experiment_id,
        x.variant_id,
        x.unit_type,
        x.unit_id,
        e.event_id,
        e.event_name as goal,
        e.event_at,
        e.event_date,
        e.platform,
        e.value,
        e.event_date as occurred_date
    from window_events as e
    inner join exposed as x
        on e.unit_id = x.unit_id and e.unit_type = x.unit_type
    where e.event_at >= x.exposed_at and e.event_at < x.ends_at

),

pre_period as (

    select
        x.experiment_id,
        x.variant_id,
        x.unit_type,
        x.unit_id,
        e.event_id,
        concat('pre_', e.event_name) as goal,
        e.event_at,
        x.exposure_date as event_date,
        e.platform,
        e.value,
        e.event_date as occurred_date
    from pre_period_events as e
    inner join exposed as x
        on e.unit_id = x.unit_id and e.unit_type = x.unit_type
    where e.event_at >= x.pre_period_starts_at and e.event_at < x.starts_at

)

-- event_date: the day a goal counts on (a pre-period goal's is the exposure day);
-- occurred_date: the day the event happened, a filter on which reaches the events' partitions
select * from after_exposure
union all
select * from pre_period
