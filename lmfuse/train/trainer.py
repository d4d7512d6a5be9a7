"""From a config to compiled steps: model, mesh, shardings, optimizer, jitted train/eval steps.

    config -> build_model (registry) -> mesh + logical rules -> abstract params (eval_shape)
      Model:   + jitted eval_step                          (eval, translate, inspect, fusion)
      Trainer: + optimizer, abstract TrainState, init_fn, jitted train_step    (lmfuse train)

Inference builds a `Model` only: no optimizer, no optimizer state to restore.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lmfuse.data.tokenizer import Tokenizer
from lmfuse.errors import LmfuseError
from lmfuse.models.registry import build_model
from lmfuse.train import budget, sharding
from lmfuse.train.fusion_init import (
    check_fusion_config,
    fused_init_fn,
    fusion_method,
    resolve_fusion,
)
from lmfuse.train.objectives import Objective, objective_for
from lmfuse.train.optim import build_optimizer, freeze
from lmfuse.train.step import LossOptions, TrainState, make_eval_step, make_train_step


@dataclasses.dataclass
class Model:
    """A model built from a config, placed on a mesh, with its compiled eval step."""

    config: ml_collections.ConfigDict
    tokenizer: Tokenizer
    model: nn.Module
    mesh: jax.sharding.Mesh
    rules: sharding.Rules  # logical axis -> mesh axes, from config.mesh.rules
    param_shardings: Any
    abstract_params: Any  # ShapeDtypeStructs carrying their shardings: a restore target
    eval_step: Any
    objective: Objective

    @property
    def num_params(self) -> int:
        return sum(math.prod(x.shape) for x in jax.tree.leaves(self.abstract_params))


@dataclasses.dataclass
class Trainer(Model):
    """A `Model` plus what training adds: optimizer, train state, init and train step."""

    state_shardings: Any = None
    abstract_state: Any = None
    init_fn: Any = None
    train_step: Any = None
    schedule: Any = None


def _check(config: ml_collections.ConfigDict) -> None:
    if config.train.z_loss and config.model.copy_source:
        # A copy output is already log-probabilities: logsumexp is 0 and the penalty is inert.
        raise LmfuseError(
            "train.z_loss does nothing on a model.copy_source=True model (its outputs are "
            "normalised, logsumexp 0); set train.z_loss=0 or model.copy_source=False"
        )
    if config.train.batch_size % config.train.accum_steps:
        raise LmfuseError(
            f"train.batch_size={config.train.batch_size} is not divisible by "
            f"train.accum_steps={config.train.accum_steps}"
        )


def check_config(config: ml_collections.ConfigDict) -> None:
    """Every check of a training config that needs no data, tokenizer or compilation, each a
    one-line `LmfuseError`, so `lmfuse train` refuses a bad config before it creates the
    workdir or prepares data: budget and cadence (`budget.check_config`), the model
    (registry; config.tokenizer.vocab_size stands in for the tokenizer's), the objective
    against the data view, the mesh on this host's devices and its rules, the optimizer and
    schedule, a fusion's workdirs, and `_check`."""
    budget.check_config(config.train)
    _check(config)
    if fusion_method(config):
        check_fusion_config(config)  # the fused model needs its LM's config: built later
    else:
        build_model(config.model, max(config.tokenizer.vocab_size, 1))
    objective_for(config)
    sharding.mesh_shape(config.mesh, jax.device_count())
    sharding.rules_from_config(config.mesh)
    build_optimizer(config.optimizer, max(config.train.steps, 1))


def _abstract(boxed, mesh: jax.sharding.Mesh, rules: sharding.Rules) -> tuple[Any, Any]:
    """(shardings, ShapeDtypeStructs with those shardings) of a boxed abstract pytree: the
    logical names come from the boxes the model put on its params; one table maps them."""
    shardings = sharding.logical_to_sharding(nn.get_partition_spec(boxed), mesh, rules)
    abstract = jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
        nn.unbox(boxed),
        shardings,
    )
    return shardings, abstract


