"""Learned logit fusion: p = softmax(W_g * S_s2s + W_l * l_LM), starting at W_g = 1, W_l = 0
(exactly the trained encoder-decoder). W_g and W_l are scalars, per-vocabulary vectors
(--config.fusion.weights_kind=vector) or gates computed from [s_t ; h_LM] (=context); both
bases stay frozen, or train with them (--config.fusion.train_bases=True, with a lower
--config.optimizer.learning_rate). See lmfuse.models.fusion.

# 1. The LM (ASV text; the same tokenizer as the translate data):
lmfuse train --config configs/lm_transformer.py:tiny --workdir workdirs/lm_transformer_tiny
# 2. The encoder-decoder it starts from: this experiment with fusion off.
lmfuse train --config configs/fusion_linear.py:tiny --config.fusion.method= \\
    --workdir workdirs/fusion_s2s_tiny
# 3. The fused model, then translate or evaluate it like any encoder-decoder:
lmfuse train --config configs/fusion_linear.py:tiny --workdir workdirs/fusion_linear_tiny
lmfuse translate --workdir workdirs/fusion_linear_tiny --split test

Steps 2 of deep and linear fusion train the same model: either workdir serves both. The RNN
backbone: add --config.model.name=s2s_rnn to steps 2 and 3, with other workdirs
(--config.fusion.s2s_workdir=<step 2's workdir> in step 3).
"""

from lmfuse.defaults import fusion_experiment_config


def get_config(variant=None):
    # Frozen bases leave a handful of weights to learn: a higher rate, few steps.
    return fusion_experiment_config(
        "linear", variant, learning_rate=1e-3, tiny_learning_rate=1e-2, steps=5000,
        tiny_steps=300,
    )
