"""Language models: recurrent (Elman RNN, LSTM, GRU) and decoder-only transformer.

Build one from a model config with `build_model(cfg.model, vocab_size)`; see `registry` for
the keys, `transformer` and `rnn` for shapes, param trees and the decoding cache / carry.
"""

from lmfuse.models.layers import LOGICAL_AXES
from lmfuse.models.registry import MODEL_NAMES, build_model, model_defaults
from lmfuse.models.rnn import RNNLM, RNNConfig
from lmfuse.models.transformer import TransformerConfig, TransformerLM
from lmfuse.models.transformer_layers import stack_layers, unstack_layers

__all__ = [
    "LOGICAL_AXES",
    "MODEL_NAMES",
    "RNNLM",
    "RNNConfig",
    "TransformerConfig",
    "TransformerLM",
    "build_model",
    "model_defaults",
    "stack_layers",
    "unstack_layers",
]
