# Weelo dispatch backend. `make run` starts everything; `make test` runs the whole suite.
SHELL := /bin/bash
VENV := .venv
TOOLS := .tools
UV ?= $(shell command -v uv 2>/dev/null || echo $(TOOLS)/bin/uv)

.PHONY: run test test-fast lint bench chaos docs venv clean

$(VENV)/.synced: pyproject.toml uv.lock
	@command -v $(UV) >/dev/null 2>&1 || (python3 -m venv $(TOOLS) && $(TOOLS)/bin/pip install -q uv)
	$(UV) sync --frozen --compile-bytecode --python python3
	@touch $@

venv: $(VENV)/.synced

run: venv
	$(VENV)/bin/weelo up

test: venv lint
	$(VENV)/bin/pytest -n 4 --dist loadscope --no-loadscope-reorder

# The pure tests and the fast integration ones (no processes started, no lint): under 30 s.
test-fast: venv
	$(VENV)/bin/pytest -q -m "(pure or integration) and not slow and not chaos"

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

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache
