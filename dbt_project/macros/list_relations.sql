{#- dbt-spark lists relations with SHOW TABLES when SHOW TABLE EXTENDED is not supported (Iceberg
    v2 tables). Iceberg's catalog lists views apart from tables, so SHOW TABLES misses the
    staging and intermediate views: dbt's relation cache and `dbt docs generate` would not know
    them. This override (same name and result shape: namespace, name, isTemporary) adds the
    schema's persistent views; session temporary views (dbt's __dbt_tmp) are left out. -#}
{% macro list_relations_show_tables_without_caching(schema_relation) %}
    {% call statement('list_relations_without_caching_show_tables', fetch_result=True) -%}
        show tables in {{ schema_relation.schema }} like '*'
    {% endcall %}
    {% set rows = [] %}
    {% for row in load_result('list_relations_without_caching_show_tables').table %}
        {% do rows.append(row) %}
    {% endfor %}
    {% call statement('list_views_without_caching', fetch_result=True) -%}
        show views in {{ schema_relation.schema }} like '*'
    {% endcall %}
    {% for row in load_result('list_views_without_caching').table if not row[2] %}
        {% do rows.append(row) %}
    {% endfor %}
    {% do return(rows) %}
{% endmacro %}
