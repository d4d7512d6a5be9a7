"""Each model family as a `DecodeStep`: the one place where decoding knows the models.

    lm_decode_step(model)                         TransformerLM, RNNLM (Elman, LSTM, GRU)
    seq2seq_decode_step(model, zero_context)      Seq2SeqTransformer, Seq2SeqRNN, FusedSeq2Seq
    decode_step_for(model)                        whichever of the two fits

Every state leaf has the batch as its leading axis (what beam search gathers along): the
Transformer's KV cache is laid out batch-first by the model itself; an RNN's carry, [L, B, H]
inside the model, is moved to [B, L, H] here. Prompts arrive padded on either side and are
left-padded (`prompt_layout`), with padding in segment 0 so it never leaks into the state.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmfuse.decode.step import Batch, DecodeStep, bind, prompt_layout
from lmfuse.models.fusion import FusedSeq2Seq
from lmfuse.models.rnn import RNNLM
from lmfuse.models.seq2seq_rnn import Seq2SeqRNN
from lmfuse.models.seq2seq_transformer import Seq2SeqTransformer
from lmfuse.models.transformer import TransformerLM
from lmfuse.tokens import PAD_ID

Params = Any
State = Any


def lm_decode_step(model: TransformerLM | RNNLM) -> DecodeStep:
    """The DecodeStep of a decoder-only LM (TransformerLM or any RNNLM cell)."""
    if isinstance(model, TransformerLM):
        return DecodeStep(bind(_transformer_init, model), bind(_transformer_step, model))
    if isinstance(model, RNNLM):
        return DecodeStep(bind(_rnn_init, model), bind(_rnn_step, model))
    raise TypeError(f"lm_decode_step needs a TransformerLM or RNNLM, got {type(model).__name__}")


def seq2seq_decode_step(model: Any, zero_context: bool = False) -> DecodeStep:
    """The DecodeStep of an encoder-decoder (`Seq2SeqTransformer`, `Seq2SeqRNN`, or either
    fused with an LM, `FusedSeq2Seq`).

    `batch` holds `inputs` [B, S] (the source, right-padded) and `prompt` [B, P] (the decoder
    prefix, usually [[BOS]]); `init` runs the encoder once. With `zero_context` the decoder
    runs with its encoder context zeroed: the model's internal LM (ILME fusion).
    """
    for cls, init, step in _SEQ2SEQ:
        if isinstance(model, cls):
            return DecodeStep(bind(init, model, zero_context=zero_context),
                              bind(step, model, zero_context=zero_context))
    raise TypeError(f"seq2seq_decode_step needs an encoder-decoder, got {type(model).__name__}")


def decode_step_for(model: Any) -> DecodeStep:
    """The DecodeStep of any generative lmfuse model (decoder-only LM or encoder-decoder)."""
    if isinstance(model, TransformerLM | RNNLM):
        return lm_decode_step(model)
    return seq2seq_decode_step(model)


# ---------------------------------------------------------------------------------------------
# Decoder-only LMs


def _transformer_init(model: TransformerLM, params: Params, batch: Batch, max_len: int):
    tokens, segments, positions = prompt_layout(batch["prompt"])
    b, p = tokens.shape
    logits, cache = model.apply(
        {"params": params}, tokens, segment_ids=segments, positions=positions,
        cache=model.init_cache(b, max_len), cache_index=0,
    )
    state = {
        "cache": cache,
        "position": positions[:, -1] + 1,  # next position per row (rows differ when padded)
        "index": jnp.asarray(p, jnp.int32),  # next cache slot, the same for every row
    }
    return logits[:, -1], state


def _transformer_step(model: TransformerLM, params: Params, state: State, tokens: jax.Array):
    logits, cache = model.apply(
        {"params": params}, tokens[:, None].astype(jnp.int32), positions=state["position"][:, None],
        cache=state["cache"], cache_index=state["index"],
    )
    return logits[:, 0], {"cache": cache, "position": state["position"] + 1,
                          "index": state["index"] + 1}


def _batch_major(carry: Any) -> Any:
    """An RNN carry [L, B, H] -> [B, L, H], the batch first as the DecodeStep state wants it."""
    return jax.tree.map(lambda a: jnp.moveaxis(a, 1, 0), carry)


def _layer_major(carry: Any) -> Any:
    return jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), carry)


def _rnn_init(model: RNNLM, params: Params, batch: Batch, max_len: int):
    del max_len  # a carry has no length
    # Left padding gets segment 0, so the carry resets where the real prompt starts.
    tokens, segments, _ = prompt_layout(batch["prompt"])
    logits, carry = model.apply(
        {"params": params}, tokens, segment_ids=segments, carry=model.init_carry(tokens.shape[0]),
        return_carry=True,
    )
    return logits[:, -1], _batch_major(carry)


def _rnn_step(model: RNNLM, params: Params, state: State, tokens: jax.Array):
    logits, carry = model.apply(
        {"params": params}, tokens[:, None].astype(jnp.int32), carry=_layer_major(state),
        return_carry=True,
    )
    return logits[:, 0], _batch_major(carry)


# ---------------------------------------------------------------------------------------------
# Transformer encoder-decoder
#
# State: {'cache': the decoder cache (cross-attention keys included), 'inputs_segment_ids'
# [B, S], 'position' [B] (next position per row), 'index' (next cache slot, 0-d)}, and with
# copy_source 'copy': {'memory': encoder output [B, S, E], 'keys': pointer keys
# [B, S, head_size], 'source_ids' [B, S]}. With zero_context the encoder is skipped, the cache
# holds no cross-attention keys and nothing is copied (the internal LM).


def _s2s_transformer_init(model: Seq2SeqTransformer, params: Params, batch: Batch, max_len: int,
                          zero_context: bool = False):
    variables = {"params": params}
    tokens, segments, positions = prompt_layout(batch["prompt"])
    inputs = batch["inputs"].astype(jnp.int32)
    source_segments = (inputs != PAD_ID).astype(jnp.int32)
    encoded = None
    if not zero_context:
        encoded = model.apply(variables, inputs, segment_ids=source_segments, method="encode")
    hidden, cache = model.apply(
        variables, encoded, source_segments, tokens, decoder_segment_ids=segments,
        decoder_positions=positions, zero_context=zero_context,
        cache=model.init_cache(tokens.shape[0], max_len), cache_index=0, method="decode_hidden",
    )
    logits = model.apply(variables, hidden[:, -1:], method="logits_from_hidden")
    state = {
        "cache": cache,
        "inputs_segment_ids": source_segments,
        "position": positions[:, -1] + 1,  # rows differ when the prompt is padded
        "index": jnp.asarray(tokens.shape[1], jnp.int32),
    }
    if model.cfg.copy_source and not zero_context:
        keys = model.apply(variables, encoded, method="copy_keys")
        state["copy"] = {"memory": encoded, "keys": keys, "source_ids": inputs}
        logits = _s2s_transformer_copy(model, variables, state, hidden[:, -1:], logits,
                                       segments[:, -1:])
    return logits[:, 0], state


def _s2s_transformer_step(model: Seq2SeqTransformer, params: Params, state: State,
                          tokens: jax.Array, zero_context: bool = False):
    variables = {"params": params}
    hidden, cache = model.apply(
        variables, None, state["inputs_segment_ids"], tokens[:, None].astype(jnp.int32),
        decoder_positions=state["position"][:, None], zero_context=zero_context,
        cache=state["cache"], cache_index=state["index"], method="decode_hidden",
    )
    logits = model.apply(variables, hidden, method="logits_from_hidden")
    if model.cfg.copy_source and not zero_context:
        logits = _s2s_transformer_copy(model, variables, state, hidden, logits, None)
    new_state = {**state, "cache": cache, "position": state["position"] + 1,
                 "index": state["index"] + 1}
    return logits[:, 0], new_state


def _s2s_transformer_copy(model, variables, state: State, hidden: jax.Array, logits: jax.Array,
                          segments: jax.Array | None) -> jax.Array:
    """The copy_source output for decoder states [B, 1, E] from the state's 'copy' entry."""
    copy = state["copy"]
    return model.apply(
        variables, hidden, logits, copy["memory"], copy["source_ids"],
        inputs_segment_ids=state["inputs_segment_ids"], decoder_segment_ids=segments,
        keys=copy["keys"], method="copy_log_probs",
    )


