"""Fused models on the s2s_rnn backbone through the training stack: bases from their workdirs,
the loss falls, frozen bases unchanged and without optimizer state, greedy and beam decoding
consistent with the trained model (`fused_training` has the check). Cold fusion runs by
default; the other methods, and linear fusion with trained bases, are slow
(test_fusion_training_transformer.py runs deep fusion)."""

import pytest
from fused_training import assert_fused_training_works, save_bases

BACKBONE = "s2s_rnn"
SLOW = [("deep", False), ("simple_postnorm", False), ("simple_prenorm", False),
        ("linear", False), ("linear", True), ("lm_prior", False)]
CASES = [("cold", False)] + [pytest.param(*case, marks=pytest.mark.slow) for case in SLOW]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return save_bases(tmp_path_factory.mktemp("bases"), BACKBONE)


@pytest.mark.parametrize("method, train_bases", CASES)
def test_fused_model_trains_and_decodes(bases, method, train_bases):
    assert_fused_training_works(bases, BACKBONE, method, train_bases)
