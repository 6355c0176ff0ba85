-- First exposure per unit per experiment. A unit is exposed when it was served the experiment:
-- a LOG event from the device-register endpoint, or an app start (session_start: the app calls
-- the device-register API on every start) of an assigned unit. Only exposures inside the
-- experiment window count; the variant is the assigned one.
{{ config(materialized='table') }}

with

assignments as (

    select * from {{ ref('stg_strata__assignments') }}

),

experiments as (

    select * from {{ ref('stg_strata__experiments') }}

),

served_logs as (

    select
        a.experiment_id,
        a.unit_type,
        a.unit_id,
        l.served_at as exposed_at,
        'log' as exposure_source
    from {{ ref('stg_strata__exposure_logs') }} as l
    inner join assignments as a
        on
            l.experiment_id = a.experiment_id
            and a.unit_id = case a.unit_type
                when 'device_id' then l.device_id
                when 'user_id' then l.user_id
                when 'url' then l.url
            end

),

app_starts as (

    select
        a.experiment_id,
        a.unit_type,
        a.unit_id,
        e.event_at as exposed_at,
        'app_start' as exposure_source
    from {{ ref('int_events_by_unit') }} as e
    inner join assignments as a
        on e.unit_type = a.unit_type and e.unit_id = a.unit_id
    where e.event_name = 'session_start'

),

in_window as (

    select candidates.*
    from (
        select * from served_logs
        union all
        select * from app_starts
    ) as candidates
    inner join experiments as x
        on candidates.experiment_id = x.experiment_id
    where candidates.exposed_at >= x.starts_at and candidates.exposed_at < x.ends_at

),

ranked as (

    select
        *,
        row_number() over (
            partition by experiment_id, unit_type, unit_id
            order by exposed_at, exposure_source
        ) as exposure_rank
    from in_window

)

select
    a.experiment_id,
    a.variant_id,
    a.is_control,
    a.unit_type,
    a.unit_id,
    r.exposed_at,
    cast(r.exposed_at as date) as exposure_date,
    r.exposure_source

from ranked as r
inner join assignments as a
    on
        r.experiment_id = a.experiment_id
        and r.unit_type = a.unit_type
        and r.unit_id = a.unit_id
where r.exposure_rank = 1
