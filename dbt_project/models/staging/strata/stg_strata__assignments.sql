-- The experiments' assignment rows. The rows serving a shipped experiment's variant through the
-- launch layer (experiment id `shipped:<id>`, strata.contracts.SHIPPED_ROW_PREFIX) are not the
-- experiment's and are left out: experiment ids never contain ':' (the definitions' id pattern).
-- ramp_period: the unit's ramp cohort (the period of its experiment's ramp it was first assigned
-- in, 0 without a ramp); 0 for every row of a table written before ramps (no such column).
{%- set has_ramp_period = false %}
{%- if execute %}
    {%- set columns = adapter.get_columns_in_relation(source('strata', 'assignments')) %}
    {%- set has_ramp_period = 'ramp_period' in columns | map(attribute='name') | list %}
{%- endif %}

select
    experiment_id,
    variant_id,
    is_control,
    unit_type,
    unit_id,
    {% if has_ramp_period -%}
        coalesce(ramp_period, 0)
    {%- else -%}
        0
    {%- endif %} as ramp_period

from {{ source('strata', 'assignments') }}
where instr(experiment_id, ':') = 0
