"""The minimal JAX programs (experiments/minimal/) compute what lmfuse computes: on lmfuse's own
params (converted), greedy tokens equal lmfuse's sampler at temperature 0, and one AdamW train
step gives lmfuse's loss and updated params, so the benchmarks compare equal work."""

from __future__ import annotations

import functools
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from minimal import minimal_lstm, minimal_transformer

from lmfuse.data.tokenizer import BOS_ID
from lmfuse.decode import lm_decode_step, sample
from lmfuse.models import build_model
from lmfuse.schema import base_config
from lmfuse.train import sharding
from lmfuse.train.trainer import build_trainer

VOCAB, LEN, ROWS = 41, 12, 4
NEW_TOKENS = 10
# eps well above rounding-level gradients: Adam divides by |g| + eps, so a tiny gradient that
# two correct programs round differently would otherwise move a parameter by up to lr.
OPTIM = dict(lr=3e-3, b1=0.9, b2=0.98, eps=1e-4, weight_decay=0.1, clip=0.5)
TRANSFORMERS = {  # lmfuse model keys per case; the minimal Config follows from them
    "learned_gelu": dict(positions="learned", activation="gelu"),
    "rope_gelu_new": dict(positions="rope", activation="gelu_new"),
}


def transformer_model_cfg(positions: str, activation: str) -> dict:
    return dict(name="transformer", emb_dim=32, num_layers=2, num_heads=4, mlp_dim=64,
                max_len=32, positions=positions, activation=activation, norm="pre",
                tie_embeddings=True, dropout=0.0)


def lstm_model_cfg() -> dict:
    return dict(name="lstm", emb_dim=16, hidden_dim=24, num_layers=2, tie_embeddings=False,
                dropout=0.0)


def minimal_cfg(model_cfg: dict) -> minimal_transformer.Config:
    return minimal_transformer.Config(
        vocab=VOCAB, emb=model_cfg["emb_dim"], layers=model_cfg["num_layers"],
        heads=model_cfg["num_heads"], mlp=model_cfg["mlp_dim"], max_len=model_cfg["max_len"],
        positions=model_cfg["positions"], activation=model_cfg["activation"])


