# Two entry points on a fresh clone (see README):  `make` sets up and runs the main job; `make test` tests.
# Both are idempotent: the virtual environment is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test setup schema clean
run: $(STAMP)
	$(VENV)/bin/peftkb list --category reparameterized

setup: $(STAMP)

# torch first, pinned below 2.14: on these machines that range resolves to the CPU build on disk,
# and peft (a test oracle) would otherwise pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch>=2.6,<2.14"
	$(PY) -m pip install --quiet -e ".[impl,docs,dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

schema: $(STAMP)
	$(VENV)/bin/peftkb schema --output catalog.schema.json

clean:
	rm -rf $(VENV) .peftkb-cache site/docs site/build .pytest_cache
