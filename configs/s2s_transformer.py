"""A Transformer encoder-decoder on Bible verse pairs (default YLT -> ASV style transfer).

lmfuse train --config configs/s2s_transformer.py --workdir workdirs/s2s_transformer
lmfuse train --config configs/s2s_transformer.py:tiny --workdir workdirs/s2s_transformer_tiny
lmfuse train --config configs/s2s_transformer.py:tiny --config.data.source=kjv ...   # KJV -> ASV
lmfuse train --config configs/s2s_transformer.py:tiny --config.data.source=rv1909 ...  # es -> en
    (Spanish needs Debian's SWORD module: apt-get install sword-text-sparv)
"""

from presets import s2s_config, tiny_variant


def get_config(variant=None):
    return s2s_config(
        tiny_variant(variant),
        model=dict(
            name="s2s_transformer",
            emb_dim=512,
            num_layers=6,
            num_encoder_layers=6,
            num_heads=8,
            mlp_dim=2048,
            positions="learned",
            norm="pre",
            dropout=0.1,
            tie_embeddings=True,
            share_embeddings=True,
        ),
        # About 10 minutes on a 2-core CPU. Copying the source (pointer-generator) is what
        # lets a model this small learn the mostly-copying Bible style transfer that fast.
        tiny_model=dict(
            emb_dim=256, num_layers=2, num_encoder_layers=2, num_heads=4, mlp_dim=512,
            dropout=0.0, copy_source=True,
        ),
        learning_rate=5e-4,
        tiny_learning_rate=2e-3,
    )
