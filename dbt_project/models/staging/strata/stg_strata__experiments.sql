-- Experiment windows: an event counts if it happened in [starts_at, ends_at); and the metrics
-- (JSON, as the definitions store them) for the metric options dbt applies (caps).
select
    experiment_id,
    unit_type,
    {{ ep_unit_type('unit_type') }} as ep_unit_type,
    start_date,
    end_date,
    cast(start_date as timestamp) as starts_at,
    cast(date_add(end_date, 1) as timestamp) as ends_at,
    metrics

from {{ source('strata', 'experiments') }}
