-- The experiments' assignment rows. The rows serving a shipped experiment's variant through the
-- launch layer (experiment id `shipped:<id>`, strata.contracts.SHIPPED_ROW_PREFIX) are not the
-- experiment's and are left out: experiment ids never contain ':' (the definitions' id pattern).
select
    experiment_id,
    variant_id,
    is_control,
    unit_type,
    unit_id

from {{ source('strata', 'assignments') }}
where instr(experiment_id, ':') = 0
