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
    as-of date when given (and nothing after it), else before the newest day already built. -#}
{% macro recompute_window(column) -%}
    {%- set day = as_of_date() -%}
    {%- if day %}
    {{ column }} between date_sub({{ day }}, {{ var('lookback_days') }}) and {{ day }}
    {%- else %}
    {{ column }} >= (
        select date_sub(max({{ column }}), {{ var('lookback_days') }}) from {{ this }}
    )
    {%- endif %}
{%- endmacro %}
