"""Trained-fusion gates per target position (`lmfuse.evaluate.inspect.fusion_gates`): deep
fusion's scalar gate is sigmoid(v^T h_t + b) of the LM state, cold fusion's a per-feature gate;
both lie in (0, 1) at real target positions and are 0 on padding. A fused model's
cross-attention maps are its s2s base's."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from tiny_fusion import T, example_inputs, fused_model, jit, random_params

from lmfuse.errors import LmfuseError
from lmfuse.evaluate.inspect import cross_attention, fusion_gates


def assert_gates_in_unit_interval(gates, real):
    inside = gates[real]
    assert ((inside > 0) & (inside < 1)).all(), inside
    assert (gates[~real] == 0).all()
    assert inside.std() > 1e-3  # the gate depends on the position's context


def test_deep_fusion_gate_is_the_sigmoid_of_the_lm_state_per_target_position():
    model = fused_model("deep", "s2s_transformer")
    params = random_params(model, seed=3)
    source, decoder_inputs, targets, segments = example_inputs()
    gates = fusion_gates(model, params, source, targets)
    assert gates.shape == (3, T) and gates.dtype == np.float32
    real = np.asarray(segments) > 0
    assert_gates_in_unit_interval(gates, real)

    @jit
    def expected(params):
        hidden = model.apply({"params": params}, None, None, decoder_inputs, segments,
                             zero_context=True, method="decode_hidden")
        return jax.nn.sigmoid(hidden["lm"] @ params["fusion"]["gate_kernel"]
                              + params["fusion"]["gate_bias"])

    np.testing.assert_allclose(gates[real], np.asarray(expected(params))[real], rtol=1e-5)


def test_cold_fusion_gates_one_value_per_feature_and_position():
    model = fused_model("cold", "s2s_rnn")
    params = random_params(model, seed=4)
    source, _, targets, segments = example_inputs()
    gates = fusion_gates(model, params, source, targets)
    assert gates.shape == (3, T, model.cfg.cold_dim)
    real = np.broadcast_to((np.asarray(segments) > 0)[..., None], gates.shape)
    assert_gates_in_unit_interval(gates, real)


def test_a_fused_models_attention_maps_are_its_s2s_bases():
    model = fused_model("simple_prenorm", "s2s_transformer")
    params = random_params(model, seed=5)
    source, _, targets, _ = example_inputs()
    fused = cross_attention(model, params, source, targets)
    np.testing.assert_allclose(fused, cross_attention(model.s2s, params["s2s"], source, targets),
                               rtol=1e-6)
    assert fused.shape[:2] == (3, 1) and fused.shape[-2:] == (T, source.shape[1])


@pytest.mark.parametrize("method", ["simple_postnorm", "linear"])
def test_methods_without_a_gate_are_a_one_line_error(method):
    model = fused_model(method, "s2s_transformer")
    source, _, targets, _ = example_inputs()
    with pytest.raises(LmfuseError, match=f"fusion.method='{method}' has no fusion gate"):
        fusion_gates(model, {}, source, targets)


def test_a_plain_encoder_decoder_has_no_gate():
    model = fused_model("deep", "s2s_transformer").s2s
    source, _, targets, _ = example_inputs()
    with pytest.raises(LmfuseError, match="has no fusion gate"):
        fusion_gates(model, {}, source, targets)
