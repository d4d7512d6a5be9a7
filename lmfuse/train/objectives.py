"""Training objectives: what the model is fed and which tokens the loss counts.

    lm       decoder-only LM (transformer, rnn, lstm, gru) on the lm view: next-token prediction.
    seq2seq  encoder-decoder (s2s_transformer, s2s_rnn) on source -> target pairs, teacher
             forced: the decoder reads the targets shifted right behind BOS within each segment.
             Pairs come from the translate view, or from the lm view with
             `data.noising='span_corruption'` (T5's denoising objective).
    mlm      encoder-only masked LM (masked_lm) on the lm view with `data.noising='bert_mask'`:
             the pipeline masks tokens and puts the original ids in `targets` (PAD elsewhere).

Every objective yields logits [B, T, V] aligned with `batch['targets']`; a token counts in the
loss where its segment id is non-zero and its target is not PAD (for mlm: the chosen tokens).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from lmfuse.errors import LmfuseError
from lmfuse.models.layers import shift_right
from lmfuse.models.registry import MASKED_LM_NAMES, SEQ2SEQ_NAMES
from lmfuse.tokens import PAD_ID

Batch = dict[str, jax.Array]
OBJECTIVES = ("lm", "seq2seq", "mlm")


@dataclasses.dataclass(frozen=True)
class Objective:
    """The forward pass and loss weights of one objective (hashable: a jit static argument)."""

    name: str

    def forward(
        self,
        apply_fn: Callable,
        params: Any,
        batch: Batch,
        rng: jax.Array | None,
        deterministic: bool,
        perturbations: Any = None,
    ) -> jax.Array:
        """Logits [B, T, V]. `perturbations` (the 'perturbations' collection of the model's
        `self.perturb` calls) is added to the embeddings for adversarial training."""
        variables = {"params": params}
        if perturbations is not None:
            variables["perturbations"] = perturbations
        rngs = None if deterministic else {"dropout": rng}
        if self.name == "seq2seq":
            return apply_fn(
                variables,
                batch["inputs"],
                shift_right(batch["targets"], batch["targets_positions"]),
                inputs_segment_ids=batch["inputs_segment_ids"],
                decoder_segment_ids=batch["targets_segment_ids"],
                inputs_positions=batch["inputs_positions"],
                decoder_positions=batch["targets_positions"],
                deterministic=deterministic,
                rngs=rngs,
            )
        return apply_fn(
            variables,
            batch["inputs"],
            segment_ids=batch["inputs_segment_ids"],
            positions=batch["inputs_positions"],
            deterministic=deterministic,
            rngs=rngs,
        )

    def init_inputs(self, input_length: int, target_length: int) -> tuple[jax.Array, ...]:
        """Dummy positional arguments for `model.init` (only their shapes matter)."""
        if self.name == "seq2seq":
            return (jnp.ones((1, input_length), jnp.int32), jnp.ones((1, target_length), jnp.int32))
        return (jnp.ones((1, input_length), jnp.int32),)

    @staticmethod
    def weights(batch: Batch) -> jax.Array:
        """float32 [B, T]: 1 where the target token counts in the loss."""
        counted = (batch["targets_segment_ids"] > 0) & (batch["targets"] != PAD_ID)
        return counted.astype(jnp.float32)


def objective_for(config: ml_collections.ConfigDict) -> Objective:
    """The objective implied by the model family, checked against the data settings."""
    name, view, noising = config.model.name, config.data.view, config.data.noising
    if name in SEQ2SEQ_NAMES:
        if view != "translate" and noising != "span_corruption":
            raise LmfuseError(
                f"model.name={name!r} is an encoder-decoder; set data.view='translate', or "
                "data.noising='span_corruption' to pre-train it on monolingual text"
            )
        return Objective("seq2seq")
    if view != "lm":
        raise LmfuseError(
            f"model.name={name!r} reads monolingual text, but data.view={view!r}; set "
            "data.view='lm' or choose an encoder-decoder (s2s_transformer, s2s_rnn)"
        )
    if name in MASKED_LM_NAMES:
        if noising != "bert_mask":
            raise LmfuseError(
                f"model.name={name!r} is a masked LM; set data.noising='bert_mask'"
            )
        return Objective("mlm")
    if noising:
        raise LmfuseError(
            f"data.noising={noising!r} needs a masked LM (bert_mask) or an encoder-decoder "
            f"(span_corruption), not model.name={name!r}"
        )
    return Objective("lm")
