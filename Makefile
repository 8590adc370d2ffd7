# The README's commands. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: run run-prod test drills lint bench install clean translations

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The language catalogues (docs/languages.md): the .po files are kept in git, the compiled
# .mo files are made here, at install, and again whenever a .po changes.
TRANSLATIONS := newsletter/translations
CATALOGUES := $(patsubst %.po,%.mo,$(wildcard $(TRANSLATIONS)/*/LC_MESSAGES/messages.po))

$(TRANSLATIONS)/%/LC_MESSAGES/messages.mo: $(TRANSLATIONS)/%/LC_MESSAGES/messages.po $(STAMP)
	$(BIN)/pybabel compile -l $* -i $< -o $@

install: $(STAMP) $(CATALOGUES)

# After a change of the texts in code or templates: extract them, merge them into each
# language's .po (new ones come in empty), compile.
translations: $(STAMP)
	$(BIN)/pybabel extract -F $(TRANSLATIONS)/babel.cfg -k lazy_gettext --sort-by-file \
	  --project newsletter -o $(TRANSLATIONS)/messages.pot newsletter templates
	$(BIN)/pybabel update -i $(TRANSLATIONS)/messages.pot -d $(TRANSLATIONS) --ignore-obsolete
	$(BIN)/pybabel compile -d $(TRANSLATIONS) --statistics

# Development: SQLite in instance/, mail as .eml files in instance/outbox/, read at /_mailbox.
run: export NEWSLETTER_ENV = development
run: export NEWSLETTER_BASE_URL ?= http://$(HOST):$(PORT)
run: $(STAMP) $(CATALOGUES)
	$(BIN)/newsletter dev-instance --base-url "$$NEWSLETTER_BASE_URL"
	$(BIN)/newsletter init-db
	$(BIN)/newsletter seed-demo
	@echo "Web app on http://$(HOST):$(PORT)/  -  mailbox on http://$(HOST):$(PORT)/_mailbox"
	@$(BIN)/newsletter worker & worker=$$!; \
	trap 'kill $$worker 2>/dev/null; wait $$worker 2>/dev/null' EXIT INT TERM; \
	$(BIN)/newsletter run --host $(HOST) --port $(PORT)

# Production on this machine: PostgreSQL and Redis on their usual local ports, migrations,
# gunicorn (gunicorn.conf.py) and two workers; Ctrl-C stops them all (docs/production.md).
# NEWSLETTER_SECRET_KEY and NEWSLETTER_BASE_URL come from the environment; without them, a
# local trial: a key kept in instance/production-secret-key and https://localhost:8443 with a
# self-signed certificate made into instance/.
PROD_DATABASE_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/newsletter
PROD_REDIS_URL ?= redis://127.0.0.1:6379/0
PROD_PORT ?= 8443
run-prod: export NEWSLETTER_ENV = production
run-prod: export NEWSLETTER_DATABASE_URL ?= $(PROD_DATABASE_URL)
run-prod: export NEWSLETTER_REDIS_URL ?= $(PROD_REDIS_URL)
run-prod: export NEWSLETTER_INSTANCE_PATH ?= $(CURDIR)/instance
run-prod: export PROMETHEUS_MULTIPROC_DIR ?= $(NEWSLETTER_INSTANCE_PATH)/prometheus
run-prod: $(STAMP) $(CATALOGUES)
	@set -e; umask 077; mkdir -p "$$PROMETHEUS_MULTIPROC_DIR"; \
	$(BIN)/python -m newsletter.trial database "$$NEWSLETTER_DATABASE_URL"; \
	if [ -z "$$NEWSLETTER_SECRET_KEY" ]; then \
	  NEWSLETTER_SECRET_KEY=$$($(BIN)/python -m newsletter.trial secret-key "$$NEWSLETTER_INSTANCE_PATH/production-secret-key"); \
	  export NEWSLETTER_SECRET_KEY; \
	fi; \
	tls=""; \
	if [ -z "$$NEWSLETTER_BASE_URL" ]; then \
	  set -- $$($(BIN)/python -m newsletter.trial certificate "$$NEWSLETTER_INSTANCE_PATH"); \
	  tls="--certfile $$1 --keyfile $$2"; \
	  export NEWSLETTER_BASE_URL=https://localhost:$(PROD_PORT); \
	  export NEWSLETTER_BIND=$${NEWSLETTER_BIND:-127.0.0.1:$(PROD_PORT)}; \
	fi; \
	$(BIN)/newsletter db upgrade; \
	$(BIN)/gunicorn -c gunicorn.conf.py $$tls & web=$$!; \
	$(BIN)/newsletter worker & worker1=$$!; \
	$(BIN)/newsletter worker & worker2=$$!; \
	trap 'kill -TERM $$web $$worker1 $$worker2 2>/dev/null; wait $$web $$worker1 $$worker2 2>/dev/null' EXIT INT TERM; \
	echo "Production stack: $$NEWSLETTER_BASE_URL (gunicorn pid $$web, workers $$worker1 $$worker2); Ctrl-C stops it."; \
	wait $$web

# One pytest process per core (pytest-xdist); each has its own PostgreSQL and Redis database.
# The drills that take over a minute are left out (`long`); `make drills` runs them.
test: $(STAMP) $(CATALOGUES)
	$(BIN)/pytest -n auto -m "not long"

# The fault drills, long ones too, one at a time on servers of their own (docs/drills.md).
drills: $(STAMP) $(CATALOGUES)
	$(BIN)/pytest tests/drills -m drill

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check newsletter

bench: $(STAMP)
	$(BIN)/python bench/subscribe.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
