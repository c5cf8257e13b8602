# refinekit: `make demo` runs the main job, `make test` runs the checks.
# Both create .venv from nothing; nothing needs to be installed beforehand except Python >= 3.11.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP_ALL  := $(VENV)/.installed-all
STAMP_TEST := $(VENV)/.installed-test
DEMO_OUT ?= demo-output

.PHONY: demo test lint clean benchmarks

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip

$(STAMP_ALL): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -qq -e ".[all]"
	touch $@

# torch is pinned here, not in pyproject: 2.13.0 is the CPU build these machines have on disk.
$(STAMP_TEST): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -qq "torch==2.13.0"
	$(BIN)/python -m pip install -qq -e ".[all,test]"
	touch $@ $(STAMP_ALL)

demo: $(STAMP_ALL)
	$(BIN)/refinekit demo --out $(DEMO_OUT)

# the slow tests (the issues' known-answer runs on real data, ~1.5 min) fit CI's budget: they run too
test: $(STAMP_TEST)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/python -m pytest -q -m "slow or not slow"

benchmarks: $(STAMP_TEST)
	$(BIN)/python -m pip install -qq -e ".[bench]"
	$(BIN)/python benchmarks/engine_overhead.py
	$(BIN)/python benchmarks/nist_strd.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) build src/*.egg-info .pytest_cache .ruff_cache