# ---------------------------------------------------------------------------------------------
# RNN encoder-decoder
#
# State: {'carry': {'h': [B, L, H], 'c' (lstm)}, 'memory': [B, S, 2H], 'keys': [B, S, H]
# (attention keys, computed once), 'memory_segment_ids': [B, S]}, and with copy_source
# 'copy': {'keys': [B, S, H] pointer keys, 'source_ids': [B, S]}.


def _s2s_rnn_init(model: Seq2SeqRNN, params: Params, batch: Batch, max_len: int,
                  zero_context: bool = False):
    del max_len  # the decoder state is a carry, not a cache with a length axis
    variables = {"params": params}
    inputs = batch["inputs"].astype(jnp.int32)
    source_segments = (inputs != PAD_ID).astype(jnp.int32)
    memory = model.apply(variables, inputs, segment_ids=source_segments, method="encode")
    state = {
        "carry": _batch_major(model.init_carry(inputs.shape[0])),
        "memory": memory,
        "keys": model.apply(variables, memory, method="attention_keys"),
        "memory_segment_ids": source_segments,
    }
    if model.cfg.copy_source and not zero_context:
        keys = model.apply(variables, memory, method="copy_keys")
        state["copy"] = {"keys": keys, "source_ids": inputs}
    # Left padding gets segment 0: the carry resets where the real prompt starts.
    tokens, segments, _ = prompt_layout(batch["prompt"])
    return _s2s_rnn_advance(model, variables, state, tokens, segments, zero_context)


