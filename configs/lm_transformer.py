"""A GPT-style Transformer LM on the Bible LM view (ASV train books).

lmfuse train --config configs/lm_transformer.py --workdir workdirs/lm_transformer
lmfuse train --config configs/lm_transformer.py:tiny --workdir workdirs/lm_transformer_tiny
"""

from presets import lm_config, tiny_variant


def get_config(variant=None):
    return lm_config(
        tiny_variant(variant),
        model=dict(
            name="transformer",
            emb_dim=512,
            num_layers=6,
            num_heads=8,
            mlp_dim=2048,
            positions="rope",
            norm="pre",
            dropout=0.1,
            tie_embeddings=True,
        ),
        tiny_model=dict(emb_dim=128, num_layers=2, num_heads=4, mlp_dim=512, dropout=0.0),
        learning_rate=6e-4,
        tiny_learning_rate=3e-3,
    )
