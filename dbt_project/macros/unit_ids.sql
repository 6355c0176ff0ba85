{#- A LATERAL VIEW giving each row of `alias` one row per unit id it carries, as columns
    u.unit_type and u.unit_id: the unit types are the names of its id columns (device_id,
    user_id, url). Rows whose id is null come out with a null unit_id; filter them. -#}
{% macro lateral_view_unit_ids(alias, unit_types) -%}
lateral view inline(array(
    {%- for unit_type in unit_types %}
    named_struct('unit_type', '{{ unit_type }}', 'unit_id', {{ alias }}.{{ unit_type }})
    {{- "," if not loop.last }}
    {%- endfor %}
)) u as unit_type, unit_id
{%- endmacro %}
