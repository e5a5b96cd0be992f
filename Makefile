# The two commands a newcomer needs (README):
#   make run    set up and run the node on the embedded defaults
#   make test   set up everything the tests need and run them
.PHONY: setup setup-python run test lint clean

VENV ?= .venv
PY := $(VENV)/bin/python

setup:
	bash scripts/setup.sh

setup-python:
	SKIP_APT=1 bash scripts/setup.sh

run: setup-python
	$(VENV)/bin/echo-agent demo

test: setup
	bash scripts/ensure-services.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup-python
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
