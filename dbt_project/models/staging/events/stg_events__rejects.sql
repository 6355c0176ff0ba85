{{
    config(
        unique_key='reject_id',
    )
}}

-- Raw rows that cannot be used, each with the reason: quarantined and counted, never dropped.

with

batch as (

    {{ event_batch(source('events', 'raw_events')) }}

),

rejected as (

    select
        *,
        {{ event_reject_reason() }} as reject_reason
    from batch

)

select
    md5(to_json(struct(
        event_id, event_name, event_at, arrived_at, device_id, user_id, platform, country, value
    ))) as reject_id,
    reject_reason,
    event_id,
    event_name,
    event_at,
    arrived_at,
    device_id,
    user_id,
    platform,
    country,
    value

from rejected
where reject_reason is not null
