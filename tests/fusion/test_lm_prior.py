"""The LM prior (Baziotis et al. 2020): the loss is CE + λ τ² KL(softmax(S/τ) || softmax(l/τ))
per counted token, λ = 0 trains exactly as the plain encoder-decoder does, and the model
decodes with the translation model alone."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_fusion import (
    example_inputs,
    fused_config,
    fused_model,
    lm_config,
    random_params,
    save_workdir,
    tokenizer,
    train_batch,
)

from lmfuse.decode import greedy, seq2seq_decode_step
from lmfuse.models.layers import shift_right
from lmfuse.tokens import BOS_ID
from lmfuse.train import sharding
from lmfuse.train.objectives import Objective
from lmfuse.train.step import LossOptions, _loss_sums
from lmfuse.train.trainer import build_trainer
from lmfuse.train.workdir import params_digest

SEQ2SEQ = Objective("seq2seq")


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("backbone", ["s2s_transformer", "s2s_rnn"])
@pytest.mark.parametrize("weight, temperature", [(0.5, 2.0), (1.5, 1.0)])
def test_the_loss_is_cross_entropy_plus_the_tempered_kl(backbone, weight, temperature):
    model = fused_model("lm_prior", backbone, prior_weight=weight, prior_temperature=temperature)
    params = random_params(model, seed=3)
    batch = {k: jnp.asarray(v) for k, v in train_batch(rows=3, seed=4).items()}
    options = LossOptions(model_losses=True)
    got, (nll_sum, count) = _loss_sums(model.apply, params, batch, None, options, True, SEQ2SEQ)

    # The reference: the TM's and the LM's logits on the same decoder inputs, in float64.
    tm = np.asarray(SEQ2SEQ.forward(model.apply, params, batch, None, True), np.float64)
    hidden = model.apply({"params": params}, batch["inputs"],
                         segment_ids=batch["inputs_segment_ids"], method="encode")
    states = model.apply({"params": params}, hidden, batch["inputs_segment_ids"],
                         shift_right(batch["targets"], batch["targets_positions"]),
                         batch["targets_segment_ids"],
                         batch["targets_positions"], method="decode_hidden")
    lm = np.asarray(model.lm.apply({"params": params["lm"]}, states["lm"],
                                   method="logits_from_hidden"), np.float64)
    weights = np.asarray(SEQ2SEQ.weights(batch), np.float64)
    targets = np.asarray(batch["targets"])
    ce = -np.take_along_axis(log_softmax(tm), targets[..., None], -1)[..., 0]
    log_p, log_q = log_softmax(tm / temperature), log_softmax(lm / temperature)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
    want = ((ce + weight * temperature**2 * kl) * weights).sum()
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    np.testing.assert_allclose(float(nll_sum), (ce * weights).sum(), rtol=1e-5)  # NLL: CE only
    assert float(count) == weights.sum() and kl.min() > 0


def test_prior_weight_zero_trains_exactly_as_the_plain_encoder_decoder(tmp_path):
    """Same initial TM params, same batches: after three steps the fused model's s2s subtree
    equals the plain model's params bit for bit (clipping off: its global norm would also sum
    the frozen LM's zero gradients)."""
    backbone = "s2s_transformer"
    save_workdir(tmp_path / "lm", lm_config("transformer"), seed=1)
    no_clip = {"optimizer.clip_norm": 0.0}
    plain = build_trainer(fused_config("deep", backbone, **{"fusion.method": "", **no_clip}),
                          tokenizer())
    fused = build_trainer(fused_config("lm_prior", backbone, **{
        "fusion.lm_workdir": tmp_path / "lm", "fusion.prior_weight": 0.0, **no_clip}), tokenizer())
    start = plain.init_fn(jax.random.key(0))
    fused_start = fused.init_fn(jax.random.key(0))
    # Adam's fresh state is zeros whatever the params: only the params need replacing.
    # (Copies: each train step donates its state.)
    fused_state = fused_start.replace(
        params={**fused_start.params, "s2s": jax.tree.map(jnp.copy, start.params)})
    start_digest = params_digest(start.params)
    batch = train_batch(rows=4, seed=5)
    for trainer in (plain, fused):
        state = start if trainer is plain else fused_state
        with sharding.activate(trainer.mesh, trainer.rules):
            global_batch = sharding.global_batch(batch, trainer.mesh, trainer.rules)
            for _ in range(3):
                state, _ = trainer.train_step(state, global_batch, jax.random.key(1))
        if trainer is plain:
            plain_params = state.params
        else:
            fused_params = state.params
    assert params_digest(plain_params) != start_digest  # it trained
    assert params_digest(fused_params["s2s"]) == params_digest(plain_params)


@pytest.mark.parametrize("backbone", ["s2s_transformer", "s2s_rnn"])
def test_it_decodes_with_the_translation_model_alone(backbone):
    model = fused_model("lm_prior", backbone)
    params = random_params(model, seed=6)
    source, _, _, _ = example_inputs(rows=3, seed=7)
    batch = {"inputs": source, "prompt": jnp.full((3, 1), BOS_ID, jnp.int32)}
    fused = greedy(seq2seq_decode_step(model), params, batch, max_new_tokens=6)
    alone = greedy(seq2seq_decode_step(model.s2s), params["s2s"], batch, max_new_tokens=6)
    np.testing.assert_array_equal(np.asarray(fused.tokens), np.asarray(alone.tokens))
    np.testing.assert_array_equal(np.asarray(fused.logprobs), np.asarray(alone.logprobs))
