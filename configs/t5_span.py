"""T5-style pre-training of a Transformer encoder-decoder by span corruption on the Bible LM
view (ASV train books): ~15% of each verse in spans of mean length 3 is replaced by sentinels,
and the decoder writes the hidden spans (`lmfuse.data.noising`).

lmfuse train --config configs/t5_span.py:tiny --workdir workdirs/t5_span_tiny
"""

from presets import lm_config, tiny_variant


def get_config(variant=None):
    config = lm_config(
        tiny_variant(variant),
        model=dict(
            name="s2s_transformer",
            emb_dim=512,
            num_layers=6,
            num_encoder_layers=6,
            num_heads=8,
            mlp_dim=2048,
            positions="learned",
            dropout=0.1,
        ),
        tiny_model=dict(emb_dim=128, num_layers=2, num_encoder_layers=2, num_heads=4,
                        mlp_dim=512, dropout=0.0),
        learning_rate=5e-4,
        tiny_learning_rate=2e-3,
    )
    config.data.noising = "span_corruption"
    config.data.pack = True
    return config