def _s2s_rnn_step(model: Seq2SeqRNN, params: Params, state: State, tokens: jax.Array,
                  zero_context: bool = False):
    tokens = tokens[:, None].astype(jnp.int32)
    return _s2s_rnn_advance(model, {"params": params}, state, tokens, None, zero_context)


def _s2s_rnn_advance(model: Seq2SeqRNN, variables, state: State, tokens: jax.Array,
                     segments: jax.Array | None, zero_context: bool):
    """Runs the decoder over tokens [B, C] from the state; logits of the last one, new state."""
    hidden, carry = model.apply(
        variables, state["memory"], state["memory_segment_ids"], tokens,
        decoder_segment_ids=segments, zero_context=zero_context, keys=state["keys"],
        carry=_layer_major(state["carry"]), return_carry=True, method="decode_hidden",
    )
    logits = model.apply(variables, hidden[:, -1:], method="logits_from_hidden")
    if model.cfg.copy_source and not zero_context:
        copy = state["copy"]
        logits = model.apply(
            variables, hidden[:, -1:], logits, state["memory"], copy["source_ids"],
            inputs_segment_ids=state["memory_segment_ids"],
            decoder_segment_ids=None if segments is None else segments[:, -1:],
            keys=copy["keys"], method="copy_log_probs",
        )
    return logits[:, 0], {**state, "carry": _batch_major(carry)}


# ---------------------------------------------------------------------------------------------
# Trained fusion: each base steps with its own DecodeStep, and the bases'
# `logits_from_hidden` is intercepted to hand back its input, so those steps yield the states
# s_t and h_t; the fused output layer runs on them. State: {'s2s': ..., 'lm': ...}.


class _BaseStates:
    """Interceptor: a base's `logits_from_hidden` hands back its input, the hidden state, so
    the base's own DecodeStep yields s_t / h_t; an s2s's `copy_log_probs` (copy_source) hands
    back its hidden state too, and keeps its arguments, so the copy mixture can be applied to
    the fused logits afterwards with exactly the base's copy inputs."""

    def __init__(self):
        self.copy_call: tuple[tuple, dict] | None = None

    def __call__(self, next_fun, args, kwargs, context):
        if context.method_name == "logits_from_hidden":
            return args[0]
        if context.method_name == "copy_log_probs":
            self.copy_call = (args, kwargs)
            return args[0]
        return next_fun(*args, **kwargs)


def _fused_logits(model: FusedSeq2Seq, params: Params, s: jax.Array, h: jax.Array,
                  copy_call: tuple[tuple, dict] | None) -> jax.Array:
    """Last-position states s [B, D], h [B, H] -> fused logits [B, V] (with a copying s2s,
    the log-probs of the copy mixture around them)."""
    hidden = {"s2s": s[:, None], "lm": h[:, None]}
    logits = model.apply({"params": params}, hidden, method="logits_from_hidden")
    if copy_call is not None:
        (s_hidden, _, *rest), kwargs = copy_call
        logits = model.s2s.apply({"params": params["s2s"]}, s_hidden, logits, *rest, **kwargs,
                                 method="copy_log_probs")
    return logits[:, 0]


def _fused_init(model: FusedSeq2Seq, params: Params, batch: Batch, max_len: int,
                zero_context: bool = False):
    if model.cfg.method == "lm_prior":  # the prior shapes training only: decode the TM alone
        return seq2seq_decode_step(model.s2s, zero_context).init(params["s2s"], batch, max_len)
    s2s_step, lm_step = seq2seq_decode_step(model.s2s, zero_context), lm_decode_step(model.lm)
    states = _BaseStates()
    with nn.intercept_methods(states):
        s, s2s_state = s2s_step.init(params["s2s"], batch, max_len)
        h, lm_state = lm_step.init(params["lm"], {"prompt": batch["prompt"]}, max_len)
    logits = _fused_logits(model, params, s, h, states.copy_call)
    return logits, {"s2s": s2s_state, "lm": lm_state}


def _fused_step(model: FusedSeq2Seq, params: Params, state: State, tokens: jax.Array,
                zero_context: bool = False):
    if model.cfg.method == "lm_prior":
        return seq2seq_decode_step(model.s2s, zero_context).step(params["s2s"], state, tokens)
    s2s_step, lm_step = seq2seq_decode_step(model.s2s, zero_context), lm_decode_step(model.lm)
    states = _BaseStates()
    with nn.intercept_methods(states):
        s, s2s_state = s2s_step.step(params["s2s"], state["s2s"], tokens)
        h, lm_state = lm_step.step(params["lm"], state["lm"], tokens)
    logits = _fused_logits(model, params, s, h, states.copy_call)
    return logits, {"s2s": s2s_state, "lm": lm_state}


_SEQ2SEQ = (
    (Seq2SeqTransformer, _s2s_transformer_init, _s2s_transformer_step),
    (Seq2SeqRNN, _s2s_rnn_init, _s2s_rnn_step),
    (FusedSeq2Seq, _fused_init, _fused_step),
)
