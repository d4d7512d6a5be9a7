"""Carlson et al. 2018 row: public (every other English version) -> ASV.
Full size; the variant `transformer` swaps the bi-LSTM for a Transformer of similar cost.

lmfuse train --config configs/carlson/public_asv.py --workdir workdirs/carlson_public_asv
lmfuse eval --workdir workdirs/carlson_public_asv --split test
"""

from presets import carlson_config


def get_config(variant=None):
    return carlson_config("public", "asv", variant)
