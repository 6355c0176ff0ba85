{#- The capped sums of a row (null unless a metric caps the goal) must be possible for some set
    of units: with n = count_unique units carrying the goal, 0 <= sum_value_capped <= sum_value,
    sum_value_capped <= n * value_cap, and sum_value_capped^2 <= n * sum_sqr_value_capped. -#}
{% test capped_sums_are_consistent(model) %}
    select *
    from {{ model }}
    where
        sum_value_capped < 0
        or value_cap < 0
        or sum_value_capped > sum_value * (1 + 1e-9) + 1e-6
        or sum_value_capped > count_unique * value_cap * (1 + 1e-9) + 1e-6
        or pow(sum_value_capped, 2) > count_unique * sum_sqr_value_capped * (1 + 1e-9) + 1e-6
        or (value_cap is null) != (sum_value_capped is null)
{% endtest %}
