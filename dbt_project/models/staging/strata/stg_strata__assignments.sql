select
    experiment_id,
    variant_id,
    is_control,
    unit_type,
    unit_id

from {{ source('strata', 'assignments') }}
