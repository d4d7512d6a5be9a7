"""Trained fusion's bases: check, resolve, load and warm-start from their workdirs.

A fused config names its bases by workdir (`fusion.lm_workdir`, and `fusion.s2s_workdir` for
the methods that start from a trained encoder-decoder). Before anything is built the bases
are checked (`check_fusion_config`); the LM's model config is copied into the fused config
(`resolve_fusion`), so a fused workdir rebuilds its model without the LM's workdir; at init the
bases' params are restored into the fused model's subtrees and the fusion layers start from
them (`fused_init_fn`).
"""

from __future__ import annotations

import copy
import dataclasses

import flax.linen as nn
import jax
import ml_collections

from lmfuse.data.tokenizer import Tokenizer
from lmfuse.errors import LmfuseError
from lmfuse.models.fusion import PRETRAINED_S2S, warm_start
from lmfuse.models.registry import LM_NAMES, check_fusion
from lmfuse.train import checkpoint
from lmfuse.train.step import TrainState


def fusion_method(config: ml_collections.ConfigDict) -> str:
    """config.fusion.method: '' means no fusion."""
    return config.fusion.method


def _resolved(fusion: ml_collections.ConfigDict) -> bool:
    """Whether fusion.lm_model is filled in: a fused workdir's stored config rebuilds from it."""
    return bool(fusion.lm_model)


def _base_workdirs(fusion: ml_collections.ConfigDict) -> list[tuple[str, str]]:
    """(base name, workdir) of every base the method starts from."""
    bases = [("lm", fusion.lm_workdir)]
    if fusion.method in PRETRAINED_S2S:
        bases.append(("s2s", fusion.s2s_workdir))
    return bases


def _base_step(fusion: ml_collections.ConfigDict, base: str) -> int | None:
    """The checkpoint a base starts from: the encoder-decoder's `fusion.s2s_step` (None, the
    newest intact one, when 0 or unset: fused workdirs from before the key), the LM's newest."""
    return (fusion.get("s2s_step", 0) or None) if base == "s2s" else None


def check_fusion_config(config: ml_collections.ConfigDict) -> None:
    """Fusion settings that cannot work fail here, before any data or model is loaded."""
    fusion = config.fusion
    check_fusion(fusion, config.model.name)
    if _resolved(fusion):
        return
    if fusion.method not in PRETRAINED_S2S and (fusion.s2s_workdir or fusion.get("s2s_step", 0)):
        raise LmfuseError(
            f"fusion.s2s_workdir and fusion.s2s_step are for {' and '.join(PRETRAINED_S2S)} "
            f"fusion; {fusion.method} trains the encoder-decoder from scratch, so leave them unset"
        )
    if fusion.get("s2s_step", 0) < 0:
        raise LmfuseError(f"fusion.s2s_step={fusion.s2s_step} must be >= 0 (0: the newest "
                          "checkpoint of fusion.s2s_workdir)")
    for base, workdir in _base_workdirs(fusion):
        if not workdir:
            what = "a trained LM" if base == "lm" else "the trained encoder-decoder it starts from"
            raise LmfuseError(f"fusion.method={fusion.method!r} needs fusion.{base}_workdir, {what}")
        stored = _base_config(workdir, base, None)
        copies = stored.model.get("copy_source", False)
        if base == "s2s" and copies != config.model.get("copy_source", False):
            raise LmfuseError(
                f"fusion.s2s_workdir {workdir!r} holds a model.copy_source={copies} model; set "
                f"model.copy_source={copies} to fuse it"
            )


def _base_config(workdir: str, base: str, tokenizer: Tokenizer | None) -> ml_collections.ConfigDict:
    """The stored config of a base's workdir, checked (its tokenizer against `tokenizer`)."""
    role = f"fusion.{base}_workdir {workdir!r}"
    try:
        stored = ml_collections.ConfigDict(checkpoint.read_json_item(workdir, "config"))
        ref = checkpoint.read_json_item(workdir, "tokenizer")
    except checkpoint.NoCheckpointError:  # only damaged ones: that error says which and why
        what = "LM" if base == "lm" else "encoder-decoder"
        raise LmfuseError(
            f"{role} holds no finished checkpoint; train the {what} there first"
        ) from None
    if fusion_method(stored):
        raise LmfuseError(f"{role} holds a fused model; fuse a plain {base} instead")
    if tokenizer is not None and ref["sha256"] != tokenizer.sha256:
        raise LmfuseError(
            f"vocab mismatch: {role} uses tokenizer sha256 {ref['sha256'][:12]}, this config's "
            f"data {tokenizer.sha256[:12]}; train both with the same tokenizer settings"
        )
    return stored


