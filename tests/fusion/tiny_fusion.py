"""Tiny fused models for the fusion tests: random bases, workdirs written in-process.

A base workdir here is a real checkpoint (state, data iterator, config, tokenizer reference)
of a randomly initialised tiny model, saved with `lmfuse.train.checkpoint` as `lmfuse train`
saves one: fusion reads nothing else from it. The tokenizer is a stand-in with the vocabulary
size and the SHA-256 that fusion compares.
"""

from __future__ import annotations

import functools
import types
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from lmfuse.config import load_config
from lmfuse.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from lmfuse.models import build_model, model_defaults
from lmfuse.train import checkpoint
from lmfuse.train.trainer import build_trainer, tokenizer_ref

# Tiny models: compile time dominates, and LLVM's optimisation level only changes speed (the
# XLA program is the same), so the tests compile at level 0.
FAST = {"xla_backend_optimization_level": 0}
jit = functools.partial(jax.jit, compiler_options=FAST)

VOCAB = 41
SHA = "5" * 64
BACKBONES = ("s2s_transformer", "s2s_rnn")
METHODS = ("deep", "cold", "simple_postnorm", "simple_prenorm", "linear")
S, T = 7, 6  # source and target lengths

# Widths differ (s2s 16, LM 12, cold 8), so a mixed-up axis cannot go unnoticed.
S2S = {"emb_dim": 16, "hidden_dim": 16, "num_layers": 1, "num_encoder_layers": 1,
       "num_heads": 2, "mlp_dim": 32, "dropout": 0.0, "max_len": 16}
LM = {"emb_dim": 12, "hidden_dim": 12, "num_layers": 1, "num_heads": 2, "mlp_dim": 24,
      "dropout": 0.0, "max_len": 16}
LM_KIND = {"s2s_transformer": "transformer", "s2s_rnn": "lstm"}


def tokenizer(sha: str = SHA) -> types.SimpleNamespace:
    return types.SimpleNamespace(vocab_size=VOCAB, sha256=sha, path=Path("tiny.model"))


def overrides(values: dict) -> list[str]:
    return [f"--config.{k}={v}" for k, v in values.items()]


def lm_config(kind: str = "transformer") -> ml_collections.ConfigDict:
    values = {"model.name": kind, **{f"model.{k}": v for k, v in LM.items()},
              "data.seq_len": 16, "data.max_length": 16}
    return load_config("configs/lm_transformer.py:tiny", overrides(values))


def fused_config(method: str, backbone: str = "s2s_transformer", **extra
                 ) -> ml_collections.ConfigDict:
    """configs/fusion.py:<method>,tiny at test size; `extra` overrides (e.g. fusion.*)."""
    values = {"model.name": backbone, **{f"model.{k}": v for k, v in S2S.items()},
              "model.attention": "luong", "data.max_length": 16, "fusion.cold_dim": 8,
              "train.batch_size": 4, "train.label_smoothing": 0.0,
              "optimizer.schedule": "constant", "optimizer.learning_rate": 0.01, **extra}
    return load_config(f"configs/fusion.py:{method},tiny", overrides(values))


def save_workdir(workdir: Path, config: ml_collections.ConfigDict, tok=None, seed: int = 0,
                 step: int = 1):
    """Writes a checkpoint (at `step`) of a model with random params (and a zero optimizer
    state, which fusion never reads); returns its params."""
    tok = tok or tokenizer()
    trainer = build_trainer(config, tok)
    state = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), trainer.abstract_state)
    state = state.replace(params=_random_like(state.params, seed, 0.3))
    manager = checkpoint.make_manager(workdir)
    iterator = iter(grain.MapDataset.range(2).to_iter_dataset())
    checkpoint.save(manager, step, state, iterator, config, tokenizer_ref(tok), force=True)
    manager.wait_until_finished()
    manager.close()
    return state.params


def model_cfg(name: str, **extra) -> dict:
    c = model_defaults().to_dict()
    c.update(S2S if name.startswith("s2s") else LM)
    c.update(name=name, **extra)
    return c


def fused_model(method: str, backbone: str, lm_kind: str | None = None,
                copy_source: bool = False, **fusion):
    """An unbound FusedSeq2Seq built through the registry, as a trainer builds it."""
    lm = model_cfg(lm_kind or LM_KIND[backbone], tie_embeddings=False)
    s2s = model_cfg(backbone, attention="bahdanau", copy_source=copy_source)
    return build_model(s2s, VOCAB, {"method": method, "lm_model": lm, "cold_dim": 8, **fusion})


