-- Each usable event once per unit it belongs to: its device, and its user when logged in.
-- Experiments randomise by device_id or user_id; joining on (unit_type, unit_id) serves both.
{{ config(materialized='view') }}

with

events as (

    select * from {{ ref('stg_events__events') }}

)

select
    event_id,
    event_name,
    event_at,
    event_date,
    platform,
    value,
    'device_id' as unit_type,
    device_id as unit_id

from events

union all

select
    event_id,
    event_name,
    event_at,
    event_date,
    platform,
    value,
    'user_id' as unit_type,
    user_id as unit_id

from events
where user_id is not null
