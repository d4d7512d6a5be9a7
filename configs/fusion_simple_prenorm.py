"""Simple fusion, PreNorm (Stahlberg et al. 2018, sec. 3): the translation model trains from
scratch through p = softmax(S_TM + log P_LM) with a frozen LM (see lmfuse.models.fusion).

# 1. The LM (ASV text; the same tokenizer as the translate data):
lmfuse train --config configs/lm_transformer.py:tiny --workdir workdirs/lm_transformer_tiny
# 2. The fused model, then translate or evaluate it like any encoder-decoder:
lmfuse train --config configs/fusion_simple_prenorm.py:tiny \\
    --workdir workdirs/fusion_simple_prenorm_tiny
lmfuse translate --workdir workdirs/fusion_simple_prenorm_tiny --split test

The RNN backbone: add --config.model.name=s2s_rnn to step 2 (and another --workdir). Another
LM: --config.fusion.lm_workdir=<workdir>.
"""

from lmfuse.defaults import fusion_experiment_config


def get_config(variant=None):
    return fusion_experiment_config(
        "simple_prenorm", variant, learning_rate=5e-4, tiny_learning_rate=2e-3
    )
