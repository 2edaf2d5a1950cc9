# Two entry points, both self-contained on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch only when absent: a pinned CPU build here; GPU users keep the build they brought.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Until `lengthwise demo` (issue 5): tokenize, compare strategies, a short training run, export.
DEMO_RUN := runs/demo_text_short
demo: $(STAMP)
	$(BIN)/lengthwise prepare configs/demo_text.yaml
	$(BIN)/lengthwise data-stats configs/demo_text.yaml
	rm -rf $(DEMO_RUN)
	$(BIN)/lengthwise train configs/demo_text.yaml train.out_dir=$(DEMO_RUN) \
		train.total_tokens=262144 schedule.warmup_tokens=32768 eval.every_tokens=131072
	$(BIN)/lengthwise export $(DEMO_RUN)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/data_pipeline.py

clean:
	rm -rf data/demo_text runs
