# The README's commands. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: run test lint bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Development: SQLite in instance/, mail as .eml files in instance/outbox/, read at /_mailbox.
run: export NEWSLETTER_ENV = development
run: export NEWSLETTER_BASE_URL ?= http://$(HOST):$(PORT)
run: $(STAMP)
	$(BIN)/newsletter init-db
	$(BIN)/newsletter seed-demo
	@echo "Web app on http://$(HOST):$(PORT)/  -  mailbox on http://$(HOST):$(PORT)/_mailbox"
	@$(BIN)/newsletter worker & worker=$$!; \
	trap 'kill $$worker 2>/dev/null; wait $$worker 2>/dev/null' EXIT INT TERM; \
	$(BIN)/newsletter run --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check newsletter

bench: $(STAMP)
	$(BIN)/python bench/subscribe.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