def random_params(model: nn.Module, seed: int, embed_std: float = 0.1, std: float = 0.3) -> dict:
    """Wide random params in the model's tree, so greedy choices are far from ties; for a
    Transformer the layers outweigh the (tied) embeddings, so the tokens chosen depend on the
    context."""
    shapes = jax.eval_shape(lambda: nn.meta.unbox(
        model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return jnp.asarray(rng.normal(1.0, 0.3, leaf.shape), jnp.float32)
        sd = embed_std if "wte" in name or "wpe" in name else std
        return jnp.asarray(rng.normal(0.0, sd, leaf.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def prompts(rows: int = 3, length: int = 5) -> jax.Array:
    body = np.random.default_rng(7).integers(3, VOCAB, (rows, length - 1))
    return jnp.asarray(np.concatenate([np.full((rows, 1), BOS_ID), body], axis=1), jnp.int32)


def lmfuse_greedy(model: nn.Module, params: dict, prompt: jax.Array) -> np.ndarray:
    out = sample(lm_decode_step(model), params, {"prompt": prompt}, jax.random.key(0),
                 max_new_tokens=NEW_TOKENS, temperature=0.0, eos_id=None)
    return np.asarray(out.tokens[:, 0])


@pytest.mark.parametrize("case", sorted(TRANSFORMERS))
def test_transformer_greedy_tokens_equal_lmfuse(case):
    model_cfg = transformer_model_cfg(**TRANSFORMERS[case])
    model = build_model(model_cfg, VOCAB)
    params = random_params(model, seed=1)
    prompt = prompts()
    ours = minimal_transformer.generate(minimal_transformer.from_lmfuse(params), prompt,
                                        jax.random.key(0), minimal_cfg(model_cfg), NEW_TOKENS)
    expected = lmfuse_greedy(model, params, prompt)
    assert len(set(expected.ravel())) >= 3  # a real check, not one token repeated
    np.testing.assert_array_equal(np.asarray(ours), expected)


def test_transformer_top_k_draws_only_top_k_tokens():
    model_cfg = transformer_model_cfg("learned", "gelu")
    params = minimal_transformer.from_lmfuse(random_params(build_model(model_cfg, VOCAB), seed=2))
    cfg = minimal_cfg(model_cfg)
    prompt = prompts()
    top1 = minimal_transformer.generate(params, prompt, jax.random.key(3), cfg, NEW_TOKENS, top_k=1)
    np.testing.assert_array_equal(  # k = 1 is greedy
        top1, minimal_transformer.generate(params, prompt, jax.random.key(0), cfg, NEW_TOKENS))
    a, b = (minimal_transformer.generate(params, prompt, jax.random.key(k), cfg, NEW_TOKENS,
                                         top_k=5) for k in (4, 5))
    assert not np.array_equal(a, b)  # draws depend on the key
    assert (np.asarray(a) != minimal_transformer.PAD_ID).all()


def test_lstm_greedy_tokens_equal_lmfuse():
    model = build_model(lstm_model_cfg(), VOCAB)
    params = random_params(model, seed=1, embed_std=1.0, std=1.0)
    prompt = prompts()
    ours = minimal_lstm.greedy(minimal_lstm.from_lmfuse(params), prompt, NEW_TOKENS)
    expected = lmfuse_greedy(model, params, prompt)
    assert len(set(expected.ravel())) >= 3
    np.testing.assert_array_equal(np.asarray(ours), expected)


# ---------------------------------------------------------------------------------------------
# One train step


def lmfuse_trainer(model_cfg: dict):
    config = base_config()
    config.data.seq_len = config.data.max_length = LEN
    config.model.update(model_cfg)
    o = config.optimizer
    o.name, o.schedule, o.learning_rate = "adamw", "constant", OPTIM["lr"]
    o.b1, o.b2, o.eps, o.weight_decay, o.clip_norm = (
        OPTIM["b1"], OPTIM["b2"], OPTIM["eps"], OPTIM["weight_decay"], OPTIM["clip"])
    config.train.batch_size = ROWS
    return build_trainer(config, types.SimpleNamespace(vocab_size=VOCAB))


def lm_batch() -> dict[str, np.ndarray]:
    """One document per row (the minimal programs know no packing), every token counted."""
    tokens = np.random.default_rng(5).integers(3, VOCAB, (ROWS, LEN + 1)).astype(np.int32)
    ones = np.ones((ROWS, LEN), np.int32)
    positions = np.tile(np.arange(LEN, dtype=np.int32), (ROWS, 1))
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "inputs_segment_ids": ones,
            "targets_segment_ids": ones, "inputs_positions": positions,
            "targets_positions": positions}


def lmfuse_step(trainer, batch):
    """(params before, loss, params after) of one lmfuse train step from the config's seed."""
    state = trainer.init_fn(jax.random.key(0))
    before = jax.tree.map(np.asarray, state.params)
    with sharding.activate(trainer.mesh, trainer.rules):
        state, metrics = trainer.train_step(
            state, sharding.global_batch(batch, trainer.mesh, trainer.rules), jax.random.key(1))
    return before, float(metrics["loss"]), state.params


@pytest.mark.parametrize("program", ["transformer_rope", "transformer_learned", "lstm"])
def test_one_train_step_equals_lmfuse(program):
    if program == "lstm":
        module, model_cfg = minimal_lstm, lstm_model_cfg()
        make_step = minimal_lstm.make_train_step
    else:  # learned positions: the benchmark's model, wpe decayed as lmfuse decays it
        module = minimal_transformer
        model_cfg = transformer_model_cfg(program.split("_")[1], "gelu")
        make_step = functools.partial(minimal_transformer.make_train_step, minimal_cfg(model_cfg))
    batch = lm_batch()
    before, loss, after = lmfuse_step(lmfuse_trainer(model_cfg), batch)

    params = module.from_lmfuse(before)
    tx = module.optimizer(OPTIM["lr"], OPTIM["b1"], OPTIM["b2"], OPTIM["eps"],
                          OPTIM["weight_decay"], OPTIM["clip"])
    new, _, our_loss = make_step(tx)(params, tx.init(params), batch["inputs"], batch["targets"])

    assert float(our_loss) == pytest.approx(loss, rel=1e-6)
    assert loss == pytest.approx(np.log(VOCAB), rel=0.05)  # a fresh model: near uniform
    expected = module.from_lmfuse(after)
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), expected,
                         module.from_lmfuse(before))
    assert max(jax.tree.leaves(moved)) > OPTIM["lr"] / 2  # the step changed the params
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6), new, expected)
