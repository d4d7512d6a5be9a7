"""Carlson et al. 2018 row: KJV -> ASV.
Full size; the variant `transformer` swaps the bi-LSTM for a Transformer of similar cost.

lmfuse train --config configs/carlson/kjv_asv.py --workdir workdirs/carlson_kjv_asv
lmfuse eval --workdir workdirs/carlson_kjv_asv --split test
"""

from presets import carlson_config


def get_config(variant=None):
    return carlson_config("kjv", "asv", variant)
