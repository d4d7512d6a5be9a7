"""A BERT-style masked LM (encoder-only Transformer) on the Bible LM view (ASV train books):
15% of the tokens of each verse are chosen, 80/10/10 mask/random/keep (`lmfuse.data.noising`).

lmfuse train --config configs/mlm_bert.py --workdir workdirs/mlm_bert
lmfuse train --config configs/mlm_bert.py:tiny --workdir workdirs/mlm_bert_tiny
lmfuse eval --workdir workdirs/mlm_bert_tiny     # masked-token accuracy and perplexity
"""

from presets import lm_config, tiny_variant


def get_config(variant=None):
    config = lm_config(
        tiny_variant(variant),
        model=dict(
            name="masked_lm",
            emb_dim=512,
            num_layers=6,
            num_heads=8,
            mlp_dim=2048,
            positions="learned",
            norm="pre",
            dropout=0.1,
            tie_embeddings=True,
        ),
        tiny_model=dict(emb_dim=128, num_layers=2, num_heads=4, mlp_dim=512, dropout=0.0),
        learning_rate=5e-4,
        tiny_learning_rate=2e-3,
    )
    config.data.noising = "bert_mask"
    return config
