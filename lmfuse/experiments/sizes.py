"""A budget's sizes as training overrides: the keys every experiment file's SIZES shares.

    size_overrides('cpu', {'s2s_steps': 1000, 'lm_steps': 300, 'lm_seq_len': 96, 'beam_size': 4})
      -> (encoder-decoder overrides, LM overrides)

A size of 0 keeps the config's value.
"""

from __future__ import annotations

from collections.abc import Mapping

from lmfuse.experiments.artifacts import override


def size_overrides(budget: str, sizes: Mapping[str, int]
                   ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(encoder-decoder, LM) overrides for `s2s_steps`, `lm_steps`, `lm_seq_len`, `beam_size`."""
    def steps(n: int) -> tuple[str, ...]:
        return (override("train.steps", n),) if n else ()

    s2s = steps(sizes["s2s_steps"])
    if budget == "cpu":  # validation is scored at the checkpoints, not during training
        s2s += (override("train.eval_every", 0),)
    if sizes["beam_size"]:
        s2s += (override("decode.beam_size", sizes["beam_size"]),)
    lm = steps(sizes["lm_steps"])
    if sizes["lm_seq_len"]:  # fused decoding and training run the LM over whole outputs
        lm += tuple(override(key, sizes["lm_seq_len"])
                    for key in ("data.seq_len", "data.max_length", "model.max_len"))
    return s2s, lm
