"""The training loop: config -> sharded state -> jitted steps -> checkpoints and metrics.

    tokenizer + data  ->  model (registry)  ->  mesh + logical rules  ->  sharded TrainState
      -> restore the latest checkpoint if the workdir has one (state + data iterator)
      -> for each step: next batch -> global array -> train_step (jit, donated state)
      -> every log_every: metrics to TensorBoard / metrics.jsonl / progress bar (one host sync)
      -> every eval_every: validation perplexity; every checkpoint_every: async checkpoint

Host syncs happen only at log, eval and checkpoint points. A non-finite loss is caught at the
next of those points, before any checkpoint is written, so the last good checkpoint survives.
SIGTERM saves a checkpoint at the current step and returns cleanly.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import signal
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from lmfuse.data import corpora
from lmfuse.data.pipeline import PipelineOptions, make_dataset
from lmfuse.data.tokenizer import Tokenizer
from lmfuse.errors import LmfuseError
from lmfuse.models.registry import LM_NAMES, TRANSFORMER_NAMES, build_model, check_fusion
from lmfuse.train import checkpoint, sharding
from lmfuse.train.metrics_log import MetricsLog, flops_per_token, peak_flops_per_device
from lmfuse.train.objectives import Objective, objective_for
from lmfuse.train.optim import build_optimizer
from lmfuse.train.step import LossOptions, TrainState, make_eval_step, make_train_step


@dataclasses.dataclass
class Trainer:
    """Everything built from a config: model, mesh, shardings and the compiled steps."""

    config: ml_collections.ConfigDict
    tokenizer: Tokenizer
    model: nn.Module
    mesh: jax.sharding.Mesh
    state_shardings: TrainState
    abstract_state: TrainState
    init_fn: object
    train_step: object
    eval_step: object
    schedule: object
    objective: Objective

    @property
    def num_params(self) -> int:
        return sum(math.prod(x.shape) for x in jax.tree.leaves(self.abstract_state.params))


def build_trainer(config: ml_collections.ConfigDict, tokenizer: Tokenizer, devices=None) -> Trainer:
    if config.train.z_loss and config.model.get("copy_source", False):
        # A copy output is already log-probabilities: logsumexp is 0 and the penalty is inert.
        raise LmfuseError(
            "train.z_loss does nothing on a model.copy_source=True model (its outputs are "
            "normalised, logsumexp 0); set train.z_loss=0 or model.copy_source=False"
        )
    fused = bool(fusion_method(config))
    if fused:  # the config gains its LM's model config, read once from the LM's workdir
        config = resolve_fusion(config, tokenizer)
    model = build_model(config.model, tokenizer.vocab_size, config.get("fusion"))
    objective = objective_for(config)
    mesh = sharding.make_mesh(config.mesh, devices)
    tx, schedule = build_optimizer(config.optimizer, config.train.steps)
    if fused:
        tx = freeze(tx, model.cfg.frozen_bases())
    length = config.data.seq_len if objective.name != "seq2seq" else config.data.max_length
    dummy_inputs = objective.init_inputs(length, length)

    def init_boxed(rng):
        params = model.init(
            {"params": rng, "dropout": rng}, *dummy_inputs, deterministic=True
        )["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    rng = jax.random.key(config.seed)
    boxed = jax.eval_shape(init_boxed, rng)
    # Logical names come from the boxes the model put on its params; one table maps them.
    state_shardings = sharding.logical_to_sharding(nn.get_partition_spec(boxed), mesh)
    abstract_state = jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
        nn.unbox(boxed),
        state_shardings,
    )
    init_fn = jax.jit(lambda r: nn.unbox(init_boxed(r)), out_shardings=state_shardings)
    if fused:
        init_fn = _fused_init_fn(model, init_boxed, tx, state_shardings, abstract_state.params,
                                 config, tokenizer, devices)

    loss_options = LossOptions(
        config.train.label_smoothing, config.train.z_loss, config.train.get("adversarial_epsilon", 0.0)
    )
    if config.train.batch_size % config.train.accum_steps:
        raise LmfuseError(
            f"train.batch_size={config.train.batch_size} is not divisible by "
            f"train.accum_steps={config.train.accum_steps}"
        )
    batch_sharding = sharding.batch_sharding(mesh)
    replicated = sharding.replicated(mesh)
    train_step = jax.jit(
        make_train_step(model.apply, tx, loss_options, config.train.accum_steps, objective),
        in_shardings=(state_shardings, batch_sharding, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
    eval_step = jax.jit(
        make_eval_step(model.apply, objective),
        in_shardings=(state_shardings.params, batch_sharding),
        out_shardings=replicated,
    )
    return Trainer(config, tokenizer, model, mesh, state_shardings, abstract_state, init_fn,
                   train_step, eval_step, schedule, objective)


# ---------------------------------------------------------------------------------------------
# Trained fusion (lmfuse.models.fusion): the bases come from their workdirs


def fusion_method(config: ml_collections.ConfigDict) -> str:
    """config.fusion.method, or '' (no fusion; also for configs from before the group)."""
    fusion = config.get("fusion")
    return fusion.get("method", "") if fusion is not None else ""


def _resolved(fusion: ml_collections.ConfigDict) -> bool:
    """Whether fusion.lm_model is filled in: a fused workdir's stored config rebuilds from it."""
    return bool(fusion.get("lm_model"))


