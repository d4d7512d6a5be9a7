"""Trained fusion of an encoder-decoder with a copy output (pointer-generator): the copy
mixture wraps the fused distribution, p = p_gen softmax(fused) + (1 - p_gen) copy, with the
s2s's own copy head. Cached decoding equals teacher forcing on both backbones; at their
start, linear and deep fusion are exactly the copying s2s (copy included); a fused config
whose copy setting differs from its pretrained s2s base is a one-line error."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_fusion import (
    assert_cached_decoding_matches_teacher_forcing,
    example_inputs,
    fused_config,
    fused_model,
    jit,
    lm_config,
    random_params,
    save_workdir,
    tokenizer,
)

from lmfuse.data.tokenizer import PAD_ID
from lmfuse.errors import LmfuseError
from lmfuse.models.fusion import warm_start
from lmfuse.train.trainer import build_trainer


@pytest.mark.parametrize("backbone, method", [
    ("s2s_transformer", "deep"), ("s2s_transformer", "simple_postnorm"),
    ("s2s_transformer", "linear"), ("s2s_rnn", "cold"), ("s2s_rnn", "simple_prenorm"),
])
def test_cached_decoding_equals_teacher_forcing_with_copy(backbone, method):
    assert_cached_decoding_matches_teacher_forcing(backbone, method, copy_source=True)


@pytest.mark.parametrize("backbone", ["s2s_transformer", "s2s_rnn"])
@pytest.mark.parametrize("method", ["linear", "deep"])
def test_fusion_at_its_start_is_the_copying_s2s(backbone, method):
    """Linear fusion at its init (W_g = 1, W_l = 0) and deep fusion warm-started with a closed
    LM contribution (W_l = 0) give the copying s2s's own log-probs, copy mixture included."""
    model = fused_model(method, backbone, copy_source=True)
    params = random_params(model, seed=3)
    if method == "linear":
        params["fusion"] = {"s2s_weight": np.ones(()), "lm_weight": np.zeros(())}
    else:
        params = warm_start(model, params)
        params["fusion"]["out_lm"] = np.zeros_like(params["fusion"]["out_lm"])
    source, decoder_inputs, _, segments = example_inputs()
    source_segments = (source != PAD_ID).astype(np.int32)

    @jit
    def both(params):
        fused = model.apply({"params": params}, source, decoder_inputs,
                            inputs_segment_ids=source_segments, decoder_segment_ids=segments)
        alone = model.s2s.apply({"params": params["s2s"]}, source, decoder_inputs,
                                inputs_segment_ids=source_segments, decoder_segment_ids=segments)
        return fused, alone

    fused, alone = (np.asarray(x) for x in both(params))
    real = np.asarray(segments) > 0
    # Log-probs of the mixture: normalised, and equal to the s2s's where targets are real.
    np.testing.assert_allclose(np.exp(fused[real]).sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(fused[real], alone[real], rtol=1e-5, atol=1e-5)


def test_a_copy_setting_unlike_the_s2s_bases_is_one_line(tmp_path):
    save_workdir(tmp_path / "lm", lm_config("transformer"))
    save_workdir(tmp_path / "s2s", fused_config("deep", **{"fusion.method": "",
                                                           "model.copy_source": True}))
    bases = {"fusion.lm_workdir": tmp_path / "lm", "fusion.s2s_workdir": tmp_path / "s2s"}
    with pytest.raises(LmfuseError) as error:
        build_trainer(fused_config("deep", **bases), tokenizer())
    message = str(error.value)
    assert "\n" not in message and "set model.copy_source=True" in message
    # With the matching setting the fused trainer builds (its bases load later).
    trainer = build_trainer(fused_config("deep", **bases, **{"model.copy_source": True}),
                            tokenizer())
    assert trainer.config.model.copy_source
