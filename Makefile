# The two commands a user runs: `make serve` and `make test`.
SHELL := /bin/bash
VENV := .venv/bin
HOST ?= 127.0.0.1
PORT ?= 7420
DATA_DIR ?= /var/lib/sandbank

.PHONY: install install-test install-bench serve test lint unit e2e bench sync clean

install:
	@scripts/install.sh server

install-test:
	@scripts/install.sh test

install-bench:
	@scripts/install.sh bench

serve: install
	$(VENV)/sandbank serve --host $(HOST) --port $(PORT) --data-dir $(DATA_DIR)

lint: install-test
	$(VENV)/ruff check src tests bench scripts
	$(VENV)/mypy src/sandbank
	$(VENV)/lint-imports
	$(VENV)/python scripts/gen_sync.py --check
	$(VENV)/python scripts/export_openapi.py --check

test: install-test lint
	$(VENV)/pytest -q -p no:cacheprovider

bench: install-bench install-test
	$(VENV)/python bench/tti.py
	$(VENV)/python bench/exec_rtt.py
	$(VENV)/python bench/net.py
	$(VENV)/python bench/lifecycle.py
	$(VENV)/python bench/pty.py
	$(VENV)/python bench/stream.py
	$(VENV)/python bench/checkpoint.py

# Regenerate the sync SDK from the async source.
sync: install-test
	$(VENV)/python scripts/gen_sync.py

clean:
	rm -rf .venv build src/*.egg-info
