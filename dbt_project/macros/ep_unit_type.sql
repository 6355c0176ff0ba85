{#- Strata's unit types (device_id, user_id, url) as ep-stats names them in metric expressions
    (`count(user.unit.click)`): device, user, url. -#}
{% macro ep_unit_type(column) -%}
    case {{ column }}
        when 'device_id' then 'device'
        when 'user_id' then 'user'
        else {{ column }}
    end
{%- endmacro %}
