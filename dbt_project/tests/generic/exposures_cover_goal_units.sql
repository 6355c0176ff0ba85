{#- Only exposed units can carry goals: for every variant and day, the units with any goal are
    at most the exposed units. -#}
{% test exposures_cover_goal_units(model) %}
    with goals as (
        select as_of_date, exp_id, exp_variant_id, unit_type, max(count_unique) as units_with_goal
        from {{ model }}
        where agg_type = 'unit' and platform = ''
        group by as_of_date, exp_id, exp_variant_id, unit_type
    ),
    exposures as (
        select as_of_date, exp_id, exp_variant_id, unit_type, count_unique as exposed
        from {{ model }}
        where agg_type = 'global' and goal = 'exposure'
    )
    select g.*, e.exposed
    from goals as g
    left join exposures as e
        on g.as_of_date = e.as_of_date and g.exp_id = e.exp_id
        and g.exp_variant_id = e.exp_variant_id and g.unit_type = e.unit_type
    where e.exposed is null or g.units_with_goal > e.exposed
{% endtest %}
