{#- The segment dimensions (strata.contracts.SEGMENT_DIMENSIONS, passed as the
    `segment_dimensions` var): each is a column of int_unit_segments, which computes it. A name
    int_unit_segments does not compute fails the compilation here, naming it. -#}
{% macro segment_dimensions() -%}
    {%- set known = ['country', 'platform', 'app_version_major', 'visitor', 'plan'] -%}
    {%- set names = strata_var('segment_dimensions') -%}
    {%- for name in names if name not in known -%}
        {{ exceptions.raise_compiler_error(
            "segment dimension '" ~ name ~ "' (var segment_dimensions) is not computed by "
            ~ "int_unit_segments; it computes " ~ known | join(', ')) }}
    {%- endfor -%}
    {{ return(names) }}
{%- endmacro %}


{#- A LATERAL VIEW giving each unit row of `alias` one row per segment dimension, as columns
    s.dimension and s.segment: one dimension at a time, never their cross product. -#}
{% macro lateral_view_segments(alias) -%}
lateral view inline(array(
    {%- for d in segment_dimensions() %}
    named_struct('dimension', '{{ d }}', 'segment', {{ alias }}.{{ d }})
    {{- "," if not loop.last }}
    {%- endfor %}
)) s as dimension, segment
{%- endmacro %}
