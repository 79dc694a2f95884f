# Everyday commands. `make run` and `make test` need only Python 3.11 and make:
# they build .venv, and start an embedded PostgreSQL and Redis under instance/ unless
# DATABASE_URL / REDIS_URL point at servers already running. The app's profile defaults
# to production (which refuses to start without real secrets), so each target names its
# own: development and test make their secrets once, in instance/.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
SERVICES := $(BIN)/python scripts/services.py run --
export FLASK_APP := wsgi:app
export PYTHONUNBUFFERED := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test bench bench-scale bench-import profile lock lint format services-up services-down reset clean

# the runtime packages from the lock (as the image and a buildpack install them), then
# the package and its dev tools
$(BIN)/.installed: setup.cfg pyproject.toml requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

## run: the whole service (API on http://127.0.0.1:5000, both workers, beat) with demo data,
## and a local SMTP server: every mail sent is an .eml file under instance/mail/
# scripts/announce.py prints the URLs and the demo logins once everything is up (after
# the processes' own banners); Ctrl-C stops it all and make reports no error.
run: export APP_ENV = development
run: $(BIN)/.installed
	$(BIN)/python scripts/services.py --mail run -- sh -c '$(BIN)/flask db upgrade && $(BIN)/flask seed --demo \
	  && export HOST=127.0.0.1 PORT=$${PORT:-5000} LOG_FORMAT=$${LOG_FORMAT:-text} \
	  && { $(BIN)/python scripts/announce.py & } \
	  && exec $(BIN)/honcho -f Procfile start web worker_short worker_long beat'

## test: the whole suite against real PostgreSQL and Redis, with branch coverage
test: export APP_ENV = test
test: $(BIN)/.installed
	$(SERVICES) $(BIN)/python -m pytest --cov --cov-report=term-missing $(PYTEST_ARGS)

## bench: requests/s and p50/p95/p99 per endpoint under wrk (writes bench/results/)
bench: export APP_ENV = production
bench: $(BIN)/.installed
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null; } || true
	@$(BIN)/python -c "import matplotlib" 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(SERVICES) $(BIN)/python bench/run.py

## bench-scale: the bench at 100,000 users and 2,000,000 posts (BENCH_SCALE) beside the small data set (writes bench/results/scale.md)
bench-scale: export APP_ENV = production
bench-scale: $(BIN)/.installed
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null; } || true
	@$(BIN)/python -c "import matplotlib" 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(SERVICES) $(BIN)/python bench/scale.py

## profile: where one endpoint's time goes (pyinstrument, in-process); PROFILE_PATH=/api/v1/feed?limit=20
profile: export APP_ENV = production
profile: $(BIN)/.installed
	@$(BIN)/python -c "import pyinstrument" 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(SERVICES) $(BIN)/python bench/profile.py

## bench-import: the import job's lines/s beside a raw COPY of the same rows
bench-import: export APP_ENV = development
bench-import: $(BIN)/.installed
	$(SERVICES) sh -c '$(BIN)/flask db upgrade && $(BIN)/python bench/import_throughput.py $(LINES)'

## lock: pin the runtime packages, with hashes, in requirements.txt (newest within setup.cfg's ranges)
lock: $(BIN)/.installed
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/python -m piptools compile --quiet --generate-hashes \
	  --strip-extras --no-emit-index-url --no-emit-find-links --output-file requirements.txt setup.cfg

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache --no-logo

format: $(BIN)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

services-up: $(BIN)/.installed
	@$(BIN)/python scripts/services.py up

services-down: $(BIN)/.installed
	@$(BIN)/python scripts/services.py down

## reset: stop the embedded servers and delete their data (demo data is loaded again)
reset: $(BIN)/.installed
	$(BIN)/python scripts/services.py reset

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .coverage htmlcov
