# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU build that lies on this machine's disk; an open range can
# pull a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0

.PHONY: setup demo test durations lint docs clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	@# uv installs in a minute what pip takes minutes for, to the same versions; pip where uv
	@# cannot be had. Both look for torch first in the local folders pip's configuration names
	@# (find-links): there lies the CPU build. Bytecode is compiled at install, as pip does:
	@# where PYTHONDONTWRITEBYTECODE is set, every process would otherwise compile torch's
	@# and MLflow's sources again (an import of both took 15 s instead of 5).
	if $(BIN)/pip install --quiet 'uv>=0.4'; then \
		links=""; for link in $$($(BIN)/pip config get global.find-links 2>/dev/null) $$PIP_FIND_LINKS; do \
			links="$$links --find-links $$link"; done; \
		$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python $$links $(TORCH_PIN) -e '.[dev]'; \
	else \
		$(BIN)/pip install --quiet $(TORCH_PIN) && $(BIN)/pip install --quiet -e '.[dev]'; \
	fi
	@# Debian's Chromium for the report's browser test; where it cannot be installed (not root,
	@# no apt) that test skips and says why.
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
		echo "note: Chromium not installed; the report's browser test will be skipped"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/latentseg study studies/quick.yaml --workers 2
	$(BIN)/latentseg report --study quick

test: setup
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q --durations=25

# tests/durations.json from a whole run: the next runs start the longest tests first
durations: setup
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q --durations=25 --store-durations

lint: setup
	$(BIN)/ruff check latentseg tests
	$(BIN)/ruff format --check latentseg tests

docs: setup
	$(BIN)/python -m latentseg.docs --write docs/configuration.md

clean:
	rm -rf $(VENV) mlruns/* reports
