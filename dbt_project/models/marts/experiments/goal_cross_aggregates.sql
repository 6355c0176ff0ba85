-- Per variant and analysis date, sums over units of products of two per-unit terms
-- (sum_product = sum_u x_u * y_u), cumulative like goal_aggregates. The statistics engine needs
-- them for the covariance in ratio metrics (delta method) and for CUPED; the pairs are listed
-- by the cross_term_pairs macro. Terms are ep-stats texts, e.g. count(user.unit.purchase).
-- Windows list unit_id first so Spark's sort prefix separates rows (see goal_aggregates).
-- Incremental runs window over each unit's running totals (fct_unit_goal_state, dated on its
-- day, before every date the run recomputes) and the daily rows after it, not over every daily
-- row since the start (macro unit_goal_rows): same sums, a night's cost flat in the history.
-- depends_on: {{ ref('fct_unit_goal_state') }}
{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        unique_key=['as_of_date', 'exp_id', 'exp_variant_id', 'term_x', 'term_y'],
        partition_by=['as_of_date'],
        incremental_predicates=window_merge_predicates('as_of_date'),
    )
}}

{%- set pairs = cross_term_pairs() -%}
{%- set goal_columns = [] -%}
{%- for g in strata_goals() -%}
    {%- do goal_columns.append(g) -%}
    {%- do goal_columns.append('pre_' ~ g) -%}
{%- endfor %}

with

unit_days as (

    select
        experiment_id,
        variant_id,
        unit_type,
        unit_id,
        event_date,
    {%- for g in goal_columns %}
        sum(case when goal = '{{ g }}' then goal_count else 0 end) as count_{{ g }},
        sum(case when goal = '{{ g }}' then goal_value else 0 end) as value_{{ g }}
        {{- "," if not loop.last }}
    {%- endfor %}
    from {{ unit_goal_rows() }}
    group by experiment_id, variant_id, unit_type, unit_id, event_date

),

cumulative as (

    select
        experiment_id,
        variant_id,
        unit_type,
        unit_id,
        event_date,
    {%- for g in goal_columns %}
        sum(count_{{ g }}) over unit_history as count_{{ g }},
        sum(value_{{ g }}) over unit_history as value_{{ g }}
        {{- "," if not loop.last }}
    {%- endfor %}
    from unit_days
    window unit_history as (
        partition by unit_id, unit_type, experiment_id, variant_id
        order by event_date
        rows between unbounded preceding and current row
    )

),

products as (

    select
        experiment_id,
        variant_id,
        unit_type,
        unit_id,
        event_date,
    {%- for fx, gx, fy, gy in pairs %}
        {{ fx }}_{{ gx }} * {{ fy }}_{{ gy }} as p{{ loop.index }}
        {{- "," if not loop.last }}
    {%- endfor %}
    from cumulative

),

unit_increments as (

    -- the change of each unit's product on the days it moves: x_t*y_t - x_(t-1)*y_(t-1)
    select
        experiment_id,
        variant_id,
        unit_type,
        event_date,
    {%- for pair in pairs %}
        p{{ loop.index }} - coalesce(lag(p{{ loop.index }}) over unit_history, 0)
            as d{{ loop.index }}
        {{- "," if not loop.last }}
    {%- endfor %}
    from products
    window unit_history as (
        partition by unit_id, unit_type, experiment_id, variant_id order by event_date
    )

),

increments as (

    select
        experiment_id,
        variant_id,
        {{ ep_unit_type('unit_type') }} as ep_unit_type,
        event_date,
    {%- for pair in pairs %}
        sum(d{{ loop.index }}) as d{{ loop.index }}
        {{- "," if not loop.last }}
    {%- endfor %}
    from unit_increments
    group by experiment_id, variant_id, unit_type, event_date

),

long_increments as (

    select
        experiment_id,
        variant_id,
        event_date,
        term.term_x,
        term.term_y,
        term.d
    from increments
        lateral view explode(array(
            {%- for fx, gx, fy, gy in pairs %}
                named_struct(
                    'term_x', concat('{{ fx }}(', ep_unit_type, '.unit.{{ gx }})'),
                    'term_y', concat('{{ fy }}(', ep_unit_type, '.unit.{{ gy }})'),
                    'd', cast(d{{ loop.index }} as double)
                ){{ "," if not loop.last }}
            {%- endfor %}
        )) as term

),

targets as (

    select * from {{ ref('int_analysis_dates') }}
    {% if is_incremental() -%}
        where {{ recompute_window('as_of_date') }}
    {%- endif %}

)

select
    t.as_of_date,
    i.experiment_id as exp_id,
    i.variant_id as exp_variant_id,
    i.term_x,
    i.term_y,
    sum(i.d) as sum_product

from targets as t
inner join long_increments as i
    on t.experiment_id = i.experiment_id and t.as_of_date >= i.event_date
group by t.as_of_date, i.experiment_id, i.variant_id, i.term_x, i.term_y
