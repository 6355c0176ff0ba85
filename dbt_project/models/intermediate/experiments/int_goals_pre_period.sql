-- Each exposed unit's goal events in the `pre_period_days` before the experiment started, as
-- goals named pre_<goal>: the covariates CUPED uses. They are dated on the unit's exposure day,
-- so a unit brings its covariate into the analysis when it enters it.
{{ config(materialized='view') }}

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
    e.value

from {{ ref('int_events_by_unit') }} as e
inner join {{ ref('int_units_exposed') }} as x
    on e.unit_type = x.unit_type and e.unit_id = x.unit_id
inner join {{ ref('stg_strata__experiments') }} as w
    on x.experiment_id = w.experiment_id
where
    e.event_at >= w.starts_at - interval {{ var('pre_period_days') }} days
    and e.event_at < w.starts_at
