# One image for every Strata process in docker-compose.yml: Airflow, Spark master/worker (from
# pyspark's own launcher), dbt, the lookup loader and the reference endpoint.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless maven redis-tools make nginx \
 && rm -rf /var/lib/apt/lists/*
ENV JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64 \
    STRATA_JARS_DIR=/opt/strata/.jars \
    STRATA_HOME=/var/lib/strata \
    DBT_SEND_ANONYMOUS_USAGE_STATS=false \
    GX_ANALYTICS_ENABLED=false
WORKDIR /opt/strata

COPY requirements.txt constraints.txt ./
RUN pip install --no-cache-dir -r requirements.txt -c constraints.txt \
      "apache-airflow-providers-celery==3.26.0" "apache-airflow-providers-postgres" psycopg2-binary
COPY jvm/pom.xml jvm/pom.xml
RUN mvn -B -q -f jvm/pom.xml -Paws dependency:copy-dependencies \
      -DoutputDirectory=/opt/strata/.jars -DexcludeTransitive=true
COPY . .
RUN pip install --no-cache-dir --no-deps -e . \
 && ln -s "$(python -c 'import pyspark, os; print(os.path.dirname(pyspark.__file__))')/bin/spark-class" /usr/local/bin/spark-class
