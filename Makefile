PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench clean

# torch first, pinned: on the CI machine that pin is a local CPU wheel; any other
# request would pull GBs of CUDA builds.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/pixelwizard demo --out demo-out

bench: $(STAMP)
	$(BIN)/python bench/dit_forward.py
	$(BIN)/python bench/scale.py --prompts 10000

clean:
	rm -rf $(VENV) .pytest_cache demo-out
