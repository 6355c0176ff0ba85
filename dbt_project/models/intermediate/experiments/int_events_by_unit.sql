-- Each usable event once per unit it belongs to: its device, and its user when logged in.
-- Experiments randomise by device_id or user_id; joining on (unit_type, unit_id) serves both.
-- One scan of the events fans each out to its units (a union of two selects reads them twice).
{{ config(materialized='view') }}

select
    e.event_id,
    e.event_name,
    e.event_at,
    e.event_date,
    e.platform,
    e.value,
    u.unit_type,
    u.unit_id

from {{ ref('stg_events__events') }} as e
    {{ lateral_view_unit_ids('e', ['device_id', 'user_id']) }}
where u.unit_id is not null