def resolve_fusion(config: ml_collections.ConfigDict, tokenizer: Tokenizer) -> ml_collections.ConfigDict:
    """A fused config, checked against its base workdirs, with fusion.lm_model copied from the
    LM's (a copy of `config`); unchanged once filled in (a fused workdir's stored config)."""
    check_fusion_config(config)
    if _resolved(config.fusion):
        return config
    lm = _base_config(config.fusion.lm_workdir, "lm", tokenizer).model
    if lm.name not in LM_NAMES:
        raise LmfuseError(
            f"fusion.lm_workdir {config.fusion.lm_workdir!r} holds a {lm.name!r} model; fusion "
            f"needs a decoder-only LM ({', '.join(LM_NAMES)})"
        )
    if lm.name == "transformer" and lm.positions == "learned" and lm.max_len < config.data.max_length:
        raise LmfuseError(
            f"the LM in {config.fusion.lm_workdir!r} has model.max_len={lm.max_len} learned "
            f"positions, fewer than data.max_length={config.data.max_length}; lower "
            "data.max_length or fuse a longer LM"
        )
    for base, workdir in _base_workdirs(config.fusion)[1:]:  # the s2s, where it is pretrained
        stored = _base_config(workdir, base, tokenizer).model
        if stored.name != config.model.name:
            raise LmfuseError(
                f"fusion.s2s_workdir {workdir!r} holds a {stored.name!r} model, but model.name="
                f"{config.model.name!r}; use the model settings it was trained with"
            )
    config = copy.deepcopy(config)
    with config.unlocked():
        config.fusion.lm_model = ml_collections.ConfigDict(lm.to_dict())
    return config


def load_fusion_bases(config: ml_collections.ConfigDict, tokenizer: Tokenizer, abstract_params) -> dict:
    """{'lm': params (, 's2s': params)}: each base's params restored from its workdir straight
    into the fused model's subtree (`abstract_params[base]`: shapes and shardings of this
    config's mesh), after a check that every parameter fits."""
    bases = {}
    for base, workdir in _base_workdirs(config.fusion):
        _base_config(workdir, base, tokenizer)
        step = _base_step(config.fusion, base)
        _check_fits(workdir, base, checkpoint.stored_param_shapes(workdir, step),
                    abstract_params[base])
        bases[base], _ = checkpoint.restore_params(workdir, abstract_params[base], step)
    return bases


def _check_fits(workdir: str, base: str, stored: dict, abstract) -> None:
    """One line naming the first parameter whose shape (or presence) differs."""

    def key(names) -> str:
        return base + "".join(f"[{n!r}]" for n in names)

    have = {key(names): shape for names, shape in stored.items()}
    want = {key(checkpoint.path_names(p)): tuple(x.shape)
            for p, x in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    for key in sorted(have.keys() | want.keys()):
        if have.get(key) != want.get(key):
            raise LmfuseError(
                f"fusion.{base}_workdir {workdir!r} does not fit this config's model: {key} is "
                f"{have.get(key)} there and {want.get(key)} here; use the model settings it was "
                "trained with"
            )


@dataclasses.dataclass(frozen=True)
class FusedInit:
    """A fused trainer's `init_fn(rng) -> TrainState`: the bases' trained params (read from their
    workdirs only when called, so rebuilding a fused workdir never needs them), the fusion
    layers started from them, a fresh optimizer state. `jitted(rng, bases)` is the compiled
    part, `load_bases()` the reading."""

    jitted: object
    load_bases: object

    def __call__(self, rng: jax.Array) -> TrainState:
        return self.jitted(rng, self.load_bases())


def fused_init_fn(model, init_boxed, tx, state_shardings, abstract_params, config, tokenizer
                  ) -> FusedInit:
    """The `FusedInit` of a fused trainer (`init_boxed(rng)`: the boxed fresh TrainState)."""

    def init(rng, bases):
        state = nn.unbox(init_boxed(rng))
        params = warm_start(model, {**state.params, **bases})
        return state.replace(params=params, opt_state=tx.init(params))

    return FusedInit(
        jax.jit(init, out_shardings=state_shardings),
        lambda: load_fusion_bases(config, tokenizer, abstract_params),
    )
