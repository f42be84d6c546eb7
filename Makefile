# nova — `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
NOVA    = $(BIN)/nova
STAMP   = $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install stack browser demo test test-all test-unit lint bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install nova with its dev tools

stack: install ## Start Kafka, PostgreSQL, clickhouse-server, SeaweedFS and the ClickHouse cluster (idempotent)
	$(NOVA) stack up --with clickhouse-server --with seaweedfs --with clickhouse-cluster

DEMO_EVENTS ?= 1000000
DEMO_RATE   ?= 50000
TOP_MERCHANTS = SELECT merchant_id, any(merchant_name) AS merchant, count() AS transactions, \
	intDiv(sum(amount_reporting_minor), 100) AS volume_eur FROM transactions \
	GROUP BY merchant_id ORDER BY volume_eur DESC LIMIT 10

demo: install ## Fresh machine → stack up, provision, generate 1M events while ingesting them, summary
	$(NOVA) stack up
	$(NOVA) provision --yes
	@mkdir -p .nova/demo
	@echo "generating $(DEMO_EVENTS) transactions at $(DEMO_RATE)/s (log: .nova/demo/generate.log) while ingesting them…"
	$(NOVA) generate --count $(DEMO_EVENTS) --rate $(DEMO_RATE) --seed $$(date +%s) > .nova/demo/generate.log 2>&1 & \
	  gen=$$!; sleep 3; $(NOVA) ingest --until-caught-up; status=$$?; wait $$gen && exit $$status
	$(NOVA) query "$(TOP_MERCHANTS)"
	$(NOVA) status

browser: ## Debian's headless Chromium, which the report tests render pages in
	@command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)

# Two parts: the tests that share nothing, across PARALLEL processes (pytest-xdist, whole files per
# process); then, alone, the `serial` ones (tests/conftest.py: they stop or restart services other
# tests use, or judge SLOs). The second part runs whatever the first gave; the status is the first failure's.
PARALLEL ?= 2
define two_parts
	status=0; \
	$(BIN)/python -m pytest -n $(PARALLEL) --dist loadfile -m "not serial$(1)" || status=$$?; \
	$(BIN)/python -m pytest -m "serial$(1)" || { rc=$$?; [ $$status -ne 0 ] || status=$$rc; }; \
	exit $$status
endef

test: stack browser ## Run the test suite against the real services (chaos tests in their bounded form)
	$(call two_parts, and not long)

test-all: stack browser ## Everything, including the long chaos runs (many stall/kill rounds)
	$(call two_parts,)

test-unit: install ## Only the tests that need no service
	$(BIN)/python -m pytest -m "not integration and not server"

lint: install ## ruff (lint + format check), mypy (strict on pipelines/) and import-linter (the layer boundaries)
	$(BIN)/ruff check cli pipelines tests
	$(BIN)/ruff format --check cli pipelines tests
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

bench: install ## Benchmarks; figures go to docs/BENCHMARKS.md
	$(NOVA) stack up
	$(BIN)/python bench/run.py

clean: ## Stop the stack and remove its state (data too)
	-$(NOVA) stack down
	rm -rf .nova
