-- Each exposed unit's segment in every segment dimension (strata.contracts.SEGMENT_DIMENSIONS),
-- fixed before treatment could move it:
--   country            users.country of the unit's user (a device unit: the device's owner)
--   platform           devices.platform of the device the unit was first exposed on (a device
--                      unit: itself; a user: the device of the app start or LOG event that
--                      exposed it; its event's platform when the device is not in `devices`)
--   app_version_major  the major part of that device's devices.app_version
--   visitor            'returning' when the unit has a usable event before the experiment
--                      started, else 'new'
--   plan               orgs.plan of the org of the unit's user
-- A missing attribute (unknown device, logged-out traffic) is the segment 'unknown'.
-- Incremental: segments are fixed at the first exposure, so a run computes the units whose first
-- exposure falls in its recompute window (new units, or one that a late event moved earlier)
-- from that window's exposing events and merges them; the others keep their row.
{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        unique_key=['experiment_id', 'unit_type', 'unit_id'],
    )
}}

with

exposed as (

    select
        x.experiment_id,
        x.variant_id,
        x.unit_type,
        x.unit_id,
        x.exposed_at,
        x.exposure_date,
        w.starts_at
    from {{ ref('int_units_exposed') }} as x
    inner join {{ ref('stg_strata__experiments') }} as w
        on x.experiment_id = w.experiment_id
    {% if is_incremental() -%}
        where {{ recompute_window('x.exposure_date', 'exposure_date') }}
    {%- endif %}

),

exposing_events as (

    -- what can expose a user: an app start, or a LOG event of the experiment
    select
        cast(null as string) as experiment_id,
        user_id,
        event_at as exposed_at,
        device_id,
        platform
    from {{ ref('stg_events__events') }}
    where
        event_name = 'session_start' and user_id is not null
        {%- if is_incremental() %}
            and {{ recompute_window('event_date', 'exposure_date') }}
        {%- endif %}
    union all
    select
        experiment_id,
        user_id,
        served_at as exposed_at,
        device_id,
        cast(null as string) as platform
    from {{ ref('stg_strata__exposure_logs') }}
    where
        user_id is not null
        {%- if is_incremental() %}
            and {{ recompute_window('cast(served_at as date)', 'exposure_date') }}
        {%- endif %}

),

exposing_devices as (

    select
        x.experiment_id,
        x.unit_id,
        min(e.device_id) as device_id,
        min_by(e.platform, e.device_id) as event_platform
    from exposed as x
    inner join exposing_events as e
        on
            x.unit_id = e.user_id
            and x.exposed_at = e.exposed_at
            and (e.experiment_id is null or x.experiment_id = e.experiment_id)
    where x.unit_type = 'user_id'
    group by x.experiment_id, x.unit_id

),

first_seen as (

    select * from {{ ref('int_unit_first_seen') }}

),

profiled as (

    select
        x.experiment_id,
        x.variant_id,
        x.unit_type,
        x.unit_id,
        x.exposure_date,
        x.starts_at,
        f.first_event_at,
        e.event_platform,
        case when x.unit_type = 'device_id' then x.unit_id else e.device_id end as device_id
    from exposed as x
    left join exposing_devices as e
        on x.experiment_id = e.experiment_id and x.unit_id = e.unit_id
    left join first_seen as f
        on x.unit_type = f.unit_type and x.unit_id = f.unit_id

)

select
    p.experiment_id,
    p.variant_id,
    p.unit_type,
    p.unit_id,
    p.exposure_date,
    coalesce(u.country, 'unknown') as country,
    coalesce(d.platform, p.event_platform, 'unknown') as platform,
    coalesce(nullif(split(d.app_version, '[.]')[0], ''), 'unknown') as app_version_major,
    case when p.first_event_at < p.starts_at then 'returning' else 'new' end as visitor,
    coalesce(o.plan, 'unknown') as plan  -- noqa: RF04

from profiled as p
left join {{ source('events', 'devices') }} as d
    on p.device_id = d.device_id
left join {{ source('events', 'users') }} as u
    on (case when p.unit_type = 'user_id' then p.unit_id else d.user_id end) = u.user_id
left join {{ source('events', 'orgs') }} as o
    on u.org_id = o.org_id
