{#- Cauchy-Schwarz on every aggregate row: a variant's sums must be possible for some set of
    units. With n = count_unique units carrying the goal: sum_value^2 <= n * sum_sqr_value and
    count^2 <= n * sum_sqr_count; and count >= count_unique >= 0. -#}
{% test sums_are_consistent(model) %}
    select *
    from {{ model }}
    where
        count_unique < 0
        or `count` < count_unique
        or pow(sum_value, 2) > count_unique * sum_sqr_value * (1 + 1e-9) + 1e-6
        or pow(`count`, 2) > count_unique * sum_sqr_count * (1 + 1e-9) + 1e-6
{% endtest %}
