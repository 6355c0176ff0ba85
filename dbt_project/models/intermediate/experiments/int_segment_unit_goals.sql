-- Per exposed unit and goal: the unit's goal count and value from its exposure up to its
-- experiment's newest analysis date (the as-of day of the run; pre_<goal> covariates included),
-- with the unit's segments beside it. One row per unit and goal it has; the segment marts read it
-- once each. Segment results are for that one date per run (the results table keeps the history).
-- value_cap: for the goals a metric of the experiment caps (int_metric_caps), the experiment's
-- cap at that date, as goal_aggregates computed it (its all-platform series, both variants
-- pooled: the fixed cap or the exact pooled percentile); null elsewhere. One cap per experiment,
-- not per segment, so the segments' capped sums add up to the experiment's (docs/statistics.md).
-- The totals come from each unit's running state (fct_unit_goal_state, through its day) plus the
-- daily rows after that day, not from every daily row since the start: a night's cost follows
-- the units, not the days of history (an experiment that ended before the state's day has no
-- daily rows after its end, so its state is its total).
-- depends_on: {{ ref('fct_unit_goal_state') }}
{{ config(materialized='table') }}

{%- set state = adapter.get_relation(this.database, this.schema, 'fct_unit_goal_state')
    if execute else none %}

with

targets as (

    -- each experiment's newest analysis date: the run's as-of day, or its window's last day
    select
        experiment_id,
        max(as_of_date) as as_of_date
    from {{ ref('int_analysis_dates') }}
    group by experiment_id

),

totals as (

    select
        f.experiment_id,
        f.unit_type,
        f.unit_id,
        f.goal,
        sum(f.goal_count) as goal_count,
        sum(f.goal_value) as goal_value
    from {{ unit_goal_totals_rows(state) }} as f
    inner join targets as t
        on
            f.experiment_id = t.experiment_id
            and (f.event_date is null or f.event_date <= t.as_of_date)
    group by f.experiment_id, f.unit_type, f.unit_id, f.goal

),

caps as (

    select distinct
        as_of_date,
        exp_id,
        unit_type,
        goal,
        value_cap
    from {{ ref('goal_aggregates') }}
    where agg_type = 'unit' and platform = '' and value_cap is not null

)

select
    t.as_of_date,
    s.experiment_id,
    s.variant_id,
    s.unit_type,
    s.unit_id,
    {%- for d in segment_dimensions() %}
        s.{{ d }},
    {%- endfor %}
    g.goal,
    g.goal_count,
    g.goal_value,
    c.value_cap

from {{ ref('int_unit_segments') }} as s
inner join targets as t
    on s.experiment_id = t.experiment_id and s.exposure_date <= t.as_of_date
-- a unit without goals keeps one row with a null goal: it is still exposed
left join totals as g
    on s.experiment_id = g.experiment_id and s.unit_type = g.unit_type and s.unit_id = g.unit_id
left join caps as c
    on
        t.as_of_date = c.as_of_date
        and s.experiment_id = c.exp_id
        and {{ ep_unit_type('s.unit_type') }} = c.unit_type
        and g.goal = c.goal
