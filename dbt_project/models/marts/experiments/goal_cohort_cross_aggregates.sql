-- goal_cross_aggregates per ramp cohort: per variant, ramp_period and as_of_date, the sum over
-- units of x_u * y_u for the term pairs of cross_term_pairs (ratio metrics, CUPED), for the
-- ramped experiments (int_cohort_unit_goals), like goal_cohort_aggregates.
-- Incremental: a run merges the analysis dates of its recompute window (int_cohort_unit_goals
-- holds their units' totals), reading and rewriting only those dates' partitions.
{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        unique_key=['as_of_date', 'exp_id', 'exp_variant_id', 'ramp_period', 'term_x',
                    'term_y'],
        partition_by=['as_of_date'],
        incremental_predicates=window_merge_predicates('as_of_date'),
    )
}}

{%- set pairs = cross_term_pairs() -%}
{%- set goal_columns = strata_goals_with_covariates() %}

with

units as (

    -- one row per unit with goals: its totals side by side
    -- (a loop after columns: sqlfluff's layout check misplaces its indents)
    -- noqa: disable=LT02
    select
        as_of_date,
        experiment_id,
        variant_id,
        unit_type,
        unit_id,
        ramp_period,
    {%- for g in goal_columns %}
        sum(case when goal = '{{ g }}' then goal_count else 0 end) as count_{{ g }},
        sum(case when goal = '{{ g }}' then goal_value else 0 end) as value_{{ g }}
        {{- "," if not loop.last }}
    {%- endfor %}
    from {{ ref('int_cohort_unit_goals') }}
    where
        goal is not null
        {%- if is_incremental() %}
            and {{ recompute_window('as_of_date') }}
        {%- endif %}
    group by as_of_date, experiment_id, variant_id, unit_type, unit_id, ramp_period
    -- noqa: enable=LT02

),

sums as (

    select
        as_of_date,
        experiment_id,
        variant_id,
        ramp_period,
        {{ ep_unit_type('unit_type') }} as ep_unit_type,
    {%- for fx, gx, fy, gy in pairs %}
        sum(cast({{ fx }}_{{ gx }} * {{ fy }}_{{ gy }} as double)) as p{{ loop.index }}
        {{- "," if not loop.last }}
    {%- endfor %}
    from units
    group by as_of_date, experiment_id, variant_id, unit_type, ramp_period

)

select
    as_of_date,
    experiment_id as exp_id,
    variant_id as exp_variant_id,
    ramp_period,
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
