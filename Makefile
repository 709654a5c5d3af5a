# Two commands for a fresh clone: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: venv  ## the real pipeline against local stand-ins of Nat and User.com
	$(BIN)/python -m syncd.dev.demo

test: venv  ## the test suite (PostgreSQL and MySQL tests run when SYNCD_TEST_POSTGRES_URL and SYNCD_TEST_MYSQL_URL are set)
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) examples/*.db examples/*.db-* syncd-state.db syncd-state.db-wal syncd-state.db-shm