def random_params(model, seed: int, scale: float = 0.5):
    """Random values in the model's param tree (shapes by eval_shape: no init to compile)."""
    shapes = jax.eval_shape(
        lambda: nn.meta.unbox(model.init(jax.random.key(0), *example_inputs()[:2])["params"])
    )
    return _random_like(shapes, seed, scale)


def _random_like(shapes, seed: int, scale: float):
    """NumPy draws (no per-shape XLA programs to compile), as float32 device arrays."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype),
                        shapes)


def example_inputs(rows: int = 3, seed: int = 0):
    """(source [rows, S] right-padded + EOS, decoder inputs [rows, T] = BOS + targets shifted,
    targets [rows, T], target segment ids [rows, T])."""
    rng = np.random.default_rng(seed)
    source = np.full((rows, S), PAD_ID, np.int32)
    targets = np.full((rows, T), PAD_ID, np.int32)
    for r in range(rows):
        n, m = S - r % 3, T - r % 2
        source[r, :n] = [*rng.integers(5, VOCAB, n - 1), EOS_ID]
        targets[r, :m] = [*rng.integers(5, VOCAB, m - 1), EOS_ID]
    decoder_inputs = np.concatenate([np.full((rows, 1), BOS_ID, np.int32), targets[:, :-1]], 1)
    segments = (targets != PAD_ID).astype(np.int32)
    return (jnp.asarray(source), jnp.asarray(decoder_inputs * segments), jnp.asarray(targets),
            jnp.asarray(segments))


def train_batch(rows: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """A translate-view batch as the pipeline yields it (padded, one pair per row)."""
    source, _, targets, segments = (np.asarray(x) for x in example_inputs(rows, seed))
    source_segments = (source != PAD_ID).astype(np.int32)
    positions = lambda seg: (np.cumsum(seg, axis=1) - 1) * seg  # noqa: E731
    return {"inputs": source, "targets": targets, "inputs_segment_ids": source_segments,
            "targets_segment_ids": segments, "inputs_positions": positions(source_segments),
            "targets_positions": positions(segments)}


PREFIX = (1, 3, 2)  # decoding tests: prompt length of each row (BOS, then teacher tokens)


def assert_cached_decoding_matches_teacher_forcing(backbone: str, method: str,
                                                   copy_source: bool = False) -> None:
    """The fused DecodeStep prefills prompts of different lengths (left-padded inside), then
    steps token by token; every position's logits equal the full-sequence forward pass's."""
    from lmfuse.decode import DecodeStep, seq2seq_decode_step

    model = fused_model(method, backbone, weights_kind="context", copy_source=copy_source)
    params = random_params(model, seed=7)
    decoder = seq2seq_decode_step(model)
    assert isinstance(decoder, DecodeStep) and not decoder.log_scores
    source, decoder_inputs, _, segments = example_inputs(len(PREFIX))
    prefix = jnp.asarray(PREFIX)
    columns = jnp.arange(max(PREFIX))[None, :]
    prompt = jnp.where(columns < prefix[:, None], decoder_inputs[:, : max(PREFIX)], PAD_ID)
    steps = T - min(PREFIX)
    # Step i feeds each row its next teacher token (past the end: anything, not compared).
    feed = jnp.take_along_axis(
        decoder_inputs, jnp.minimum(prefix[:, None] + jnp.arange(steps)[None, :], T - 1), axis=1
    )

    @jit
    def run(params):
        teacher = model.apply({"params": params}, source, decoder_inputs,
                              inputs_segment_ids=(source != PAD_ID).astype(jnp.int32),
                              decoder_segment_ids=segments)
        first, state = decoder.init(params, {"inputs": source, "prompt": prompt},
                                    max(PREFIX) + steps)

        def step(state, tokens):
            logits, state = decoder.step(params, state, tokens)
            return state, logits

        _, rest = jax.lax.scan(step, state, feed.T)
        return teacher, jnp.concatenate([first[:, None], jnp.swapaxes(rest, 0, 1)], axis=1)

    teacher, cached = (np.asarray(x) for x in run(params))
    compared = 0
    for row, p in enumerate(PREFIX):
        positions = np.arange(p - 1, T)  # cached[row, j] predicts the token after p - 1 + j
        real = np.asarray(segments[row, positions]) > 0
        want = teacher[row, positions][real]
        np.testing.assert_allclose(cached[row, : len(positions)][real], want, rtol=1e-5,
                                   atol=2e-5 * np.abs(want).max())
        compared += real.sum()
    assert compared >= 10
