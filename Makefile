# Two commands for a fresh clone: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Test files run in parallel processes: most of the suite waits on real processes, servers and
# timeouts (about 4.5 min of CPU in 15 min alone), so more workers than cores pay. A file's tests
# stay on one worker (fixed ports such as the demo's).
TEST_WORKERS ?= 4

.PHONY: demo test lint venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: venv  ## the real pipeline against local stand-ins of Nat, User.com and Segment
	$(BIN)/python -m syncd.dev.demo

test: venv  ## the test suite (PostgreSQL and MySQL tests run when SYNCD_TEST_POSTGRES_URL and SYNCD_TEST_MYSQL_URL are set)
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) examples/*.db examples/*.db-* syncd-state.db syncd-state.db-wal syncd-state.db-shm
