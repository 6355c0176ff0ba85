-- goal_cross_aggregates per segment: per variant, segment dimension and segment, the sum over
-- units of x_u * y_u for the term pairs of cross_term_pairs (ratio metrics, CUPED), at each
-- experiment's newest analysis date; one dimension at a time like goal_segment_aggregates.
{{ config(materialized='table') }}

{%- set pairs = cross_term_pairs() -%}
{%- set goal_columns = strata_goals_with_covariates() %}

with

units as (

    -- one row per unit with goals: its totals side by side
    -- (two loops in a row: sqlfluff's layout check misplaces their indents)
    -- noqa: disable=LT02
    select
        as_of_date,
        experiment_id,
        variant_id,
        unit_type,
        unit_id,
    {%- for d in segment_dimensions() %}
        max({{ d }}) as {{ d }},
    {%- endfor %}
    {%- for g in goal_columns %}
        sum(case when goal = '{{ g }}' then goal_count else 0 end) as count_{{ g }},
        sum(case when goal = '{{ g }}' then goal_value else 0 end) as value_{{ g }}
        {{- "," if not loop.last }}
    {%- endfor %}
    -- noqa: enable=LT02
    from {{ ref('int_segment_unit_goals') }}
    where goal is not null
    group by as_of_date, experiment_id, variant_id, unit_type, unit_id

),

sums as (

    select
        u.as_of_date,
        u.experiment_id,
        u.variant_id,
        {{ ep_unit_type('u.unit_type') }} as ep_unit_type,
        s.dimension,
        s.segment,
    {%- for fx, gx, fy, gy in pairs %}
        sum(cast(u.{{ fx }}_{{ gx }} * u.{{ fy }}_{{ gy }} as double)) as p{{ loop.index }}
        {{- "," if not loop.last }}
    {%- endfor %}
    from units as u
        {{ lateral_view_segments('u') }}
    group by u.as_of_date, u.experiment_id, u.variant_id, u.unit_type, s.dimension, s.segment

)

select
    as_of_date,
    experiment_id as exp_id,
    variant_id as exp_variant_id,
    dimension,
    segment,
    term.term_x,
    term.term_y,
    term.sum_product

from sums
    lateral view explode(array(
        {%- for fx, gx, fy, gy in pairs %}
            named_struct(
                'term_x', concat('{{ fx }}(', ep_unit_type, '.unit.{{ gx }})'),
                'term_y', concat('{{ fy }}(', ep_unit_type, '.unit.{{ gy }})'),
                'sum_product', p{{ loop.index }}
            ){{ "," if not loop.last }}
        {%- endfor %}
    )) as term
