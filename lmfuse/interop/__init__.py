"""Bridges to other frameworks' checkpoints (optional deps: pip install 'lmfuse[interop]')."""

from lmfuse.interop.hf_gpt2 import gpt2_config, load_gpt2

__all__ = ["gpt2_config", "load_gpt2"]
