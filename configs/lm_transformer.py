"""A GPT-style Transformer LM on the Bible LM view (ASV train books).

lmfuse train --config configs/lm_transformer.py --workdir workdirs/lm_transformer
lmfuse train --config configs/lm_transformer.py:tiny --workdir workdirs/lm_transformer_tiny

The '350m' variant is an accelerator-sized model (~368M parameters: width 1024, 24 layers,
16 heads, rows of 1024 tokens, a 32,000-token vocabulary, untied head, bf16); it is what
`experiments/device_check.sh` trains on a GPU.
"""

from presets import lm_config, tiny_variant

SIZE_350M = "350m"


def get_config(variant=None):
    if variant == SIZE_350M:
        return config_350m()
    try:
        tiny = tiny_variant(variant)
    except ValueError as error:
        raise ValueError(f"{error}, or {SIZE_350M!r}") from None
    return lm_config(
        tiny,
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


def config_350m():
    """GPT-2 medium's shape with a 32k vocabulary and an untied head: 368M parameters."""
    config = lm_config(
        False,
        model=dict(
            name="transformer",
            emb_dim=1024,
            num_layers=24,
            num_heads=16,
            mlp_dim=4096,
            positions="rope",
            norm="pre",
            dropout=0.0,
            tie_embeddings=False,
            dtype="bfloat16",
        ),
        tiny_model={},
        learning_rate=3e-4,
        tiny_learning_rate=3e-4,
    )
    config.data.seq_len = config.data.max_length = config.model.max_len = 1024
    config.tokenizer.vocab_size = 32_000
    config.train.batch_size = 32
    config.optimizer.warmup_steps = 1000
    return config
