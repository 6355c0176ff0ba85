{#- The day a run computes up to: the `as_of_date` var (the Airflow run's day, so a backfill
    recomputes its own day), or none — then the newest day of data, as a plain `dbt build`. -#}
{% macro as_of_date() -%}
    {%- set day = var('as_of_date', none) -%}
    {%- if day and day | string not in ('None', '') -%}
        {%- set parsed = modules.datetime.date.fromisoformat(day | string) -%}
        date '{{ parsed.isoformat() }}'
    {%- endif -%}
{%- endmacro %}


{#- Incremental runs recompute `lookback_days` of `column` before the run's day: before the
    as-of date when given (and nothing after it), else before the newest day already built
    (the newest `this_column` of the model's table; default `column`). -#}
{% macro recompute_window(column, this_column=none) -%}
    {%- set day = as_of_date() -%}
    {%- if day %}
    {{ column }} between date_sub({{ day }}, {{ var('lookback_days') }}) and {{ day }}
    {%- else %}
    {{ column }} >= (
        select date_sub(max({{ this_column or column }}), {{ var('lookback_days') }})
        from {{ this }}
    )
    {%- endif %}
{%- endmacro %}


{#- The event days an incremental run of fct_unit_goals_daily can attribute (a filter on the
    events' own day `column`, in date literals so the scan reads only those partitions): the
    recompute window, and the `pre_period_days` before the start of every experiment still open
    in it (a unit exposed in the window brings its pre-period events as covariates). -#}
{% macro attributable_event_dates(column) -%}
    {%- set day = as_of_date() -%}
    {%- if day and execute -%}
        {%- set starts = run_query(
            "select distinct cast(start_date as string) from " ~ ref('stg_strata__experiments')
            ~ " where end_date >= date_sub(" ~ day ~ ", " ~ var('lookback_days') ~ ")"
            ~ " and start_date <= " ~ day ~ " order by 1"
        ).columns[0].values() -%}
    ({{ recompute_window(column) }}
        {%- for start in starts %}
        or {{ column }} between date_sub(date '{{ start }}', {{ var('pre_period_days') }})
        and date_sub(date '{{ start }}', 1)
        {%- endfor %})
    {%- else -%}
    true  {#- without an as-of day the window is a query on the model's table: no pruning #}
    {%- endif -%}
{%- endmacro %}


{#- `incremental_predicates` for the merge of a model partitioned by `column` whose runs
    recompute the window's rows only: the destination's rows in the window, so the merge reads
    those partitions of the table instead of every file to find its matches (a night's merge
    then costs the same on 30 or 60 days of history). Exact: the run's rows all fall in the
    window. With an as-of day only (a date literal); without one, the window is a query on the
    table and the merge reads it whole, as before. -#}
{% macro window_merge_predicates(column) -%}
    {%- set day = as_of_date() -%}
    {%- if day -%}
        {{ return([
            'DBT_INTERNAL_DEST.' ~ column ~ ' >= date_sub(' ~ day ~ ', '
            ~ var('lookback_days') ~ ')'
        ]) }}
    {%- endif -%}
    {{ return([]) }}
{%- endmacro %}
