# Set-up and entry points. `make demo` and `make test` work from a bare clone (they create .venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The CPU wheel of torch; a plain `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo demo-full test test-full clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[demo,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install  ## BM25, zero-shot, naive and TACO on the vital benchmark (CPU, minutes)
	$(BIN)/multiret demo

demo-full: install  ## the demo plus task-specific models, on the full 10,033-page corpus
	$(BIN)/multiret demo --full

test: install  ## unit tests and a tiny end-to-end run (what CI runs)
	$(BIN)/python -m pytest -m "not slow" -q

test-full: install  ## everything, including the slow end-to-end runs on the real demo model
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .cache logs outputs multirun
