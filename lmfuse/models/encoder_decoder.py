"""What the two encoder-decoders (Seq2SeqTransformer, Seq2SeqRNN) share: the teacher-forced
forward pass and the output layers, written once over the methods each backbone defines.

A backbone subclasses `EncoderDecoder` and defines, in `setup`, `wte` (the target embedding,
also the tied output layer), `lm_head` (when `cfg.tie_embeddings` is False) and `copy_head`
(when `cfg.copy_source`), and the methods `encode`, `decode_hidden` and `_copy_mask`, whose
masks differ between backbones. `FusedSeq2Seq` builds on it too, with the fused pair of
states as its hidden state.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from lmfuse.models.layers import constrain


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncoderDecoderConfig:
    """The config fields both encoder-decoders add to their decoder's (each default is its
    config key's one default; see `layers.ModelConfig`)."""

    num_encoder_layers: int = 0  # 0 means num_layers
    share_embeddings: bool = True  # one table for source, target (and the tied output layer)
    # Pointer-generator output: a gate mixes the vocab softmax with a copy of source tokens
    # (See et al. 2017; lmfuse.models.copy). Not with trained fusion (fusion.method).
    copy_source: bool = False


class EncoderDecoder(nn.Module):
    """Base of the encoder-decoders: `__call__`, `logits_from_hidden` and `copy_keys`."""

    def __call__(
        self,
        inputs: jax.Array,
        decoder_inputs: jax.Array,
        inputs_segment_ids: jax.Array | None = None,
        decoder_segment_ids: jax.Array | None = None,
        inputs_positions: jax.Array | None = None,
        decoder_positions: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """Teacher-forced float32 logits [B, T, V] for source ids [B, S] and decoder inputs
        [B, T] (with copy_source, normalised log-probs)."""
        encoded = self.encode(inputs, inputs_segment_ids, inputs_positions, deterministic)
        hidden = self.decode_hidden(
            encoded, inputs_segment_ids, decoder_inputs, decoder_segment_ids, decoder_positions,
            deterministic,
        )
        logits = self.logits_from_hidden(hidden)
        if not self._copies_source():
            return logits
        return self.copy_log_probs(
            hidden, logits, encoded, inputs, inputs_segment_ids, decoder_segment_ids
        )

    def _copies_source(self) -> bool:
        return self.cfg.copy_source

    def logits_from_hidden(self, hidden: jax.Array) -> jax.Array:
        """The output layer's input [B, T, E] -> float32 logits [B, T, V]."""
        logits = self.wte.attend(hidden) if self.cfg.tie_embeddings else self.lm_head(hidden)
        return constrain(logits, ("batch", "length", "vocab"))

    def copy_log_probs(
        self,
        hidden: jax.Array,
        logits: jax.Array,
        encoded: jax.Array,
        inputs: jax.Array,
        inputs_segment_ids: jax.Array | None,
        decoder_segment_ids: jax.Array | None = None,
        keys: jax.Array | None = None,
    ) -> jax.Array:
        """The copy_source output: decoder states [B, T, E] and their vocab logits [B, T, V],
        the encoder output of source ids [B, S] -> log-probs [B, T, V] float32, copying only
        where the backbone's `_copy_mask` allows (`keys`: `copy_keys(encoded)` if computed)."""
        mask = self._copy_mask(inputs, inputs_segment_ids, decoder_segment_ids, hidden.shape[:2])
        return self.copy_head(hidden, logits, encoded, inputs, mask, keys)

    def copy_keys(self, encoded: jax.Array) -> jax.Array:
        """Encoder output [B, S, M] -> the copy head's pointer keys [B, S, d], computed once
        per source when decoding."""
        return self.copy_head.keys(encoded)
