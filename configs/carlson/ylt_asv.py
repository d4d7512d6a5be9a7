"""Carlson et al. 2018 row: YLT -> ASV.
Full size; the variant `transformer` swaps the bi-LSTM for a Transformer of similar cost.

lmfuse train --config configs/carlson/ylt_asv.py --workdir workdirs/carlson_ylt_asv
lmfuse eval --workdir workdirs/carlson_ylt_asv --split test
"""

from presets import carlson_config


def get_config(variant=None):
    return carlson_config("ylt", "asv", variant)
