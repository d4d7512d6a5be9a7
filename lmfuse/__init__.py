"""lmfuse: language models, seq2seq models, and their fusion, in JAX/Flax."""

__version__ = "0.1.0"