def _base_workdirs(fusion: ml_collections.ConfigDict) -> list[tuple[str, str]]:
    """(base name, workdir) of every base the method starts from."""
    from lmfuse.models.fusion import PRETRAINED_S2S

    bases = [("lm", fusion.lm_workdir)]
    if fusion.method in PRETRAINED_S2S:
        bases.append(("s2s", fusion.s2s_workdir))
    return bases


def check_fusion_config(config: ml_collections.ConfigDict) -> None:
    """Fusion settings that cannot work fail here, before any data or model is loaded."""
    from lmfuse.models.fusion import PRETRAINED_S2S

    fusion = config.fusion
    check_fusion(fusion, config.model.name, config.model.get("copy_source", False))
    if _resolved(fusion):
        return
    if fusion.method not in PRETRAINED_S2S and fusion.s2s_workdir:
        raise LmfuseError(
            f"fusion.s2s_workdir is for {' and '.join(PRETRAINED_S2S)} fusion; "
            f"{fusion.method} trains the encoder-decoder from scratch, so leave it empty"
        )
    for base, workdir in _base_workdirs(fusion):
        if not workdir:
            what = "a trained LM" if base == "lm" else "the trained encoder-decoder it starts from"
            raise LmfuseError(f"fusion.method={fusion.method!r} needs fusion.{base}_workdir, {what}")
        stored = _base_config(workdir, base, None)
        if base == "s2s" and stored.model.get("copy_source", False):
            raise LmfuseError(
                f"fusion.s2s_workdir {workdir!r} holds a model.copy_source=True model, whose copy "
                "output fusion would drop; fuse an encoder-decoder trained without it"
            )


def _base_config(workdir: str, base: str, tokenizer: Tokenizer | None) -> ml_collections.ConfigDict:
    """The stored config of a base's workdir, checked (its tokenizer against `tokenizer`)."""
    role = f"fusion.{base}_workdir {workdir!r}"
    try:
        stored = ml_collections.ConfigDict(checkpoint.read_json_item(workdir, "config"))
        ref = checkpoint.read_json_item(workdir, "tokenizer")
    except LmfuseError:
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


def load_fusion_bases(
    config: ml_collections.ConfigDict, tokenizer: Tokenizer, abstract_params, devices=None
) -> dict:
    """{'lm': params (, 's2s': params)} restored from the base workdirs onto this config's
    mesh, each checked against the fused model's subtree (`abstract_params`)."""
    import orbax.checkpoint as ocp

    bases = {}
    for base, workdir in _base_workdirs(config.fusion):
        stored = _base_config(workdir, base, tokenizer)
        with stored.unlocked():
            stored.mesh = ml_collections.ConfigDict(config.mesh.to_dict())
        base_trainer = build_trainer(stored, tokenizer, devices)
        manager = checkpoint.make_manager(workdir, read_only=True)
        restored = manager.restore(
            manager.latest_step(),
            args=ocp.args.Composite(state=ocp.args.StandardRestore(base_trainer.abstract_state)),
        )
        manager.close()
        _check_fits(workdir, base, restored.state.params, abstract_params[base])
        bases[base] = restored.state.params
    return bases


def _check_fits(workdir: str, base: str, params, abstract) -> None:
    """One line naming the first parameter whose shape (or presence) differs."""

    def shapes(tree) -> dict[str, tuple[int, ...]]:
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {base + jax.tree_util.keystr(p): tuple(x.shape) for p, x in leaves}

    have, want = shapes(params), shapes(abstract)
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


