"""Cached decoding of every fused method on the s2s_transformer backbone equals its teacher-forced
logits, prompts of different lengths included (`tiny_fusion` has the check; the other
backbone has its own file, so each stays quick)."""

import pytest
from tiny_fusion import METHODS, assert_cached_decoding_matches_teacher_forcing


@pytest.mark.parametrize("method", METHODS)
def test_cached_decoding_equals_teacher_forcing(method):
    assert_cached_decoding_matches_teacher_forcing("s2s_transformer", method)
