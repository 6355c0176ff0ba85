{#- dbt-spark's merge, plus the destination floor of a model that sets
    `meta: {merge_floor: batch_event_date}` (stg_events__events): a date literal read when the
    model runs, which a config (rendered at parse time) cannot hold. Every merge, with or without
    it, is dbt-spark's own (`dbt.spark__get_merge_sql`). -#}
{% macro spark__get_merge_sql(target, source, unique_key, dest_columns, incremental_predicates) %}
    {%- set predicates = [] + (incremental_predicates or []) -%}
    {%- if config.get('meta', {}).get('merge_floor') == 'batch_event_date' -%}
        {%- do predicates.append('DBT_INTERNAL_DEST.event_date >= ' ~ batch_event_date_floor()) -%}
    {%- endif -%}
    {{ return(dbt.spark__get_merge_sql(
        target, source, unique_key, dest_columns, predicates
    )) }}
{% endmacro %}


{#- The earliest event day of the raw rows staging's batch reads (its arrivals since the newest
    one loaded minus `lookback_hours`), as a date literal: the merge on event_id then reads the
    staged events of that day and after, not every partition of the table, so a night's merge
    costs the same on 30 or 60 days of history. A redelivery is the same event: its event day is
    its first delivery's, which is on or after that floor, so it still matches (a resend stamped
    on a later day than its first delivery is the one case a floor could miss; the
    `unique` test on event_id would fail loudly). An empty batch: the newest day, nothing to
    match. -#}
{% macro batch_event_date_floor() -%}
    {%- set sql -%}
        select cast(coalesce(min(cast(event_at as date)), current_date()) as string)
        from ({{ event_batch(source('events', 'raw_events')) }}) as batch
    {%- endset -%}
    {%- if execute -%}
        date '{{ run_query(sql).columns[0].values()[0] }}'
    {%- else -%}
        date '0001-01-01'
    {%- endif -%}
{%- endmacro %}
