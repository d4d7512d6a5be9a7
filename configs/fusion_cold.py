"""Cold fusion (Sriram et al. 2017): the encoder-decoder trains from scratch with a frozen LM
(see lmfuse.models.fusion for the equations).

# 1. The LM (ASV; the same tokenizer as the translate data):
lmfuse train --config configs/lm_transformer.py:tiny --workdir workdirs/lm_transformer_tiny
# 2. The fused model:
lmfuse train --config configs/fusion_cold.py:tiny --workdir workdirs/fusion_cold_tiny
lmfuse translate --workdir workdirs/fusion_cold_tiny --split test

The RNN backbone: add --config.model.name=s2s_rnn to step 2 (and another --workdir).
Another LM: --config.fusion.lm_workdir=<workdir>.
"""

from lmfuse.defaults import fusion_experiment_config


def get_config(variant=None):
    return fusion_experiment_config("cold", variant, learning_rate=5e-4, tiny_learning_rate=2e-3)
