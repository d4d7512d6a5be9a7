"""A multi-layer Elman (tanh) RNN LM on the Bible LM view (ASV train books).

    lmfuse train --config configs/lm_rnn.py --workdir workdirs/lm_rnn
    lmfuse train --config configs/lm_rnn.py:tiny --workdir workdirs/lm_rnn_tiny   # ~1 min on CPU
"""

from lmfuse.defaults import base_config


def get_config(variant=None):
    if variant not in (None, "tiny"):
        raise ValueError(f"unknown variant {variant!r}; choose tiny or leave it out")
    config = base_config()
    config.data.view = "lm"
    config.data.versions = "asv"
    config.data.max_length = 128
    config.data.seq_len = 128
    config.model.name = "rnn"
    config.model.emb_dim = 512
    config.model.hidden_dim = 1024
    config.model.num_layers = 2
    config.model.dropout = 0.2
    config.model.tie_embeddings = False
    config.model.max_len = config.data.seq_len
    config.optimizer.learning_rate = 2e-3
    config.optimizer.warmup_steps = 200
    config.train.steps = 20_000
    config.train.batch_size = 64
    config.train.eval_every = 1000
    config.train.checkpoint_every = 1000
    if variant == "tiny":
        config.model.emb_dim = 128
        config.model.hidden_dim = 256
        config.model.num_layers = 1
        config.model.dropout = 0.0
        config.data.seq_len = 64
        config.data.max_length = 64
        config.model.max_len = 64
        config.optimizer.learning_rate = 1e-2
        config.optimizer.warmup_steps = 20
        config.train.steps = 300
        config.train.batch_size = 16
        config.train.log_every = 25
        config.train.eval_every = 300
        config.train.eval_batches = 0
        config.train.checkpoint_every = 100
    return config
