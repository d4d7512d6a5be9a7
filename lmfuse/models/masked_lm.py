"""BERT-style masked language model: a bidirectional transformer encoder with a tied output layer.

    inputs [B, S] int32 (0 = pad; MASK_ID where bert_mask hid a token)
      -> encoder: TransformerEncoder (seq2seq_transformer) over the shared table wte [V, E]:
         embeddings (+ positions) -> dropout -> num_layers x Block, bidirectional (segment
         mask when packed) -> ln_f (pre-LN only)                           hidden: [B, S, E]
      -> head_transform=True only (BERT's): dense [E, E] -> activation -> LayerNorm
      -> wte.attend (tied; lm_head [E, V] if tie_embeddings=False) + output_bias [V]
                                                                    logits: [B, S, V] float32

Logits come out at every position; the loss counts only the tokens bert_mask chose
(targets > 0). Given segment ids, padding (segment 0) attends only to padding and packed
examples never see each other. The head transform is BERT's: with it, the encoder's last layer
need not live in the embedding space that the tied decoder reads.

Param tree (scan_layers=True turns encoder/blocks_i into encoder/blocks with a leading
[num_layers] axis, logical name 'layers'):

    wte/embedding [V, E]                    ('vocab', 'embed')
    encoder/wpe [max_len, E]                (None, 'embed')        positions='learned' only
    encoder/blocks_i/...                    as TransformerLM's blocks_i
    encoder/ln_f/{scale,bias} [E]           ('embed',)             pre-LN only
    transform/kernel [E, E]                 (None, 'embed'); bias [E] ('embed',)   head_transform
    transform_ln/{scale,bias} [E]           ('embed',)                             head_transform
    lm_head/kernel [E, V]                   ('embed', 'vocab')     tie_embeddings=False only
    output_bias [V]                         ('vocab',)

Calls (same signature as the LMs):
    logits = model.apply(v, inputs, segment_ids=None, positions=None, deterministic=True)
    hidden = model.apply(v, inputs, ..., method='encode')               # [B, S, E]
    logits = model.apply(v, hidden, method='logits_from_hidden')
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmfuse.models.layers import ACTIVATIONS, Embed, Head, compute_dtype, constrain, partitioned
from lmfuse.models.seq2seq_transformer import TransformerEncoder
from lmfuse.models.transformer import TransformerConfig
from lmfuse.models.transformer_layers import layer_norm


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaskedLMConfig(TransformerConfig):
    """`TransformerConfig` plus the choice of BERT's output transform, a module option that
    no config key sets (`registry.MODULE_OPTIONS`)."""

    # BERT's dense + activation + LayerNorm before the output layer. Off by default: in the
    # tiny learning test's setting (one layer, width 32, Adam) a model with it was still at the
    # unigram baseline after 200 steps, where the plain tied layer was already 70% above it.
    head_transform: bool = False


class MaskedLM(nn.Module):
    """BERT-style masked LM. See the module docstring for shapes and the param tree."""

    cfg: MaskedLMConfig

    def setup(self) -> None:
        c = self.cfg
        self.wte = Embed(c.vocab_size, c.emb_dim, c.dtype)
        self.encoder = TransformerEncoder(c, embed=self.wte)
        if c.head_transform:
            self.transform = nn.Dense(
                c.emb_dim,
                use_bias=True,
                dtype=compute_dtype(c.dtype),
                param_dtype=jnp.float32,
                kernel_init=partitioned(nn.initializers.normal(0.02), (None, "embed")),
                bias_init=partitioned(nn.initializers.zeros, ("embed",)),
            )
            self.transform_ln = layer_norm(c)
        if not c.tie_embeddings:
            self.lm_head = Head(c.vocab_size, "embed", c.dtype)
        bias_init = partitioned(nn.initializers.zeros, ("vocab",))
        self.output_bias = self.param("output_bias", bias_init, (c.vocab_size,), jnp.float32)

    def __call__(
        self,
        inputs: jax.Array,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """[B, S] int32 -> float32 logits [B, S, V] at every position."""
        return self.logits_from_hidden(self.encode(inputs, segment_ids, positions, deterministic))

    def encode(
        self,
        inputs: jax.Array,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """The encoder's final hidden states [B, S, E] (before the head transform)."""
        return self.encoder(inputs, segment_ids, positions, deterministic)

    def logits_from_hidden(self, hidden: jax.Array) -> jax.Array:
        """[B, S, E] -> float32 logits [B, S, V]."""
        c = self.cfg
        if c.head_transform:
            hidden = self.transform_ln(ACTIVATIONS[c.activation](self.transform(hidden)))
        logits = self.wte.attend(hidden) if c.tie_embeddings else self.lm_head(hidden)
        return constrain(logits + self.output_bias, ("batch", "length", "vocab"))
