-- The days each experiment is analysed as of: every day of its window up to the newest event.
{{ config(materialized='view') }}

select
    x.experiment_id,
    explode(sequence(x.start_date, least(x.end_date, m.max_event_date))) as as_of_date

from {{ ref('stg_strata__experiments') }} as x
cross join (
    select max(event_date) as max_event_date from {{ ref('stg_events__events') }}
) as m
where x.start_date <= m.max_event_date
