{#- The day fct_unit_goal_state holds its units' totals through: the day before the first day
    the run recomputes, which no later run recomputes either. With an as-of day, that day minus
    `lookback_days` minus one; without, the newest day of fct_unit_goals_daily likewise, or the
    newest day of the cumulative marts (whose windows start there) when that is earlier. -#}
{% macro state_day() -%}
    {%- set day = as_of_date() -%}
    {%- set gap = var('lookback_days') + 1 -%}
    {%- if day -%}
        {{ return('date_sub(' ~ day ~ ', ' ~ gap ~ ')') }}
    {%- endif -%}
    {%- set newest = '(select max(event_date) from ' ~ ref('fct_unit_goals_daily') ~ ')' -%}
    {%- if execute and is_incremental() -%}
        {%- for name in ['goal_aggregates', 'goal_cross_aggregates'] -%}
            {%- set mart = adapter.get_relation(this.database, this.schema, name) -%}
            {%- if mart is not none -%}
                {%- set newest = 'least(' ~ newest ~ ', (select max(as_of_date) from ' ~ mart
                    ~ '))' -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{ return('date_sub(' ~ newest ~ ', ' ~ gap ~ ')') }}
{%- endmacro %}


{#- Whether the state table `relation` holds a later day than `day` (a backfill): then the run
    rebuilds it up to `day`. -#}
{% macro state_is_ahead(relation, day) -%}
    {%- if not execute -%}
        {{ return(false) }}
    {%- endif -%}
    {%- set found = run_query(
        'select coalesce(max(through_date) > ' ~ day ~ ', false) from ' ~ relation
    ) -%}
    {{ return(found.columns[0].values()[0]) }}
{%- endmacro %}


{#- The day a running state table (fct_unit_goal_state) holds its units' totals through: a date
    literal read when the model runs (so the rows after it are pruned by partition), the
    earliest date when the table is empty. -#}
{% macro state_through_date(relation) -%}
    {%- if execute -%}
        {%- set found = run_query(
            "select cast(coalesce(max(through_date), date '0001-01-01') as string) from "
            ~ relation
        ) -%}
        date '{{ found.columns[0].values()[0] }}'
    {%- else -%}
        date '0001-01-01'
    {%- endif -%}
{%- endmacro %}


{#- The per-unit daily goal rows (fct_unit_goals_daily's columns) a cumulative mart windows
    over. A full build: every daily row. An incremental run: each unit's running totals
    (fct_unit_goal_state: one row per unit, goal and platform, dated on the state's day, which
    is before every date the run recomputes) and the daily rows after the state's day. Cumulative
    sums, squares and first rows come out the same either way, and a night reads the units'
    state and the new days instead of the whole history. A model calling this declares
    `-- depends_on: {{ ref('fct_unit_goal_state') }}` (dbt parses it as a full build). -#}
{% macro unit_goal_rows() -%}
    {%- if is_incremental() -%}
        {%- set state = ref('fct_unit_goal_state') -%}
        (
            select
                experiment_id,
                variant_id,
                unit_type,
                unit_id,
                goal,
                platform,
                through_date as event_date,
                goal_count,
                goal_value
            from {{ state }}
            where first_date is not null
            union all
            select
                experiment_id,
                variant_id,
                unit_type,
                unit_id,
                goal,
                platform,
                event_date,
                goal_count,
                goal_value
            from {{ ref('fct_unit_goals_daily') }}
            where event_date > {{ state_through_date(state) }}
        )
    {%- else -%}
        {{ ref('fct_unit_goals_daily') }}
    {%- endif -%}
{%- endmacro %}


{#- Each unit's goal totals as rows to sum: the running state `state` (fct_unit_goal_state, or
    none: then every daily row) with no date, so its rows count on every analysis date, plus the
    daily rows after its day (columns experiment_id, unit_type, unit_id, goal, goal_count,
    goal_value, event_date). For the models that sum a unit's totals up to an analysis date on
    or after the state's day (int_segment_unit_goals, int_cohort_unit_goals): an experiment that
    ended before the state's day has no daily rows after its end, so its state is its total. -#}
{% macro unit_goal_totals_rows(state) -%}
    (
        select
            experiment_id,
            unit_type,
            unit_id,
            goal,
            goal_count,
            goal_value,
            event_date
        from {{ ref('fct_unit_goals_daily') }}
        {%- if state is not none %}
        where event_date > {{ state_through_date(state) }}
        union all
        select
            experiment_id,
            unit_type,
            unit_id,
            goal,
            goal_count,
            goal_value,
            cast(null as date) as event_date
        from {{ state }}
        where first_date is not null
        {%- endif %}
    )
{%- endmacro %}
