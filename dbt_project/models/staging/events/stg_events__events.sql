{{
    config(
        unique_key='event_id',
        partition_by=['event_date'],
        merge_update_columns=['arrived_at'],
        meta={'merge_floor': 'batch_event_date'},
    )
}}

-- Incremental: a merge on event_id of the batch (arrivals since the newest loaded minus
-- `lookback_hours`) into the staged events of the batch's earliest event day and after
-- (macros/merge.sql: the other partitions are not read).

with

batch as (

    {{ event_batch(source('events', 'raw_events')) }}

),

valid as (

    select * from batch
    where {{ event_reject_reason() }} is null

),

first_delivery as (

    select
        *,
        row_number() over (partition by event_id order by arrived_at, device_id) as delivery
    from valid

)

select
    event_id,
    event_name,
    event_at,
    cast(event_at as date) as event_date,
    arrived_at,
    device_id,
    user_id,
    coalesce(platform, 'unknown') as platform,
    country,
    cast(value as double) as value

from first_delivery
where delivery = 1
