-- The running per-unit state of the cumulative marts (goal_aggregates, goal_cross_aggregates):
-- per unit, experiment, goal and platform, its goal count and value summed over
-- fct_unit_goals_daily up to `through_date`, the last day no later run recomputes (state_day).
-- Their incremental runs read this state plus the daily rows after it (macro unit_goal_rows), so
-- a night reads the units' state and the new days, never the whole history.
-- Incremental: a run adds the daily rows after the state's day up to the new one to the units
-- they belong to (a full outer join of those rows with the state) and overwrites the table: one
-- read and one write of the units' rows, where a merge read them three times (the runtime filter,
-- the source's join, the copy-on-write join) to rewrite every file anyway (a night's units are
-- spread over all of them). A run whose day is before the state's (a backfill) rebuilds the state
-- from the daily rows up to its day; `--full-refresh` rebuilds it. (`first_date` null: a unit a
-- backfill dropped, written by earlier versions; read as absent.) The overwrite is static (the
-- whole table) whatever mode an earlier partitioned model left the session in: a dynamic
-- overwrite of no rows would keep the old ones.
{{
    config(
        materialized='incremental',
        incremental_strategy='insert_overwrite',
        pre_hook="set spark.sql.sources.partitionOverwriteMode = static",
    )
}}

{%- set through = state_day() %}
{#- Rebuild (not add) when the table is new or the run's day is before the state's day. #}
{%- set rebuild = not is_incremental() or state_is_ahead(this, through) %}

with

daily as (

    select
        experiment_id,
        variant_id,
        unit_type,
        unit_id,
        goal,
        platform,
        sum(goal_count) as goal_count,
        sum(goal_value) as goal_value,
        min(event_date) as first_date
    from {{ ref('fct_unit_goals_daily') }}
    where
        event_date <= {{ through }}
        and event_date > {{ "date '0001-01-01'" if rebuild else state_through_date(this) }}
    group by experiment_id, variant_id, unit_type, unit_id, goal, platform

)

-- noqa: disable=LT02
{%- if rebuild %}

select
    *,
    {{ through }} as through_date
from daily

{%- else %}

select
    coalesce(d.experiment_id, s.experiment_id) as experiment_id,
    coalesce(d.variant_id, s.variant_id) as variant_id,
    coalesce(d.unit_type, s.unit_type) as unit_type,
    coalesce(d.unit_id, s.unit_id) as unit_id,
    coalesce(d.goal, s.goal) as goal,
    coalesce(d.platform, s.platform) as platform,
    coalesce(d.goal_count, 0) + coalesce(s.goal_count, 0) as goal_count,
    coalesce(d.goal_value, 0) + coalesce(s.goal_value, 0) as goal_value,
    coalesce(s.first_date, d.first_date) as first_date,
    {{ through }} as through_date
from daily as d
full outer join {{ this }} as s
    on
        d.experiment_id = s.experiment_id
        and d.variant_id = s.variant_id
        and d.unit_type = s.unit_type
        and d.unit_id = s.unit_id
        and d.goal = s.goal
        and d.platform = s.platform

{%- endif %}
-- noqa: enable=LT02
