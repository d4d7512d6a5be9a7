"""The Bible data: ASV text for LMs, and KJV -> ASV pairs for seq2seq, with their tokenizer.

lmfuse data prepare --config configs/data_bible.py
lmfuse data show --config configs/data_bible.py:translate --config.data.source=ylt
"""

from lmfuse.schema import base_config

VARIANTS = ("lm", "translate", "tiny")


def get_config(variant=None):
    config = base_config()
    if variant not in (None, *VARIANTS):
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if variant == "translate":
        config.data.view = "translate"
        config.data.source = "kjv"
        config.data.target = "asv"
    if variant == "tiny":
        config.tokenizer.vocab_size = 2000
    return config
