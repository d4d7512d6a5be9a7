"""The one optimizer builder: config -> `optax.chain(clip_by_global_norm, optimizer(schedule))`.

Schedules are Optax's own. Weight decay (AdamW) skips norms, biases and embeddings, following
common practice (GPT-2/3, nanoGPT): decaying them hurts and buys nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from lmfuse.errors import LmfuseError

OPTIMIZERS = ("adamw", "adam", "sgd", "adagrad", "rmsprop")
SCHEDULES = ("warmup_cosine", "linear", "exponential", "constant", "warmup_rsqrt")
# Parameter-path fragments that mark norms, biases and embeddings (no weight decay).
NO_DECAY_NAMES = ("norm", "bias", "embed", "scale", "pos_")




def build_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    lr, warmup = cfg.learning_rate, cfg.warmup_steps
    end = lr * cfg.end_learning_rate_factor
    if cfg.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup, max(total_steps, warmup + 1), end_value=end
        )
    if cfg.schedule == "linear":
        return optax.linear_schedule(lr, end, max(total_steps, 1))
    if cfg.schedule == "exponential":
        return optax.exponential_decay(lr, cfg.transition_steps, cfg.decay_rate)
    if cfg.schedule == "constant":
        return optax.constant_schedule(lr)
    if cfg.schedule == "warmup_rsqrt":
        # Linear warmup, then lr * sqrt(warmup / step) (Vaswani et al. 2017), joined by Optax.
        # join_schedules hands the second piece `step - warmup`.
        warmup = max(warmup, 1)

        def rsqrt(step):
            return lr * jax.lax.rsqrt((step + warmup) / warmup)

        return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), rsqrt], [warmup])
    raise LmfuseError(
        f"unknown optimizer.schedule {cfg.schedule!r}; choose one of {', '.join(SCHEDULES)}"
    )


def decay_mask(params) -> object:
    """True for parameters that get weight decay: matrices that are not norms or embeddings."""

    def wants_decay(path, leaf) -> bool:
        name = "/".join(str(getattr(k, "key", k)) for k in path).lower()
        return leaf.ndim >= 2 and not any(part in name for part in NO_DECAY_NAMES)

    return jax.tree_util.tree_map_with_path(wants_decay, params)


def build_optimizer(
    cfg: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer chain and its schedule (the schedule is also logged as the lr)."""
    schedule = build_schedule(cfg, total_steps)
    if cfg.name == "adamw":
        optimizer = optax.adamw(
            schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
            mask=decay_mask,
        )
    elif cfg.name == "adam":
        optimizer = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    elif cfg.name == "sgd":
        optimizer = optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
    elif cfg.name == "adagrad":
        optimizer = optax.adagrad(
            schedule, initial_accumulator_value=cfg.initial_accumulator_value, eps=cfg.eps
        )
    elif cfg.name == "rmsprop":
        optimizer = optax.rmsprop(
            schedule, decay=cfg.decay, eps=cfg.eps, momentum=cfg.momentum or None,
            nesterov=cfg.nesterov,
        )
    else:
        raise LmfuseError(
            f"unknown optimizer.name {cfg.name!r}; choose one of {', '.join(OPTIMIZERS)}"
        )
    if cfg.learning_rate <= 0:
        raise LmfuseError(f"optimizer.learning_rate must be positive, got {cfg.learning_rate}")
    clip = optax.clip_by_global_norm(cfg.clip_norm) if cfg.clip_norm > 0 else optax.identity()
    return optax.chain(clip, optimizer), schedule


def freeze(tx: optax.GradientTransformation, frozen: tuple[str, ...]) -> optax.GradientTransformation:
    """`tx` on every top-level params subtree but the `frozen` ones, which stay bit-identical
    and get no optimizer state (Adam moments exist only for what trains)."""
    if not frozen:
        return tx

    def labels(params) -> dict[str, str]:
        return {name: "frozen" if name in frozen else "trained" for name in params}

    # Updates of -0.0, not set_to_zero's +0.0: p + (-0.0) is p bit for bit for every p, while
    # (-0.0) + 0.0 is +0.0.
    keep = optax.stateless(lambda updates, params=None: jax.tree.map(
        lambda u: jnp.full_like(u, -0.0), updates))
    return optax.multi_transform({"trained": tx, "frozen": keep}, labels)
