#!/usr/bin/env bash
# Accelerator check: trains lmfuse's 350M-parameter Transformer LM (configs/lm_transformer.py:350m,
# bf16) for a few dozen steps on a GPU and decodes at batch 1, then prints tokens/s, MFU, compile
# time and decode tokens/s against the HBM roofline; sized to finish within 8 minutes on one
# H100/H200 (about 3.5 minutes on one H200).
#
#   bash experiments/device_check.sh             # a GPU machine with JAX for CUDA installed
#   bash experiments/device_check.sh --dry_run   # the same report from a tiny model on CPU
#   bash experiments/device_check.sh --help      # flags; --config.KEY=VALUE overrides the config
#
# Without a GPU (and without --dry_run) it refuses with one line and exit status 2.
# Python: $PYTHON if set, else the repository's .venv, else python3. lmfuse need not be installed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
cd "$repo"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" experiments/device_check.py "$@"
