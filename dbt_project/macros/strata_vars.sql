{#- A var Strata passes to every dbt invocation (strata.contracts.dbt_vars(): the goals catalogue
    include/strata/goals.yaml). The project declares no default, so a run without it fails here
    instead of silently aggregating nothing. While parsing (execute is false) it is an empty list. -#}
{% macro strata_var(name) -%}
    {%- set value = var(name, none) -%}
    {%- if value is none -%}
        {%- if execute -%}
            {{ exceptions.raise_compiler_error(
                "var '" ~ name ~ "' is missing: Strata passes the goals catalogue to dbt as vars; "
                ~ "run dbt through Strata, or by hand with "
                ~ "--vars \"$(python -m strata.contracts)\"") }}
        {%- endif -%}
        {{ return([]) }}
    {%- endif -%}
    {{ return(value) }}
{%- endmacro %}


{#- The goal names the marts aggregate, from the `goals` var. -#}
{% macro strata_goals() -%}
    {{ return(strata_var('goals')) }}
{%- endmacro %}


{#- The goal column's accepted values: every goal and its pre_<goal> covariate. -#}
{% macro strata_goals_with_covariates() -%}
    {%- set names = [] -%}
    {%- for g in strata_goals() -%}
        {%- do names.append(g) -%}
    {%- endfor -%}
    {%- for g in strata_goals() -%}
        {%- do names.append('pre_' ~ g) -%}
    {%- endfor -%}
    {{ return(names) }}
{%- endmacro %}


{#- Every reason event_reject_reason() can give, in its order. -#}
{% macro strata_reject_reasons() -%}
    {%- set reasons = ['missing_event_id', 'missing_device_id', 'missing_event_at',
                       'unknown_event_name'] -%}
    {%- for g in strata_var('value_goals') -%}
        {%- do reasons.append('invalid_' ~ g ~ '_value') -%}
    {%- endfor -%}
    {%- do reasons.append('event_after_arrival') -%}
    {{ return(reasons) }}
{%- endmacro %}
