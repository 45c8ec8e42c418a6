# Set-up and entry points. `make demo` and `make test` work from a bare clone (they create .venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# torch is installed first, from pip's configured index unless TORCH_INDEX_URL is set. PyPI's Linux
# torch wheels are CUDA builds (GBs); for the CPU build: make TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
# The extras installed: FAISS comes with exactly one of cpu (faiss-cpu) or gpu (faiss-gpu): make EXTRAS=gpu,demo,dev
EXTRAS ?= cpu,demo,dev

.PHONY: install demo demo-full test test-full lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX_URL),--index-url "$(TORCH_INDEX_URL)")
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
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

lint: install  ## ruff with the rules and line length in pyproject.toml (CI runs it)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .cache logs outputs multirun
