-- Goal events that count for an experiment, in one join of the units' events to their exposure:
--   * the unit's own events at or after its first exposure and before the window closes, as
--     goals named after the event. Events before exposure never count;
--   * its events in the `pre_period_days` before the experiment started, as goals named
--     pre_<event> and dated on the exposure day (the covariates CUPED uses; a unit brings its
--     covariate into the analysis when it enters it).
-- Exposure happens inside the window, so the two ranges never overlap.
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

matched as (

    select
        x.experiment_id,
        x.variant_id,
        x.unit_type,
        x.unit_id,
        x.exposure_date,
        e.event_id,
        e.event_name,
        e.event_at,
        e.event_date,
        e.platform,
        e.value,
        e.event_at < x.starts_at as is_pre_period
    from {{ ref('int_events_by_unit') }} as e
    inner join exposed as x
        on e.unit_id = x.unit_id and e.unit_type = x.unit_type
    where
        (e.event_at >= x.exposed_at and e.event_at < x.ends_at)
        or (e.event_at >= x.pre_period_starts_at and e.event_at < x.starts_at)

)

select
    experiment_id,
    variant_id,
    unit_type,
    unit_id,
    event_id,
    case when is_pre_period then concat('pre_', event_name) else event_name end as goal,
    event_at,
    case when is_pre_period then exposure_date else event_date end as event_date,
    platform,
    value,
    -- the day the event happened (a pre-period goal's event_date is the exposure day): a filter
    -- on it reaches the events' partitions
    event_date as occurred_date

from matched
