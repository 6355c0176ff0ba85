{#- The (term_x, term_y) pairs whose per-unit product sums goal_cross_aggregates carries, as
    (func_x, goal_x, func_y, goal_y) with term_x < term_y as texts (the stats engine's order):
    - count(g) x value(g) for every goal: ratio metrics like value per buyer;
    - count(g) x count(h) for every two goals: ratio metrics like clicks per session;
    - count(g) x count(pre_g), value(g) x value(pre_g): CUPED with a pre-period covariate. -#}
{% macro cross_term_pairs() -%}
    {%- set goals = strata_goals() | sort -%}
    {%- set pairs = [] -%}
    {%- for g in goals -%}
        {%- do pairs.append(('count', g, 'value', g)) -%}
        {%- do pairs.append(('count', g, 'count', 'pre_' ~ g)) -%}
        {%- do pairs.append(('value', g, 'value', 'pre_' ~ g)) -%}
        {%- for h in goals if h > g -%}
            {%- do pairs.append(('count', g, 'count', h)) -%}
        {%- endfor -%}
    {%- endfor -%}
    {{ return(pairs) }}
{%- endmacro %}
