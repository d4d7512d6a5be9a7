"""A multi-layer LSTM LM on the Bible LM view (ASV train books).

lmfuse train --config configs/lm_lstm.py --workdir workdirs/lm_lstm
lmfuse train --config configs/lm_lstm.py:tiny --workdir workdirs/lm_lstm_tiny   # ~1 min on CPU
"""

from lmfuse.defaults import lm_config


def get_config(variant=None):
    return lm_config(
        variant,
        model=dict(
            name="lstm",
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