def _setup(config: ml_collections.ConfigDict, tokenizer: Tokenizer, devices=None):
    """(config, model, objective, mesh, rules, init_params) shared by `build_model_on_mesh` and
    `build_trainer`; a fused config gains its LM's model config, read from the LM's workdir."""
    if fusion_method(config):
        config = resolve_fusion(config, tokenizer)
    model = build_model(config.model, tokenizer.vocab_size, config.fusion)
    objective = objective_for(config)
    mesh = sharding.make_mesh(config.mesh, devices)
    rules = sharding.rules_from_config(config.mesh)
    length = config.data.seq_len if objective.name != "seq2seq" else config.data.max_length
    dummy_inputs = objective.init_inputs(length, length)

    def init_params(rng):
        return model.init({"params": rng, "dropout": rng}, *dummy_inputs, deterministic=True)["params"]

    return config, model, objective, mesh, rules, init_params


def _eval_step(model: nn.Module, objective: Objective, param_shardings, mesh, rules):
    return jax.jit(
        make_eval_step(model.apply, objective),
        in_shardings=(param_shardings, sharding.batch_sharding(mesh, rules)),
        out_shardings=sharding.replicated(mesh),
    )


def build_model_on_mesh(config: ml_collections.ConfigDict, tokenizer: Tokenizer, devices=None) -> Model:
    """The model of `config` on its mesh, for inference: params are restored, never trained."""
    config, model, objective, mesh, rules, init_params = _setup(config, tokenizer, devices)
    boxed = jax.eval_shape(init_params, jax.random.key(config.seed))
    param_shardings, abstract_params = _abstract(boxed, mesh, rules)
    return Model(config, tokenizer, model, mesh, rules, param_shardings, abstract_params,
                 _eval_step(model, objective, param_shardings, mesh, rules), objective)


def build_trainer(config: ml_collections.ConfigDict, tokenizer: Tokenizer, devices=None,
                  total_steps: int | None = None) -> Trainer:
    """Everything `lmfuse train` compiles from a config; the learning-rate schedule spans
    `total_steps` (default train.steps; the loop passes its budget, which train.epochs sets)."""
    _check(config)
    config, model, objective, mesh, rules, init_params = _setup(config, tokenizer, devices)
    fused = bool(fusion_method(config))
    tx, schedule = build_optimizer(config.optimizer, total_steps or config.train.steps)
    if fused:
        tx = freeze(tx, model.cfg.frozen_bases())

    def init_boxed(rng):
        params = init_params(rng)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    boxed = jax.eval_shape(init_boxed, jax.random.key(config.seed))
    state_shardings, abstract_state = _abstract(boxed, mesh, rules)
    if fused:
        init_fn = fused_init_fn(model, init_boxed, tx, state_shardings, abstract_state.params,
                                config, tokenizer)
    else:
        init_fn = jax.jit(lambda r: nn.unbox(init_boxed(r)), out_shardings=state_shardings)

    loss_options = LossOptions(
        config.train.label_smoothing, config.train.z_loss, config.train.adversarial_epsilon,
        model_losses=config.fusion.method == "lm_prior",
    )
    replicated = sharding.replicated(mesh)
    train_step = jax.jit(
        make_train_step(model.apply, tx, loss_options, config.train.accum_steps, objective),
        in_shardings=(state_shardings, sharding.batch_sharding(mesh, rules), replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
    eval_step = _eval_step(model, objective, state_shardings.params, mesh, rules)
    return Trainer(config, tokenizer, model, mesh, rules, state_shardings.params, abstract_state.params,
                   eval_step, objective, state_shardings, abstract_state, init_fn, train_step,
                   schedule)


def tokenizer_ref(tokenizer: Tokenizer) -> dict:
    """What a checkpoint records of its tokenizer (fusion compares the SHA-256)."""
    return {"path": str(tokenizer.path), "sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size}
