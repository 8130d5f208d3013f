# Two commands a newcomer needs: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint fmt venv skyrl-env redis-check chromium-check clean

venv: $(STAMP)

# torch is installed first and exactly pinned: any looser request lets pip fetch the multi-GB CUDA build.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $(STAMP)

# SkyRL's real RemoteInferenceClient (skyrl 0.3.0) imports only on Python 3.12: a test-only
# environment for tests/rl/test_skyrl_client.py, with skyrl but not its training stack (its client
# needs aiohttp and pydantic). Without a Python 3.12, or if it cannot be built, that test is skipped.
SKYRL_VENV := .venv-skyrl
PYTHON312 ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12; do \
  "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { echo "$$p"; break; }; done)

skyrl-env: $(SKYRL_VENV)/.installed

$(SKYRL_VENV)/.installed:
	@if [ -z "$(PYTHON312)" ]; then 	  echo "note: no Python 3.12 found: the SkyRL client test is skipped (set PYTHON312=/path/to/python3.12)"; 	else 	  { $(PYTHON312) -m venv $(SKYRL_VENV) \
	    && $(SKYRL_VENV)/bin/python -m pip install --quiet --no-deps skyrl==0.3.0 \
	    && $(SKYRL_VENV)/bin/python -m pip install --quiet aiohttp==3.14.5 pydantic==2.14.4 \
	    && touch $@; } \
	  || { echo "warning: could not build $(SKYRL_VENV): the SkyRL client test is skipped" >&2; rm -rf $(SKYRL_VENV); }; 	fi

demo: $(STAMP)
	$(BIN)/legato demo

# Tests start their own redis-server (pytest-redis); they need the binary.
redis-check:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "redis-server not found: installing it with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "The tests need a redis-server binary. Install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis) and run make test again." >&2; \
	    exit 1; \
	  fi; }

# The /docs test renders the API docs in headless Chromium (Debian's chromium + chromium-driver).
chromium-check:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "chromium not found: installing chromium and chromium-driver with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "note: without chromium and chromedriver the /docs browser test is skipped (Debian/Ubuntu: sudo apt-get install chromium chromium-driver)" >&2; \
	  fi; }

lint: $(STAMP)
	$(BIN)/ruff check legato tests examples scripts
	$(BIN)/ruff format --check legato tests examples scripts
	$(BIN)/mypy
	$(BIN)/mypy examples
	$(BIN)/lint-imports

fmt: $(STAMP)
	$(BIN)/ruff check --fix legato tests examples scripts
	$(BIN)/ruff format legato tests examples scripts

test: $(STAMP) skyrl-env redis-check chromium-check lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(SKYRL_VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
