{#- The newest arrival already loaded minus the lookback window, as a timestamp literal read
    when the model runs: a literal lets the scan skip the raw files whose arrivals all precede it
    (their min/max statistics), where a subquery made every night read all of raw_events. -#}
{% macro batch_start() -%}
    {%- set sql -%}
        select cast(
            coalesce(max(arrived_at), timestamp '1970-01-01')
            - interval {{ var('lookback_hours') }} hours as string
        )
        from {{ this }}
    {%- endset -%}
    {%- if execute -%}
        timestamp '{{ run_query(sql).columns[0].values()[0] }}'
    {%- else -%}
        timestamp '1970-01-01 00:00:00'
    {%- endif -%}
{%- endmacro %}


{#- Rows of raw_events that a run of `model` must (re)process: all of them on a full build, else
    the arrivals since the newest one already loaded minus the lookback window. -#}
{% macro event_batch(relation) -%}
    select *
    from {{ relation }}
    {% if is_incremental() -%}
    where arrived_at > {{ batch_start() }}
    {%- endif %}
{%- endmacro %}


{#- Why a raw event row is unusable, or null when it is fine. One reason per row, first match wins.
    Goals and value goals come from the goals catalogue (vars `goals`, `value_goals`). -#}
{% macro event_reject_reason() -%}
    case
        when event_id is null then 'missing_event_id'
        when device_id is null then 'missing_device_id'
        when event_at is null then 'missing_event_at'
        when event_name not in (
            {%- for g in strata_goals() %}'{{ g }}'{{ ', ' if not loop.last }}{% endfor -%}
        )
            then 'unknown_event_name'
        {%- for g in strata_var('value_goals') %}
        when event_name = '{{ g }}' and (value is null or value < 0) then 'invalid_{{ g }}_value'
        {%- endfor %}
        when event_at > arrived_at + interval {{ var('max_clock_skew_hours') }} hours
            then 'event_after_arrival'
    end
{%- endmacro %}
