# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export LMFUSE_DATA_DIR ?= $(CURDIR)/data

.PHONY: venv demo test test-slow lint clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[demo,test,interop]'
	touch $(STAMP)

DEMO_LM := workdirs/demo_lm_transformer

# Prepare the Bible data and tokenizer, train a tiny Transformer LM, evaluate and inspect it.
# A rerun reuses the prepared data and the finished checkpoint.
demo: $(STAMP)
	$(BIN)/lmfuse data prepare --config configs/lm_transformer.py:tiny
	$(BIN)/lmfuse data show --config configs/lm_transformer.py:tiny --n 2
	$(BIN)/lmfuse train --config configs/lm_transformer.py:tiny --workdir $(DEMO_LM)
	$(BIN)/lmfuse eval --workdir $(DEMO_LM) --split validation
	$(BIN)/lmfuse inspect --workdir $(DEMO_LM)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q --durations=15

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) data
