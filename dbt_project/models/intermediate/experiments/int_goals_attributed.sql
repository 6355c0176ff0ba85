-- Goal events that count for an experiment: the unit's own events at or after its first
-- exposure and before the experiment window closes. Events before exposure never count.
{{ config(materialized='view') }}

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
    e.value

from {{ ref('int_events_by_unit') }} as e
inner join {{ ref('int_units_exposed') }} as x
    on e.unit_type = x.unit_type and e.unit_id = x.unit_id
inner join {{ ref('stg_strata__experiments') }} as w
    on x.experiment_id = w.experiment_id
where e.event_at >= x.exposed_at and e.event_at < w.ends_at
