"""Deep fusion (Gulcehre et al. 2015, sec. 4.2): a trained encoder-decoder and a trained LM,
both frozen; only the gate g = sigmoid(v^T h_LM + b) and the output layer W [s ; g h_LM] train,
starting from the encoder-decoder's own output layer (lmfuse.models.fusion has the equations).

# 1. The LM (ASV text; the same tokenizer as the translate data):
lmfuse train --config configs/lm_transformer.py:tiny --workdir workdirs/lm_transformer_tiny
# 2. The encoder-decoder it starts from: this experiment with fusion off.
lmfuse train --config configs/fusion_deep.py:tiny --config.fusion.method= \\
    --workdir workdirs/fusion_s2s_tiny
# 3. The fused model, then translate or evaluate it like any encoder-decoder:
lmfuse train --config configs/fusion_deep.py:tiny --workdir workdirs/fusion_deep_tiny
lmfuse translate --workdir workdirs/fusion_deep_tiny --split test

The RNN backbone: add --config.model.name=s2s_rnn to steps 2 and 3, with other workdirs
(--config.fusion.s2s_workdir=<step 2's workdir> in step 3). Another LM:
--config.fusion.lm_workdir=<workdir>.
"""

from lmfuse.defaults import fusion_experiment_config


def get_config(variant=None):
    # Only the fusion layers train, from a trained model: fewer steps than from scratch.
    return fusion_experiment_config(
        "deep", variant, learning_rate=3e-4, tiny_learning_rate=1e-3, steps=10_000,
        tiny_steps=500,
    )
