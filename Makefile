# Strata's front door. `make demo` and `make test` set up whatever is missing first (make setup).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := .setup
JVM_PROFILE ?=

export STRATA_HOME ?= $(CURDIR)/.strata
export AIRFLOW_HOME ?= $(STRATA_HOME)/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__API__HOST := 127.0.0.1
export DBT_SEND_ANONYMOUS_USAGE_STATS := false
export GX_ANALYTICS_ENABLED := false
# No telemetry leaves the machine: Airflow usage data, Cosmos (Scarf), dbt.
export AIRFLOW__USAGE_DATA_COLLECTION__ENABLED := False
export AIRFLOW__COSMOS__ENABLE_TELEMETRY := False
export DO_NOT_TRACK := 1
export SCARF_ANALYTICS := false
export SPARK_LOCAL_IP := 127.0.0.1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help setup demo test test-fast test-cluster lint format bench airflow redis-start redis-stop clean lock

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(STAMP)/system $(STAMP)/python $(STAMP)/jars $(STAMP)/airflow-db  ## install what is missing (idempotent, quick when done)

$(STAMP)/system: scripts/install-system.sh
	@mkdir -p $(STAMP)
	scripts/install-system.sh
	@touch $@

$(STAMP)/python: requirements.txt constraints.txt pyproject.toml
	@mkdir -p $(STAMP)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "pip==26.3"
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	@touch $@

$(STAMP)/jars: jvm/pom.xml
	@mkdir -p $(STAMP)
	rm -rf .jars
	mvn --batch-mode --quiet -f jvm/pom.xml $(if $(JVM_PROFILE),-P$(JVM_PROFILE)) \
	    dependency:copy-dependencies -DoutputDirectory=$(CURDIR)/.jars -DexcludeTransitive=true
	@touch $@

$(STAMP)/airflow-db: $(STAMP)/python
	$(VENV)/bin/airflow db migrate > /dev/null
	@touch $@

demo: setup redis-start  ## run the whole pipeline on the embedded stack and print the results
	$(PY) scripts/demo.py

test: setup  ## the full test suite (starts its own Redis on a test port; ~5 min)
	$(PY) -m pytest

test-fast: setup  ## the suite without the slow end-to-end tests
	$(PY) -m pytest -m "not slow"

test-cluster: setup  ## the pipeline on a local Spark cluster + REST catalog + S3 store, compared with local mode (root; ~6 min)
	$(PY) -m pytest tests/cluster -m cluster -p no:cacheprovider

lint: setup  ## ruff check + format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup  ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

bench: setup  ## benchmarks under bench/ (figures printed beside their references)
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

airflow: setup redis-start  ## the Airflow UI on http://127.0.0.1:8080 (api-server, scheduler, dag-processor)
	$(VENV)/bin/airflow standalone

redis-start:  ## start the local Redis (127.0.0.1:6390, password in .strata/redis/password)
	scripts/redis.sh start

redis-stop:  ## stop the local Redis
	scripts/redis.sh stop

clean: redis-stop  ## remove all local data (Iceberg tables, Redis, Airflow home); keeps the venv and jars
	rm -rf $(STRATA_HOME) dbt_project/target dbt_project/logs

lock:  ## re-resolve requirements.txt and rewrite constraints.txt (the full pinned set)
	$(PY) -m pip freeze --exclude-editable | grep -v '^strata' > constraints.txt
