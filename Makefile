# The two set-up commands (README): `make demo` runs the main job on the embedded default,
# `make test` runs the test suite. Each creates .venv and installs what it needs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow study data venv clean llm-baselines

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned to the wheels this machine kind keeps on local disk (see assets.md)
	$(BIN)/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/python -m pip install -q torch torchvision
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# Debian packages: Fashion-MNIST (the data) and Chromium (renders reports in a test). Installed when we
# can; otherwise the code falls back to scikit-learn digits with a message and the browser test is skipped.
DEBS := dataset-fashion-mnist chromium
data:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	    || echo "warning: could not install$$missing"; \
	else echo "note: run 'sudo apt-get install$$missing' (Fashion-MNIST falls back to scikit-learn digits)"; fi

demo: $(STAMP) data
	$(BIN)/sqs-pyro

test: $(STAMP) data
	$(BIN)/python -m pytest -q -x --durations=15

# The recipe study of the README (grid with seeds, budget curve, ablation; a few hours on 2 cores). One torch
# thread everywhere: the thread count changes float sums, so it is part of what makes the tables reproducible.
study: $(STAMP) data
	test -f runs/base/base.pt || $(BIN)/sqs-pyro train-base --out runs/base --no-progress --threads 1
	$(BIN)/python benchmarks/recipe_study.py grid --train-subset 12000 --seeded sqs deep-compression dgms --threads 1
	$(BIN)/python benchmarks/recipe_study.py budget --train-subset 12000 --threads 1
	$(BIN)/python benchmarks/recipe_study.py ablation --train-subset 12000 --threads 1

test-slow: $(STAMP) data
	$(BIN)/python -m pytest -q -m slow

# Optional: the LLM quantizers (GPTQ, SparseGPT, AutoRound, HQQ) in their own venv, since their pins
# (llmcompressor: torch <= 2.14.0, transformers <= 5.17.0) cannot live beside the project's; see
# requirements/llm-baselines.txt for the order, then: .venv-llm/bin/python benchmarks/llm_baselines.py
LLM_VENV ?= .venv-llm
llm-baselines:
	test -x $(LLM_VENV)/bin/python || $(PY) -m venv $(LLM_VENV)
	$(LLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(LLM_VENV)/bin/python -m pip install -q "torch==2.14.1"
	$(LLM_VENV)/bin/python -m pip install -q -e . -r requirements/llm-baselines.txt
	$(LLM_VENV)/bin/python -m pip install -q --no-deps -r requirements/llm-baselines-nodeps.txt

clean:
	rm -rf $(VENV) $(LLM_VENV) build dist *.egg-info
