"""Loss, train step and eval step: pure functions that the loop compiles once with `jax.jit`.

The loss is token cross-entropy on `targets`, weighted by `targets_segment_ids > 0` so padding
never counts, with optional label smoothing and z-loss (PaLM's `z_loss * logsumexp(logits)^2`,
which keeps the softmax normaliser near 1 and training stable in low precision).

Gradient accumulation splits the batch into `accum_steps` micro-batches and scans over them, so
memory holds one micro-batch of activations and the update equals the full-batch one.

Adversarial training (`adversarial_epsilon > 0`; Goodfellow et al. 2015, FGSM, applied to the
input embeddings as Miyato et al. 2017 do for text): the gradient g of the clean loss with
respect to the embeddings (the models' `perturb('embeddings', ...)` hooks) gives the
perturbation r = epsilon * sign(g), and the step minimises 0.5 * L(x) + 0.5 * L(x + r), with r
held constant. It costs a second forward/backward pass; reported losses stay the clean ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from lmfuse.train.objectives import Objective

Batch = dict[str, jax.Array]
LM = Objective("lm")


class TrainState(flax.struct.PyTreeNode):
    """Everything that changes during training. Functions live outside, so it saves cleanly."""

    step: jax.Array
    params: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class LossOptions:
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    adversarial_epsilon: float = 0.0
    # Add the per-token penalties a model sows into its 'losses' collection (the LM prior).
    model_losses: bool = False


def token_losses(
    logits: jax.Array, targets: jax.Array, options: LossOptions
) -> tuple[jax.Array, jax.Array]:
    """Per-token training loss (smoothed, with z-loss) and plain negative log-likelihood."""
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    # The target's logit through a one-hot product, not take_along_axis: the same value (every
    # other term is an exact zero), but its gradient is an elementwise product that fuses into
    # the softmax gradient, where take_along_axis's is a scatter into a zeroed [B, T, V] array
    # (on CPU that scatter and its zero fill cost 1.4-1.6x on the head + loss backward).
    one_hot = jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)
    nll = log_z - jnp.sum(logits * one_hot, axis=-1)
    loss = nll
    if options.label_smoothing:
        smooth = -(logits - log_z[..., None]).mean(axis=-1)
        loss = (1.0 - options.label_smoothing) * nll + options.label_smoothing * smooth
    if options.z_loss:
        loss = loss + options.z_loss * jnp.square(log_z)
    return loss, nll


def _loss_sums(apply_fn, params, batch: Batch, rng, options: LossOptions, deterministic: bool,
               objective: Objective = LM, perturbations=None):
    penalties = ()
    if options.model_losses:
        def apply_collecting(*args, **kwargs):
            return apply_fn(*args, mutable=["losses"], **kwargs)

        logits, collections = objective.forward(apply_collecting, params, batch, rng,
                                                deterministic, perturbations)
        penalties = jax.tree.leaves(collections.get("losses", {}))  # each [B, T]
    else:
        logits = objective.forward(apply_fn, params, batch, rng, deterministic, perturbations)
    weights = objective.weights(batch)
    loss, nll = token_losses(logits, batch["targets"], options)
    for penalty in penalties:
        loss = loss + penalty
    return (loss * weights).sum(), ((nll * weights).sum(), weights.sum())


def _zero_perturbations(apply_fn, params, batch: Batch, objective: Objective):
    """Zeros shaped like the model's 'perturbations' collection (its embedding hooks)."""

    def collect():
        variables = {"params": params}
        _, mutated = _apply_mutable(apply_fn, variables, batch, objective)
        return mutated["perturbations"]

    shapes = jax.eval_shape(collect)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _apply_mutable(apply_fn, variables, batch, objective):
    def mutable_apply(*args, **kwargs):
        return apply_fn(*args, mutable=["perturbations"], **kwargs)

    return objective.forward(mutable_apply, variables["params"], batch, None, True)


def all_finite(tree: Any) -> jax.Array:
    """One bool: no float leaf of `tree` holds nan or inf (a reduction per leaf, inside the jit)."""
    flags = [jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(tree)
             if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.stack(flags).all() if flags else jnp.asarray(True)


def make_train_step(
    apply_fn: Callable,
    tx: optax.GradientTransformation,
    options: LossOptions,
    accum_steps: int,
    objective: Objective = LM,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict]]:
    """Returns `train_step(state, batch, rng) -> (state, metrics)`; metrics stay on device:
    'loss', 'tokens', 'grad_norm' and 'finite' (the returned state holds no nan/inf)."""

    def loss_sums(params, micro: Batch, rng, perturbations=None):
        return _loss_sums(apply_fn, params, micro, rng, options, False, objective, perturbations)

    def micro_grads(params, micro: Batch, rng):
        if not options.adversarial_epsilon:
            grads, (nll_sum, count) = jax.grad(loss_sums, has_aux=True)(params, micro, rng)
            return grads, nll_sum, count
        # The same dropout key for both passes: the perturbation is then the only difference.
        zeros = _zero_perturbations(apply_fn, params, micro, objective)
        (grads, g_embed), (nll_sum, count) = jax.grad(loss_sums, argnums=(0, 3), has_aux=True)(
            params, micro, rng, zeros
        )
        attack = jax.tree.map(lambda g: options.adversarial_epsilon * jnp.sign(g), g_embed)
        adv_grads, _ = jax.grad(loss_sums, has_aux=True)(params, micro, rng, attack)
        grads = jax.tree.map(lambda a, b: 0.5 * (a + b), grads, adv_grads)
        return grads, nll_sum, count

    def train_step(state: TrainState, batch: Batch, rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)  # a new dropout key each step, same on resume
        if accum_steps == 1:
            grads, nll_sum, count = micro_grads(state.params, batch, rng)
        else:
            micro = jax.tree.map(
                lambda x: x.reshape(accum_steps, x.shape[0] // accum_steps, *x.shape[1:]), batch
            )

            def body(carry, inputs):
                index, micro_batch = inputs
                grads, nll, count = micro_grads(state.params, micro_batch, jax.random.fold_in(rng, index))
                return jax.tree.map(jnp.add, carry, (grads, nll, count)), None

            zeros = (jax.tree.map(jnp.zeros_like, state.params), 0.0, 0.0)
            (grads, nll_sum, count), _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
        # Sums over tokens, divided once: the update is the same however the batch is split.
        grads = jax.tree.map(lambda g: g / jnp.maximum(count, 1.0), grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": nll_sum / jnp.maximum(count, 1.0),
            "tokens": count,
            "grad_norm": optax.global_norm(grads),
            # Of the state this step returns (the loss is of the one it got): the loop saves
            # no checkpoint unless this held at every step since the last one.
            "finite": all_finite((params, opt_state)),
        }
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def make_eval_step(apply_fn: Callable, objective: Objective = LM) -> Callable[[Any, Batch], dict]:
    """Returns `eval_step(params, batch) -> {'nll_sum', 'tokens', 'correct'}` (sums over the
    counted tokens, to add over batches; 'correct' counts argmax hits, i.e. accuracy)."""

    def eval_step(params, batch: Batch):
        logits = objective.forward(apply_fn, params, batch, None, True)
        weights = objective.weights(batch)
        _, nll = token_losses(logits, batch["targets"], LossOptions())
        correct = (jnp.argmax(logits, axis=-1) == batch["targets"]).astype(jnp.float32)
        return {"nll_sum": (nll * weights).sum(), "tokens": weights.sum(),
                "correct": (correct * weights).sum()}

    return eval_step
