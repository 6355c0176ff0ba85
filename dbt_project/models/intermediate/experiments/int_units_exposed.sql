-- First exposure per unit per experiment. A unit is exposed when it was served the experiment:
-- a LOG event from the device-register endpoint, or an app start (session_start: the app calls
-- the device-register API on every start) of an assigned unit. Only exposures inside the
-- experiment window count; the variant is the assigned one. When a LOG event and an app start
-- tie, the source is app_start.
{{ config(materialized='table') }}

with

assignments as (

    select * from {{ ref('stg_strata__assignments') }}

),

log_units as (

    -- each LOG event under each unit id it carries, so assignments join on equal keys
    select
        l.experiment_id,
        u.unit_type,
        u.unit_id,
        l.served_at
    from {{ ref('stg_strata__exposure_logs') }} as l
        {{ lateral_view_unit_ids('l', strata_var('unit_types')) }}
    where u.unit_id is not null

),

served_logs as (

    select
        a.experiment_id,
        a.variant_id,
        a.is_control,
        a.unit_type,
        a.unit_id,
        l.served_at as exposed_at,
        'log' as exposure_source
    from log_units as l
    inner join assignments as a
        on
            l.unit_id = a.unit_id
            and l.unit_type = a.unit_type
            and l.experiment_id = a.experiment_id

),

daily_first_starts as (

    -- windows open and close at midnight, so each unit's first start of a day is all that can
    -- be its first exposure: this shrinks the join to one row per unit and day
    select
        unit_type,
        unit_id,
        min(event_at) as started_at
    from {{ ref('int_events_by_unit') }}
    where event_name = 'session_start'
    group by unit_type, unit_id, event_date

),

app_starts as (

    select
        a.experiment_id,
        a.variant_id,
        a.is_control,
        a.unit_type,
        a.unit_id,
        s.started_at as exposed_at,
        'app_start' as exposure_source
    from daily_first_starts as s
    inner join assignments as a
        on s.unit_id = a.unit_id and s.unit_type = a.unit_type

),

in_window as (

    select candidates.*
    from (
        select * from served_logs
        union all
        select * from app_starts
    ) as candidates
    inner join {{ ref('stg_strata__experiments') }} as x
        on candidates.experiment_id = x.experiment_id
    where candidates.exposed_at >= x.starts_at and candidates.exposed_at < x.ends_at

),

first_by_source as (

    select
        experiment_id,
        variant_id,
        is_control,
        unit_type,
        unit_id,
        min(case when exposure_source = 'app_start' then exposed_at end) as first_app_start_at,
        min(case when exposure_source = 'log' then exposed_at end) as first_log_at
    from in_window
    group by experiment_id, variant_id, is_control, unit_type, unit_id

)

select
    experiment_id,
    variant_id,
    is_control,
    unit_type,
    unit_id,
    least(first_app_start_at, first_log_at) as exposed_at,
    cast(least(first_app_start_at, first_log_at) as date) as exposure_date,
    case
        when first_log_at is null or first_app_start_at <= first_log_at then 'app_start'
        else 'log'
    end as exposure_source

from first_by_source
