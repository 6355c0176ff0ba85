-- Winsorization caps of the experiments' metrics (the `cap` option of a metric, stored in the
-- experiments table's metrics JSON): one row per experiment and goal whose per-unit value is
-- capped, with a fixed `cap_value` or a pooled `cap_percentile` (one of them). The definitions
-- allow a cap only on a nominator of one value(<unit>.unit.<goal>) term and one cap per
-- experiment and goal (strata.definitions), so the goal is that term's.
{{ config(materialized='view') }}

with

metrics as (

    select
        experiment_id,
        explode(from_json(
            metrics,
            'array<struct<nominator: string, cap: struct<value: double, percentile: double>>>'
        )) as metric
    from {{ ref('stg_strata__experiments') }}

)

select distinct
    experiment_id,
    nullif(
        regexp_extract(
            metric.nominator, 'value\\s*\\(\\s*\\w+\\s*\\.\\s*unit\\s*\\.\\s*(\\w+)', 1
        ),
        ''
    ) as goal,
    metric.cap.value as cap_value,
    metric.cap.percentile as cap_percentile

from metrics
where metric.cap is not null
