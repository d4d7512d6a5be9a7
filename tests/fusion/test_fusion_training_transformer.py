"""Fused models on the s2s_transformer backbone through the training stack: bases from their
workdirs, the loss falls, frozen bases unchanged and without optimizer state, greedy and beam
decoding consistent with the trained model (`fused_training` has the check). Deep fusion runs
by default; the other methods are slow (test_fusion_training_rnn.py runs cold fusion)."""

import pytest
from fused_training import assert_fused_training_works, save_bases

BACKBONE = "s2s_transformer"
SLOW = ["cold", "simple_postnorm", "simple_prenorm", "linear", "lm_prior"]
CASES = [("deep", False)] + [pytest.param(m, False, marks=pytest.mark.slow) for m in SLOW]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return save_bases(tmp_path_factory.mktemp("bases"), BACKBONE)


@pytest.mark.parametrize("method, train_bases", CASES)
def test_fused_model_trains_and_decodes(bases, method, train_bases):
    assert_fused_training_works(bases, BACKBONE, method, train_bases)
