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

# Prepare the Bible data and tokenizer, train a tiny LM and a tiny YLT -> ASV seq2seq model,
# decode with and without shallow fusion, print the table and write workdirs/demo/demo.png.
# A rerun reuses the prepared data, the finished checkpoints and the decoded outputs.
demo: $(STAMP)
	$(BIN)/lmfuse data prepare --config configs/s2s_transformer.py:tiny
	$(BIN)/python experiments/demo.py --workdir workdirs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q --durations=15

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) data
