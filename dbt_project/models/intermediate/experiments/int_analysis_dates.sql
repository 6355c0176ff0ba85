-- The days each experiment is analysed as of: every day of its window up to the newest event,
-- or up to the run's as-of date when one is given (a backfilled day computes nothing after it).
{{ config(materialized='view') }}

{%- set day = as_of_date() %}
{%- set newest_day = 'least(max(event_date), ' ~ day ~ ')' if day else 'max(event_date)' %}

select
    x.experiment_id,
    explode(sequence(x.start_date, least(x.end_date, m.max_event_date))) as as_of_date

from {{ ref('stg_strata__experiments') }} as x
-- one row: the newest event day, capped at the as-of day when one is given
cross join (  -- noqa: ST05
    select {{ newest_day }} as max_event_date
    from {{ ref('stg_events__events') }}
) as m
where x.start_date <= m.max_event_date
