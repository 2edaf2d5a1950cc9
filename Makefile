# Two entry points, both self-contained on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean gpu-wheels

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch only when absent: a pinned CPU build here; GPU users keep the build they brought.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# The main job (~10 minutes on 2 CPU cores): prepare the bundled data, concat_chunk vs Dataset
# Decomposition on text, an addition run tested at 2x/4x its length, runs/demo/report.html.
demo: $(STAMP)
	$(BIN)/lengthwise demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/data_pipeline.py

# wheels/gpu: what the borrowed GPU machine lacks (it reaches no registry); carry it there
gpu-wheels:
	bash scripts/gpu_wheels.sh

clean:
	rm -rf data/demo_text data/demo_task runs
