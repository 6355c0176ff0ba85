-- One row per experiment served to a unit, flattened from the seed-004 LOG event.
select
    mid as log_id,
    timestamp_millis(ets) as served_at,
    served.experimentId as experiment_id,
    cast(served.variantId as int) as variant_id,
    served.deviceId as device_id,
    nullif(served.userId, '') as user_id,
    nullif(served.url, '') as url

from {{ source('strata', 'exposure_logs') }}
    lateral view explode(edata.params) as served
where served.title = 'experiment'
