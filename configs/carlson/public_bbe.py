"""Carlson et al. 2018 row: public (every other English version) -> BBE.
Full size; the variant `transformer` swaps the bi-LSTM for a Transformer of similar cost.

lmfuse train --config configs/carlson/public_bbe.py --workdir workdirs/carlson_public_bbe
lmfuse eval --workdir workdirs/carlson_public_bbe --split test
"""

from presets import carlson_config


def get_config(variant=None):
    return carlson_config("public", "bbe", variant)
