# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# `make demo` installs what the demo runs (lmfuse with the `demo` extra: the Bible packages,
# pysword, TensorBoard); `make test` adds the `test` and `interop` extras (pytest, ruff,
# import-linter, notebooks; PyTorch and transformers for the GPT-2 import tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test
export LMFUSE_DATA_DIR ?= $(CURDIR)/data

.PHONY: venv demo notebooks test test-slow lint clean

venv: $(DEMO_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(DEMO_STAMP): setup.cfg pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install -q -e '.[demo]'
	touch $@

$(TEST_STAMP): setup.cfg pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install -q -e '.[demo,test,interop]'
	touch $@ $(DEMO_STAMP)

# Prepare the Bible data and tokenizer, train a tiny LM and a tiny YLT -> ASV seq2seq model,
# decode with and without shallow fusion, print the table and write workdirs/demo/demo.png.
# A rerun reuses the prepared data, the finished checkpoints and the decoded outputs.
# English only: Debian's sword-text-sparv (the Spanish Bible) is not needed.
demo: $(DEMO_STAMP)
	$(BIN)/lmfuse data prepare --config configs/s2s_transformer.py:tiny
	$(BIN)/python experiments/demo.py --workdir workdirs/demo

# Run the notebooks against the workdirs `make demo` trained and store their outputs.
notebooks: $(TEST_STAMP)
	$(BIN)/jupyter execute --inplace notebooks/01_inspect_lm.ipynb notebooks/02_attention.ipynb \
		notebooks/03_fusion.ipynb

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -n 2 -q --durations=15

test-slow: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) data
