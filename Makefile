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
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/include/orchestration/plugins
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

.PHONY: help setup demo test test-unit test-fast test-cluster lint format bench airflow airflow-stop redis-start redis-stop clean lock

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# Setup state lives with what it describes. The Airflow database is in AIRFLOW_HOME, so its stamp
# is too: `make clean` or a new STRATA_HOME migrates again. The jars' stamp names the Maven profile
# (`.setup/jars` for none, `.setup/jars-aws` ...): another JVM_PROFILE downloads again.
# A stamp whose subject is gone is stale: the venv's python, a jar in .jars, Airflow's SQLite file.
JARS_STAMP := $(STAMP)/jars$(if $(JVM_PROFILE),-$(JVM_PROFILE))
AIRFLOW_DB_STAMP := $(AIRFLOW_HOME)/.setup-airflow-db
AIRFLOW_DB_FILE := $(if $(AIRFLOW__DATABASE__SQL_ALCHEMY_CONN),,$(AIRFLOW_HOME)/airflow.db)
gone = $(if $(wildcard $(1)),,missing)
.PHONY: missing

DBT_MANIFEST := dbt_project/target/airflow/manifest.json
DBT_SOURCES := dbt_project/dbt_project.yml $(shell find dbt_project/models dbt_project/macros dbt_project/tests -type f 2>/dev/null)

setup: $(STAMP)/system $(STAMP)/python $(JARS_STAMP) $(AIRFLOW_DB_STAMP) $(DBT_MANIFEST)  ## install what is missing (idempotent, quick when done)

$(STAMP)/system: scripts/install-system.sh
	@mkdir -p $(STAMP)
	scripts/install-system.sh
	@touch $@

$(STAMP)/python: requirements.txt constraints.txt pyproject.toml $(call gone,$(PY))
	@mkdir -p $(STAMP)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "pip==26.3"
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	@touch $@

# Downloaded beside .jars and swapped in when complete: a failed download keeps the old jars.
$(JARS_STAMP): jvm/pom.xml $(call gone,.jars/*.jar)
	@mkdir -p $(STAMP)
	rm -f $(STAMP)/jars $(STAMP)/jars-*
	rm -rf .jars.new
	mvn --batch-mode --quiet -f jvm/pom.xml $(if $(JVM_PROFILE),-P$(JVM_PROFILE)) \
	    dependency:copy-dependencies -DoutputDirectory=$(CURDIR)/.jars.new -DexcludeTransitive=true
	rm -rf .jars && mv .jars.new .jars
	@touch $@

$(AIRFLOW_DB_STAMP): $(STAMP)/python $(if $(AIRFLOW_DB_FILE),$(call gone,$(AIRFLOW_DB_FILE)))
	@mkdir -p $(AIRFLOW_HOME)
	$(VENV)/bin/airflow db migrate > /dev/null
	@touch $@

# The manifest Cosmos renders the events DAG from (no `dbt ls` when a DAG file is parsed).
$(DBT_MANIFEST): $(STAMP)/python $(DBT_SOURCES)
	$(PY) -m orchestration.manifest

demo: setup redis-start  ## run the whole pipeline on the embedded stack and print the results
	$(PY) scripts/demo.py

test: setup  ## the full test suite (starts its own Redis on a test port; ~25 min on 2 cores)
	$(PY) -m pytest --durations=25

# The pure tests and the doctests of every package but orchestration (the Airflow layer): no JVM,
# Redis or Airflow. tests/conftest.py marks the others `integration` (by the fixtures they use and
# their folder) and fails a unit run that imported Airflow or started a JVM.
UNIT_PATHS := tests include/strata include/strata_apps spark_jobs lookup_loader expectations
test-unit: $(STAMP)/python  ## the pure tests and doctests alone: no JVM, Redis or Airflow (< 1 min)
	$(PY) -m pytest $(UNIT_PATHS) -m "not integration and not slow and not live and not cluster"

test-fast: setup  ## the suite without the slow end-to-end tests
	$(PY) -m pytest -m "not slow and not cluster"

test-cluster: setup  ## the pipeline on a local Spark cluster + REST catalog + S3 store, compared with local mode (root; ~6 min)
	$(PY) -m pytest tests/cluster -m cluster -p no:cacheprovider

lint: setup  ## ruff check + format check, mypy on include/, sqlfluff on the dbt models
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	PYTHONPATH=$(CURDIR)/include:$(CURDIR) $(VENV)/bin/lint-imports --no-cache --no-logo
	$(VENV)/bin/mypy
	$(VENV)/bin/sqlfluff lint dbt_project/models

format: setup  ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

bench: setup  ## benchmarks under bench/ (figures printed beside their references)
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

airflow: setup redis-start  ## start Airflow on http://127.0.0.1:8080 (STRATA_AIRFLOW_PORT); prints where the password is
	scripts/airflow.sh start

airflow-stop:  ## stop the Airflow components `make airflow` started
	scripts/airflow.sh stop

redis-start:  ## start the local Redis (127.0.0.1:6390, password in .strata/redis/password)
	scripts/redis.sh start

redis-stop:  ## stop the local Redis
	scripts/redis.sh stop

clean: airflow-stop redis-stop  ## stop Airflow and Redis, remove all local data (Iceberg tables, Redis, Airflow home); keeps the venv and jars
	rm -rf $(STRATA_HOME) dbt_project/target dbt_project/logs

lock:  ## re-resolve requirements.txt and rewrite constraints.txt (the full pinned set)
	$(PY) -m pip freeze --exclude-editable | grep -v '^strata' > constraints.txt
