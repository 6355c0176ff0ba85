-- Each unit's first usable event (int_unit_segments' new vs returning visitor), kept as a running
-- per-unit state. Incremental: a run reads the events of its recompute window (`lookback_days`
-- before the run's day) and merges each unit's earliest with its row already built, so a night
-- reads the new days, not every event since the first; `--full-refresh` rebuilds it.
{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        unique_key=['unit_type', 'unit_id'],
    )
}}

with

seen as (

    select
        unit_type,
        unit_id,
        min(event_at) as first_event_at,
        max(event_date) as last_event_date
    from {{ ref('int_events_by_unit') }}
    {% if is_incremental() -%}
        where {{ recompute_window('event_date', 'last_event_date') }}
    {%- endif %}
    group by unit_type, unit_id

)

-- noqa: disable=LT02
{%- if is_incremental() %}

select
    s.unit_type,
    s.unit_id,
    least(s.first_event_at, o.first_event_at) as first_event_at,
    greatest(s.last_event_date, o.last_event_date) as last_event_date
from seen as s
left join {{ this }} as o
    on s.unit_type = o.unit_type and s.unit_id = o.unit_id

{%- else %}

select * from seen

{%- endif %}
-- noqa: enable=LT02