def _fused_init_fn(model, init_boxed, tx, state_shardings, abstract_params, config, tokenizer,
                   devices) -> FusedInit:
    from lmfuse.models.fusion import warm_start

    def init(rng, bases):
        state = nn.unbox(init_boxed(rng))
        params = warm_start(model, {**state.params, **bases})
        return state.replace(params=params, opt_state=tx.init(params))

    return FusedInit(
        jax.jit(init, out_shardings=state_shardings),
        lambda: load_fusion_bases(config, tokenizer, abstract_params, devices),
    )


def tokenizer_ref(tokenizer: Tokenizer) -> dict:
    return {"path": str(tokenizer.path), "sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size}


# ---------------------------------------------------------------------------------------------
# Evaluation


def text_units(config: ml_collections.ConfigDict, split: str) -> dict[str, int]:
    """Words and characters of a split (each document also ends with EOS, counted as one)."""
    words = chars = docs = 0
    for example in corpora.load_examples(config, split).dataset:
        if example is None:
            continue
        text = example.get("text", example.get("target", ""))
        words += len(text.split()) + 1
        chars += len(text) + 1
        docs += 1
    return {"words": words, "chars": chars, "docs": docs}


def evaluate(trainer: Trainer, params, split: str = "validation", max_batches: int = 0) -> dict:
    """Perplexity per token, per word and per character over the whole split, and next-token
    (masked-token for an MLM) accuracy."""
    config = trainer.config
    options = PipelineOptions.from_config(config, split)
    dataset = make_dataset(corpora.load_examples(config, split).dataset, trainer.tokenizer, options)
    per_process = options.batch_size // jax.process_count()
    nll_sum, tokens, correct = 0.0, 0.0, 0.0
    with sharding.activate(trainer.mesh):
        for index, batch in enumerate(dataset):
            if max_batches and index >= max_batches:
                break
            batch = _pad_rows(batch, per_process)  # the last batch keeps the compiled shape
            sums = trainer.eval_step(params, sharding.global_batch(batch, trainer.mesh))
            nll_sum += float(sums["nll_sum"])
            tokens += float(sums["tokens"])
            correct += float(sums["correct"])
    result = {"nll": nll_sum / max(tokens, 1.0), "tokens": tokens,
              "accuracy": correct / max(tokens, 1.0),
              "perplexity": math.exp(min(nll_sum / max(tokens, 1.0), 50.0))}
    every_token_scored = trainer.objective.name == "lm" or config.data.view == "translate"
    if not max_batches and every_token_scored:  # per word / char: the whole text is scored
        units = text_units(config, split)
        for unit in ("words", "chars"):
            result[f"perplexity_per_{unit[:-1]}"] = math.exp(min(nll_sum / units[unit], 50.0))
        result.update(units)
    return result


def _pad_rows(batch: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    missing = rows - batch["inputs"].shape[0]
    if missing <= 0:
        return batch
    return {k: np.pad(v, [(0, missing)] + [(0, 0)] * (v.ndim - 1)) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------
# Training


class _StopFlag:
    """Set by SIGTERM; checked once per step, so the handler itself does no work."""

    def __init__(self):
        self.raised = False

    def __call__(self, signum, frame):
        self.raised = True


def train(config: ml_collections.ConfigDict, workdir: str | Path, progress: bool = True) -> dict:
    """Trains to `config.train.steps`, resuming from the workdir's latest checkpoint."""
    if fusion_method(config):
        check_fusion_config(config)  # before any data is prepared
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer = corpora.prepare(config)
    trainer = build_trainer(config, tokenizer)
    config = trainer.config  # a fused config gains its LM's model config, saved with the state
    train_cfg = config.train
    is_main = jax.process_index() == 0

    options = PipelineOptions.from_config(config, "train")
    iterator = iter(make_dataset(corpora.load_examples(config, "train").dataset, tokenizer, options))
    manager = checkpoint.make_manager(workdir, train_cfg.keep_checkpoints, train_cfg.checkpoint_every)
    if manager.latest_step() is not None:
        state, start = checkpoint.restore(manager, trainer.abstract_state, iterator)
        if is_main:
            print(f"resuming {workdir} from step {start}")
    else:
        state, start = trainer.init_fn(jax.random.key(config.seed)), 0

    stop = _StopFlag()
    previous_handler = signal.signal(signal.SIGTERM, stop)
    log = MetricsLog(workdir, enabled=is_main)
    dropout_key = jax.random.key(config.seed + 1)
    peak = peak_flops_per_device(train_cfg.peak_tflops)
    model_cfg = config.model
    flops_token = flops_per_token(
        trainer.num_params,
        model_cfg.num_layers if model_cfg.name in TRANSFORMER_NAMES else 0,
        model_cfg.emb_dim,
        config.data.seq_len,
    )
    bar = tqdm(total=train_cfg.steps, initial=start, disable=not (progress and is_main),
               desc="train", unit="step", dynamic_ncols=True)
    pending: list[tuple[int, dict]] = []
    last_time = time.perf_counter()
    compile_start = time.perf_counter()
    compile_seconds = None
    summary: dict = {"start_step": start}
    step = start

    def flush_metrics() -> dict | None:
        """One host sync: fetch the buffered step metrics, check them, log their mean."""
        nonlocal last_time
        if not pending:
            return None
        fetched = jax.device_get([m for _, m in pending])
        for (at_step, _), metrics in zip(pending, fetched, strict=True):
            if not np.isfinite(metrics["loss"]):
                raise LmfuseError(
                    f"loss became {metrics['loss']} at step {at_step + 1}; training stopped and the "
                    f"last good checkpoint (step {manager.latest_step()}) is kept. Lower "
                    "optimizer.learning_rate or set optimizer.clip_norm"
                )
        now = time.perf_counter()
        tokens = sum(float(m["tokens"]) for m in fetched)
        record = {
            "loss": float(np.mean([m["loss"] for m in fetched])),
            "grad_norm": float(np.mean([m["grad_norm"] for m in fetched])),
            "lr": float(trainer.schedule(pending[-1][0])),
            "tokens_per_sec": tokens / max(now - last_time, 1e-9),
        }
        record["perplexity"] = math.exp(min(record["loss"], 50.0))
        record["mfu"] = (
            record["tokens_per_sec"] * flops_token / (peak * jax.device_count()) if peak else None
        )
        last_time = now
        log.write(pending[-1][0] + 1, record)
        pending.clear()
        bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_sec']:.0f}")
        return record

    try:
        with sharding.activate(trainer.mesh):
            while step < train_cfg.steps:
                if stop.raised:
                    break
                batch = sharding.global_batch(next(iterator), trainer.mesh)
                state, metrics = trainer.train_step(state, batch, dropout_key)
                pending.append((step, metrics))
                step += 1
                bar.update(1)
                if compile_seconds is None:
                    jax.block_until_ready(metrics)
                    compile_seconds = time.perf_counter() - compile_start
                    last_time = time.perf_counter()
                at_log = step % train_cfg.log_every == 0
                at_eval = train_cfg.eval_every and step % train_cfg.eval_every == 0
                at_ckpt = step % train_cfg.checkpoint_every == 0
                if at_log or at_eval or at_ckpt or step == train_cfg.steps:
                    summary["train"] = flush_metrics() or summary.get("train")
                if at_eval:
                    result = evaluate(trainer, state.params, "validation", train_cfg.eval_batches)
                    log.write(step, result, prefix="validation")
                    summary["validation"] = result
                if at_ckpt:
                    checkpoint.save(manager, step, state, iterator, config, tokenizer_ref(tokenizer))
            summary["train"] = flush_metrics() or summary.get("train")
            # A final (or SIGTERM) checkpoint, off the every-K grid if need be.
            if manager.latest_step() != step:
                checkpoint.save(manager, step, state, iterator, config, tokenizer_ref(tokenizer),
                                force=True)
            manager.wait_until_finished()
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        bar.close()
        log.close()
        manager.close()

    summary.update(step=step, compile_seconds=compile_seconds, num_params=trainer.num_params,
                   stopped_by_sigterm=stop.raised)
    if is_main:
        _print_summary(summary, workdir)
    return summary


def _print_summary(summary: dict, workdir: Path) -> None:
    if summary["stopped_by_sigterm"]:
        print(f"SIGTERM: saved a checkpoint at step {summary['step']} in {workdir}; "
              "run the same command to resume")
        return
    train = summary.get("train") or {}
    line = f"done: step {summary['step']}, {summary['num_params']:,} params"
    if train:
        line += f", train loss {train['loss']:.4f}, {train['tokens_per_sec']:.0f} tokens/s"
    if summary.get("validation"):
        line += f", validation ppl {summary['validation']['perplexity']:.2f}"
    if summary.get("compile_seconds") is not None:
        line += f", first step (compile) {summary['compile_seconds']:.1f}s"
    print(line)
