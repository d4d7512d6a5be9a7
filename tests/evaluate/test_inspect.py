"""Cross-attention maps of the encoder-decoders (`lmfuse.evaluate.inspect.cross_attention`): a
distribution over the real source positions for every real target token, the same whether the
Transformer's layers are scanned or not, blind to extra padding, and for the RNN exactly the
weights its decoder uses."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from lmfuse.data.tokenizer import EOS_ID, PAD_ID
from lmfuse.errors import LmfuseError
from lmfuse.evaluate.inspect import cross_attention
from lmfuse.models import build_model, model_defaults, stack_layers
from lmfuse.models.layers import shift_right

# The reference computations are tiny: compile them fast (LLVM level 0 changes speed only).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

VOCAB = 29
SOURCE_LENGTHS = (7, 4, 2)  # EOS included; the rest of each row is PAD
TARGET_LENGTHS = (6, 3, 5)


def padded_rows(lengths, width, seed):
    rng = np.random.RandomState(seed)
    ids = np.full((len(lengths), width), PAD_ID, np.int32)
    for row, n in enumerate(lengths):
        ids[row, : n - 1] = rng.randint(5, VOCAB, n - 1)
        ids[row, n - 1] = EOS_ID
    return ids


SOURCE = padded_rows(SOURCE_LENGTHS, 7, seed=0)
TARGET = padded_rows(TARGET_LENGTHS, 6, seed=1)


def build(name, **extra):
    cfg = model_defaults().to_dict()
    cfg.update(name=name, emb_dim=16, hidden_dim=16, num_layers=2, num_encoder_layers=1,
               num_heads=4, mlp_dim=32, max_len=16, dropout=0.0, **extra)
    return build_model(cfg, VOCAB)


def random_params(model, seed=0):
    """Random weights (no init compile), large enough that attention is far from uniform."""
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(SOURCE), jnp.asarray(TARGET))
    rng = np.random.RandomState(seed)
    return jax.tree.map(lambda x: jnp.asarray(0.5 * rng.randn(*x.shape), jnp.float32),
                        nn.meta.unbox(boxed["params"]))


def assert_distributions_over_real_source(weights, source=SOURCE, target=TARGET):
    real_source = source != PAD_ID  # [B, S]
    real_target = target != PAD_ID  # [B, T]
    sums = weights.sum(-1)  # [B, L, N, T]
    np.testing.assert_allclose(sums[np.broadcast_to(real_target[:, None, None], sums.shape)], 1.0,
                               rtol=1e-5)
    assert (weights[np.broadcast_to(~real_target[:, None, None, :, None], weights.shape)] == 0).all()
    assert (weights[np.broadcast_to(~real_source[:, None, None, None, :], weights.shape)] == 0).all()
    assert (weights >= 0).all()


@pytest.fixture(scope="module")
def transformer():
    model = build("s2s_transformer")
    params = random_params(model)
    return model, params, cross_attention(model, params, SOURCE, TARGET)


def test_transformer_weights_are_distributions_over_the_real_source_per_layer_and_head(transformer):
    _, _, weights = transformer
    assert weights.shape == (3, 2, 4, 6, 7) and weights.dtype == np.float32
    assert_distributions_over_real_source(weights)
    # Random weights attend far from uniformly, and the heads differ.
    assert weights[0].max() > 2 / SOURCE_LENGTHS[0]
    assert not np.allclose(weights[:, :, 0], weights[:, :, 1])


def test_transformer_scanned_layers_give_the_same_maps_in_layer_order(transformer):
    model, params, weights = transformer
    scanned = build("s2s_transformer", scan_layers=True)
    stacked = {**params, "encoder": stack_layers(params["encoder"]),
               "decoder": stack_layers(params["decoder"])}
    np.testing.assert_allclose(cross_attention(scanned, stacked, SOURCE, TARGET), weights,
                               rtol=1e-5, atol=1e-6)


def test_extra_source_padding_changes_no_weight(transformer):
    model, params, weights = transformer
    wider = np.concatenate([SOURCE, np.full((3, 4), PAD_ID, np.int32)], axis=1)
    again = cross_attention(model, params, wider, TARGET)
    np.testing.assert_allclose(again[..., :7], weights, rtol=1e-5, atol=1e-6)
    assert (again[..., 7:] == 0).all()


@pytest.mark.parametrize("attention", ["bahdanau", "luong"])
def test_rnn_maps_are_the_weights_its_decoder_attends_with(attention):
    model = build("s2s_rnn", attention=attention)
    params = random_params(model)
    weights = cross_attention(model, params, SOURCE, TARGET)
    assert weights.shape == (3, 1, 1, 6, 7)
    assert_distributions_over_real_source(weights)

    @jit
    def own_weights(params, source, target):
        source_segments = (source != PAD_ID).astype(jnp.int32)
        target_segments = (target != PAD_ID).astype(jnp.int32)
        encoded = model.apply({"params": params}, source, source_segments, method="encode")
        positions = jnp.broadcast_to(jnp.arange(target.shape[1]), target.shape)
        return model.apply({"params": params}, encoded, source_segments,
                           shift_right(target, positions), target_segments,
                           method="attention_weights")

    own = own_weights(params, jnp.asarray(SOURCE), jnp.asarray(TARGET))
    real = TARGET != PAD_ID
    np.testing.assert_allclose(weights[:, 0, 0][real], np.asarray(own)[real], rtol=1e-5, atol=1e-7)


def test_a_language_model_has_no_cross_attention():
    model = build("transformer")
    with pytest.raises(LmfuseError, match="not an encoder-decoder"):
        cross_attention(model, {}, SOURCE, TARGET)
