# Weelo dispatch backend. `make run` starts everything; `make test` runs the whole suite.
SHELL := /bin/bash
VENV := .venv
TOOLS := .tools
UV ?= $(shell command -v uv 2>/dev/null || echo $(TOOLS)/bin/uv)

.PHONY: run demo test test-fast lint bench chaos docs venv venv-run clean

# Bytecode caches for the checkout's own modules (gitignored `__pycache__/`), and pytest's
# rewritten test modules with them, even where the shell sets PYTHONDONTWRITEBYTECODE: without
# them every `weelo run` and every pytest session compiles libs/, services/ and tests/ again
# (2.4 s of each collection here, and part of every service process's start).
unexport PYTHONDONTWRITEBYTECODE

# Two installs into one .venv: what running needs (`make run`: the runtime dependencies and the
# `local` group, the embedded PostgreSQL and Redis: about 40 packages) and everything (`make test`,
# `make lint`: the dev group too, the CI toolchain). A full install also satisfies `make run`.
SYNC = UV_PROJECT_ENVIRONMENT=$(abspath $(VENV)) $(UV) sync --frozen --compile-bytecode --python python3

$(TOOLS)/.uv:
	@command -v $(UV) >/dev/null 2>&1 || { echo "make: uv is not on PATH: installing it into $(TOOLS)/"; \
		python3 -m venv $(TOOLS) && $(TOOLS)/bin/pip install -q uv; }
	@mkdir -p $(TOOLS) && touch $@

$(VENV)/.synced-run: pyproject.toml uv.lock | $(TOOLS)/.uv
	@echo "make: installing what running needs into $(VENV): the runtime and the embedded PostgreSQL and Redis (no dev tools)"
	$(SYNC) --no-default-groups --group local --inexact
	@touch $@

$(VENV)/.synced: pyproject.toml uv.lock | $(TOOLS)/.uv
	@echo "make: installing the runtime and the development and CI tools into $(VENV)"
	$(SYNC)
	@touch $@ $(VENV)/.synced-run

venv: $(VENV)/.synced

venv-run: $(VENV)/.synced-run

run: venv-run
	@echo "make: starting weelo (Ctrl-C stops it); it prints \"weelo is up\" once every service answers"
	$(VENV)/bin/weelo up

# A demo fleet around Bengaluru and a signed-in link per screen (README "Try it"); starts
# `weelo up` in the background first when nothing answers on GATEWAY_PORT.
demo: venv-run  # only the standard library and the runtime: no dev tools
	$(VENV)/bin/weelo demo --start

# The linters run beside the suite (scripts/test.sh); their output follows the suite's.
test: venv
	VENV=$(VENV) scripts/test.sh

# The pure tests and the fast integration ones (no processes started, no lint): under 30 s. On
# three workers even on two cores: about half of the serial run's time is tests waiting (a
# timeout, a lock, a refresh interval), which another worker's tests fill.
test-fast: venv
	$(VENV)/bin/pytest -q -n 3 -m "(pure or integration) and not slow and not chaos"

lint: venv
	$(VENV)/bin/ruff check libs services tests bench chaos
	$(VENV)/bin/ruff format --check libs services tests bench chaos
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	@if [ -x scripts/lint-deploy.sh ]; then scripts/lint-deploy.sh; fi

bench: venv
	$(VENV)/bin/python -m bench $(SCENARIOS)

# The chaos soak: 10 minutes by default (CHAOS_SECONDS to change); the report goes into
# docs/reliability.md. CHAOS_SEED reruns a given seed.
chaos: venv
	$(VENV)/bin/python -m chaos --seconds $${CHAOS_SECONDS:-600} $${CHAOS_SEED:+--seed $$CHAOS_SEED} --report docs/reliability.md

docs: venv
	$(VENV)/bin/weelo docs events > docs/events.md
	$(VENV)/bin/python -m services.gateway.asyncapi --markdown > docs/websocket.md
	$(VENV)/bin/python -m services.gateway.openapi > docs/openapi.json

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache
