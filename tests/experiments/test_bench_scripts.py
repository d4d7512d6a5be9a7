"""The speed benchmarks grade each row against the acceptance bars of the speed work: decoding
>= 3x HF `generate` at batch 1 and >= 2x at batch 32 (greedy and top-k), beam search >= 2x at
every batch size, the LSTM's train step >= 1x `torch.nn.LSTM`, and every path >= 1x the
minimal JAX program; a bar is graded only where its peer ran. The decoding benchmark can set
lmfuse model options that keep the weights (`--override model.fused_qkv=True`)."""

from __future__ import annotations

import jax
import pytest
from bench_decode import target_text as decode_target
from bench_train import target_text as train_target


@pytest.mark.parametrize(("batch", "beam", "hf", "expected"), [
    (1, 0, 2.99, "HF >= 3x: not met; minimal JAX >= 1x: met"),
    (1, 0, 3.0, "HF >= 3x: met; minimal JAX >= 1x: met"),
    (32, 0, 2.0, "HF >= 2x: met; minimal JAX >= 1x: met"),
    (8, 4, 1.99, "HF >= 2x: not met"),  # beam search: no minimal JAX peer
])
def test_decode_rows_are_graded_against_the_bars(batch, beam, hf, expected):
    ratio = {"hf": hf} | ({} if beam else {"minimal_jax": 1.0})
    assert decode_target({"batch": batch, "beam": beam, "ratio": ratio}) == expected


def test_a_decode_batch_without_an_hf_bar_is_graded_against_minimal_jax_only():
    row = {"batch": 4, "beam": 0, "ratio": {"hf": 9.0, "minimal_jax": 0.99}}
    assert decode_target(row) == "minimal JAX >= 1x: not met"
    assert decode_target({"batch": 4, "beam": 0, "ratio": {"hf": 9.0}}) == "-"


@pytest.mark.parametrize(("model", "pair", "expected"), [
    ("lstm", {"pytorch": 0.91, "minimal_jax": 1.02}, "PyTorch >= 1x: not met; minimal JAX >= 1x: met"),
    ("lstm", {"pytorch": 1.0, "minimal_jax": 0.98}, "PyTorch >= 1x: met; minimal JAX >= 1x: not met"),
    # No bar against torch.compile for the Transformer: only the framework-overhead one.
    ("transformer", {"pytorch": 0.79, "minimal_jax": 1.0}, "minimal JAX >= 1x: met"),
    ("transformer", {"pytorch": 0.79}, "-"),
])
def test_train_rows_are_graded_against_the_bars(model, pair, expected):
    assert train_target({"model": model, "pair_ratio": pair}) == expected


def test_decode_overrides_change_lmfuse_model_options_and_keep_the_weights():
    from bench_decode import SHAPES, build_models

    _, default, params = build_models(SHAPES["quick"], 24)
    _, fused, fused_params = build_models(SHAPES["quick"], 24, overrides=["model.fused_qkv=True"])
    assert (default.cfg.fused_qkv, fused.cfg.fused_qkv) == (False, True)
    assert all((a == b).all() for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(fused_params),
                                              strict=True))


def test_decode_overrides_refuse_what_is_not_a_model_option():
    from bench_decode import main

    with pytest.raises(SystemExit) as error:
        main(["--quick", "--override", "train.steps=3"])
    assert error.value.code == 2


def test_decode_overrides_refuse_an_option_that_changes_the_parameters():
    from bench_decode import SHAPES, build_models

    from lmfuse.errors import LmfuseError

    with pytest.raises(LmfuseError, match="no longer takes the GPT-2 weights"):
        build_models(SHAPES["quick"], 24, overrides=["model.num_layers=3"])
