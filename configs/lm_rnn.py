"""A multi-layer recurrent LM on the Bible LM view (ASV train books). The variant picks the
cell: rnn (Elman, tanh; the default), lstm or gru; add ',tiny' for a model that trains in
about a minute on a CPU.

lmfuse train --config configs/lm_rnn.py --workdir workdirs/lm_rnn
lmfuse train --config configs/lm_rnn.py:tiny --workdir workdirs/lm_rnn_tiny
lmfuse train --config configs/lm_rnn.py:lstm --workdir workdirs/lm_lstm
lmfuse train --config configs/lm_rnn.py:lstm,tiny --workdir workdirs/lm_lstm_tiny
lmfuse train --config configs/lm_rnn.py:gru,tiny --workdir workdirs/lm_gru_tiny
"""

from presets import lm_config, split_variant

CELLS = ("rnn", "lstm", "gru")


def get_config(variant=None):
    cell, tiny = split_variant(variant, CELLS, default="rnn")
    return lm_config(
        tiny,
        model=dict(
            name=cell,
            emb_dim=512,
            hidden_dim=1024,
            num_layers=2,
            dropout=0.2,
            tie_embeddings=False,
        ),
        tiny_model=dict(emb_dim=128, hidden_dim=256, num_layers=1, dropout=0.0),
        learning_rate=2e-3,
        tiny_learning_rate=1e-2,
    )
