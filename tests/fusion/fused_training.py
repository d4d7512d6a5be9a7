"""The check that the fusion training tests run for each backbone and method (one file per
backbone, so each stays quick): a fused model through the training stack (`build_trainer`).

The bases come from their workdirs, the loss falls, frozen bases stay bit-identical and hold
no optimizer state, and the trained model decodes (greedy and beam search) consistently with
its own teacher-forced distribution. Each case compiles an init, a train step and one decoding
program; the frozen-parameter machinery alone is tested per method without compiling a model
(test_fusion_invariants.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tiny_fusion import (
    FAST,
    LM_KIND,
    T,
    fused_config,
    jit,
    lm_config,
    save_workdir,
    tokenizer,
    train_batch,
)

from lmfuse.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from lmfuse.decode import beam_search, greedy, seq2seq_decode_step
from lmfuse.decode.fusion import log_probs
from lmfuse.models.fusion import PRETRAINED_S2S
from lmfuse.train import sharding
from lmfuse.train.trainer import build_trainer
from lmfuse.train.workdir import params_digest

# Linear fusion's weights: context gates on the RNN, per-vocabulary vectors on the Transformer.
WEIGHTS_KIND = {"s2s_rnn": "context", "s2s_transformer": "vector"}


@dataclasses.dataclass
class Bases:
    """Base workdirs of random tiny models, and the params stored in them."""

    lm_dir: Path
    lm_params: Any
    s2s_dir: Path
    s2s_params: Any


def save_bases(root: Path, backbone: str) -> Bases:
    lm_dir, s2s_dir = root / "lm", root / "s2s"
    lm_params = save_workdir(lm_dir, lm_config(LM_KIND[backbone]), seed=1)
    s2s_config = fused_config("deep", backbone, **{"fusion.method": ""})  # fusion off
    return Bases(lm_dir, lm_params, s2s_dir, save_workdir(s2s_dir, s2s_config, seed=2))


def opt_state_owners(opt_state) -> set[str]:
    """The top-level param subtrees ('s2s', 'lm', 'fusion') that own optimizer-state arrays."""
    names = set()
    for path, _ in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
        names.update(k.key for k in path if getattr(k, "key", None) in ("s2s", "lm", "fusion"))
    return names


def until_eos(row: np.ndarray) -> int:
    """Length of a hypothesis counting its EOS (the whole row if it has none)."""
    ends = np.flatnonzero(row == EOS_ID)
    return int(ends[0]) + 1 if len(ends) else len(row)


def assert_fused_training_works(bases: Bases, backbone: str, method: str, train_bases: bool):
    extra = {"fusion.lm_workdir": bases.lm_dir, "fusion.weights_kind": WEIGHTS_KIND[backbone],
             "fusion.train_bases": train_bases}
    if method in PRETRAINED_S2S:
        extra["fusion.s2s_workdir"] = bases.s2s_dir
    trainer = build_trainer(fused_config(method, backbone, **extra), tokenizer())
    frozen = trainer.model.cfg.frozen_bases()
    init, key = trainer.init_fn, jax.random.key(0)
    loaded = init.load_bases()
    state = init.jitted.lower(key, loaded).compile(FAST)(key, loaded)
    # The bases start as stored in their workdirs.
    assert params_digest(state.params["lm"]) == params_digest(bases.lm_params)
    if method in PRETRAINED_S2S:
        assert params_digest(state.params["s2s"]) == params_digest(bases.s2s_params)
    before = {name: params_digest(state.params[name]) for name in frozen}

    batch = train_batch()
    with sharding.activate(trainer.mesh, trainer.rules):
        global_batch = sharding.global_batch(batch, trainer.mesh, trainer.rules)
        step = trainer.train_step.lower(state, global_batch, key).compile(FAST)
        losses = []
        for _ in range(4):
            state, metrics = step(state, global_batch, key)
            losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0], losses
    for name in frozen:
        assert params_digest(state.params[name]) == before[name], name
    assert opt_state_owners(state.opt_state) == set(state.params) - set(frozen)

    # Decoding the trained state: greedy picks the teacher-forced argmax at every step, and
    # beam search's log-probs are the teacher-forced ones of the tokens it returns.
    source = jnp.asarray(batch["inputs"])
    request = {"inputs": source, "prompt": jnp.full((len(source), 1), BOS_ID, jnp.int32)}
    decoder = seq2seq_decode_step(trainer.model)

    @jit
    def decode_and_score(params):
        best = greedy(decoder, params, request, max_new_tokens=T).tokens[:, 0]
        beams = beam_search(decoder, params, request, beam_size=2, max_new_tokens=T, alpha=0.0)
        tokens = jnp.concatenate([best, beams.tokens[:, 0]])
        inputs = jnp.concatenate([jnp.full((len(tokens), 1), BOS_ID), tokens[:, :-1]], axis=1)
        sources = jnp.concatenate([source, source])
        logits = trainer.model.apply({"params": params}, sources, inputs,
                                     inputs_segment_ids=(sources != PAD_ID).astype(jnp.int32))
        return best, beams.tokens[:, 0], beams.logprobs[:, 0], log_probs(logits)

    greedy_tokens, beam_tokens, beam_logprobs, scores = (
        np.asarray(x) for x in decode_and_score(state.params)
    )
    greedy_scores, beam_scores = np.split(scores, 2)
    for row in range(len(source)):
        n = until_eos(greedy_tokens[row])
        np.testing.assert_array_equal(greedy_tokens[row, :n], greedy_scores[row, :n].argmax(-1))
        assert (greedy_tokens[row, n:] == PAD_ID).all()
        n = until_eos(beam_tokens[row])
        picked = np.take_along_axis(beam_scores[row, :n], beam_tokens[row, :n, None], -1)
        np.testing.assert_allclose(picked.sum(), beam_logprobs[row], rtol=1e-4, atol=1e-4)
