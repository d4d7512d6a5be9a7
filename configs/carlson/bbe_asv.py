"""Carlson et al. 2018 row: BBE -> ASV.
Full size; the variant `transformer` swaps the bi-LSTM for a Transformer of similar cost.

lmfuse train --config configs/carlson/bbe_asv.py --workdir workdirs/carlson_bbe_asv
lmfuse eval --workdir workdirs/carlson_bbe_asv --split test
"""

from presets import carlson_config


def get_config(variant=None):
    return carlson_config("bbe", "asv", variant)
