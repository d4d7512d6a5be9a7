"""Trained fusion of an LM into an encoder-decoder on the Bible translate view
(lmfuse.models.fusion has the equations). The variant names the method, with ',tiny' for the
small model:

  deep (Gulcehre et al. 2015, sec. 4.2): a trained encoder-decoder and a trained LM, both
      frozen; only the gate g = sigmoid(v^T h_LM + b) and the output layer W [s ; g h_LM]
      train, starting from the encoder-decoder's own output layer.
  cold (Sriram et al. 2017): the encoder-decoder trains from scratch with a frozen LM.
  simple_postnorm (Stahlberg et al. 2018, sec. 3): the translation model trains from scratch
      through p = softmax(S_TM * P_LM) with a frozen LM (S_TM its logits, P_LM the LM's
      probabilities).
  simple_prenorm (Stahlberg et al. 2018, sec. 3): likewise through p = softmax(S_TM + log P_LM).
  linear (learned logit fusion): p = softmax(W_g * S_s2s + W_l * l_LM), starting at W_g = 1,
      W_l = 0 (exactly the trained encoder-decoder). W_g and W_l are scalars, per-vocabulary
      vectors (--config.fusion.weights_kind=vector) or gates computed from [s_t ; h_LM]
      (=context); both bases stay frozen, or train with them (--config.fusion.train_bases=True,
      with a lower --config.optimizer.learning_rate).
  lm_prior (Baziotis et al. 2020): the translation model trains from scratch with a frozen LM
      as a prior, loss = CE + λ τ² KL(softmax(S_TM/τ) || softmax(l_LM/τ)) (λ =
      --config.fusion.prior_weight, τ = --config.fusion.prior_temperature), and decodes alone.

# 1. The LM (ASV text; the same tokenizer as the translate data):
lmfuse train --config configs/lm_transformer.py:tiny --workdir workdirs/lm_transformer_tiny
# 2. Deep and linear fusion only: the encoder-decoder they start from, this experiment with
#    fusion off (either method's step 2 trains the same model: one workdir serves both).
lmfuse train --config configs/fusion.py:deep,tiny --config.fusion.method= \\
    --workdir workdirs/fusion_s2s_tiny
# 3. The fused model, then translate or evaluate it like any encoder-decoder:
lmfuse train --config configs/fusion.py:deep,tiny --workdir workdirs/fusion_deep_tiny
lmfuse translate --workdir workdirs/fusion_deep_tiny --split test
lmfuse train --config configs/fusion.py:cold,tiny --workdir workdirs/fusion_cold_tiny
lmfuse train --config configs/fusion.py:simple_prenorm,tiny \\
    --workdir workdirs/fusion_simple_prenorm_tiny

The RNN backbone: add --config.model.name=s2s_rnn to steps 2 and 3, with other workdirs
(--config.fusion.s2s_workdir=<step 2's workdir> in step 3). Another LM:
--config.fusion.lm_workdir=<workdir>.
"""

from presets import s2s_config, split_variant

from lmfuse.models.fusion import METHODS, PRETRAINED_S2S

# One encoder-decoder definition valid for both backbones, so --config.model.name=s2s_rnn
# switches a fusion experiment (and the s2s it starts from) to the RNN with nothing else.
S2S_MODEL = dict(
    name="s2s_transformer", emb_dim=512, hidden_dim=512, num_layers=3, num_encoder_layers=3,
    num_heads=8, mlp_dim=2048, positions="learned", norm="pre", dropout=0.1,
    tie_embeddings=True, share_embeddings=True, cell="lstm", attention="bahdanau",
)
S2S_TINY_MODEL = dict(
    emb_dim=256, hidden_dim=256, num_layers=2, num_encoder_layers=2, num_heads=4, mlp_dim=1024,
)

# method: (learning rate, tiny learning rate, train steps, tiny train steps); 0 steps keep
# the seq2seq setting.
SETTINGS = {
    # Only the fusion layers train, from a trained model: fewer steps than from scratch.
    "deep": (3e-4, 1e-3, 10_000, 500),
    "cold": (5e-4, 2e-3, 0, 0),
    "simple_postnorm": (5e-4, 2e-3, 0, 0),
    "simple_prenorm": (5e-4, 2e-3, 0, 0),
    "lm_prior": (5e-4, 2e-3, 0, 0),
    # Frozen bases leave a handful of weights to learn: a higher rate, few steps.
    "linear": (1e-3, 1e-2, 5000, 300),
}


def get_config(variant=None):
    """A `s2s_config` whose fusion group names the LM of configs/lm_transformer.py (tiny: its
    :tiny variant) in the workdir its docstring uses, and for deep and linear fusion the
    encoder-decoder they start from (this same experiment trained with fusion.method='')."""
    method, tiny = split_variant(variant, METHODS)
    learning_rate, tiny_learning_rate, steps, tiny_steps = SETTINGS[method]
    config = s2s_config(tiny, S2S_MODEL, S2S_TINY_MODEL, learning_rate, tiny_learning_rate)
    suffix = "_tiny" if tiny else ""
    config.fusion.method = method
    config.fusion.lm_workdir = f"workdirs/lm_transformer{suffix}"
    if method in PRETRAINED_S2S:
        config.fusion.s2s_workdir = f"workdirs/fusion_s2s{suffix}"
    if tiny and tiny_steps:
        config.train.steps = tiny_steps
    elif not tiny and steps:
        config.train.steps = steps
    return config
