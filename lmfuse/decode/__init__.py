"""Decoding: the `DecodeStep` contract, samplers, beam search and logit processors.

    decoder = lm_decode_step(model)                      # TransformerLM or RNNLM (adapters)
    out = sample(decoder, params, {'prompt': p}, key, max_new_tokens=32, top_p=0.9)
    best = beam_search(decoder, params, {'prompt': p}, beam_size=4, max_new_tokens=32)
"""

from lmfuse.decode.adapters import decode_step_for, lm_decode_step, seq2seq_decode_step
from lmfuse.decode.beam import BeamOutput, beam_search, gather_beams, length_penalty, tile_beams
from lmfuse.decode.processors import (
    DecodeContext,
    MinP,
    NoRepeatNGram,
    RepetitionPenalty,
    SuppressTokens,
    Temperature,
    TopK,
    TopP,
    apply_processors,
    repeated_ngram_ban,
    sampling_processors,
)
from lmfuse.decode.sampling import GREEDY_TEMPERATURE, SampleOutput, greedy, sample
from lmfuse.decode.step import DecodeStep, left_pad

__all__ = [
    "GREEDY_TEMPERATURE",
    "BeamOutput",
    "DecodeContext",
    "DecodeStep",
    "MinP",
    "NoRepeatNGram",
    "RepetitionPenalty",
    "SampleOutput",
    "SuppressTokens",
    "Temperature",
    "TopK",
    "TopP",
    "apply_processors",
    "beam_search",
    "decode_step_for",
    "gather_beams",
    "greedy",
    "left_pad",
    "length_penalty",
    "lm_decode_step",
    "repeated_ngram_ban",
    "sample",
    "sampling_processors",
    "seq2seq_decode_step",
    "tile_beams",
]
