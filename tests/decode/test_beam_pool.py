"""Dropping done prompts between stages (`beam_pool.search_batches`) must not change what any
prompt decodes: each batch's n-best lists equal `beam_search` on that batch alone (tokens
exactly, scores to float rounding), for both backbones, with pooling across batches, partly filled batches, a monotone and a
non-monotone (fused) decoder; and the stage programs compiled ahead are the ones that run."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from test_beam_dataset_speed import BACKBONES, batch_of, random_s2s, sources

from lmfuse.decode import beam_pool, beam_search
from lmfuse.decode.beam import compile_search_stages, search_stage, stage_lengths
from lmfuse.decode.fusion import fused_params, fusion_weights, shallow_fusion

OPTIONS = {"beam_size": 3, "max_new_tokens": 12, "first_phase_tokens": 2}  # stages 2, 4, 8, 12


def batches_of(count: int, rows: int, width: int, seed: int) -> list[tuple[dict, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(batch_of(sources(rows, width, seed=seed + n)),
             rng.integers(1, OPTIONS["max_new_tokens"] + 1, rows).astype(np.int32))
            for n in range(count)]


def assert_same_search(pooled, alone) -> None:
    np.testing.assert_array_equal(pooled.tokens, np.asarray(alone.tokens))
    np.testing.assert_array_equal(pooled.finished, np.asarray(alone.finished))
    # A row's place in its batch changes XLA:CPU's rounding of the RNN's products (beam_search
    # alone moves its scores by about 1e-6 when the rows are permuted): rounding only.
    for name in ("scores", "logprobs"):
        np.testing.assert_allclose(getattr(pooled, name), np.asarray(getattr(alone, name)),
                                   rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("window", [1, 2, 8])
def test_each_batch_decodes_what_it_decodes_alone(name, window):
    decoder, params = random_s2s(name, copy_source=True)
    batches = batches_of(5, 4, 7, seed=11)
    pooled = list(beam_pool.search_batches(decoder, params, batches, window=window, **OPTIONS))
    assert len(pooled) == len(batches)
    for (batch, limits), out in zip(batches, pooled, strict=True):
        assert_same_search(out, beam_search(decoder, params, batch, row_limits=limits, **OPTIONS))


def test_prompts_leave_between_stages_and_the_rest_are_pooled(monkeypatch):
    decoder, params = random_s2s("s2s_transformer")
    # Half the rows stop after one token: after stage 0 four batches' running rows fill two.
    batches = batches_of(4, 4, 7, seed=3)
    for _, limits in batches:
        limits[:2] = 1
        limits[2:] = OPTIONS["max_new_tokens"]
    calls = []

    def counting(decoder, params, batch, stage, carry=None, until=None, **options):
        calls.append(until)
        return search_stage(decoder, params, batch, stage, carry, until, **options)

    monkeypatch.setattr(beam_pool, "search_stage", counting)
    pooled = list(beam_pool.search_batches(decoder, params, batches, window=4, every=0,
                                           **OPTIONS))
    assert calls.count(2) == 4 and calls.count(4) == 2  # stage 1 on two batches, not four
    for (batch, limits), out in zip(batches, pooled, strict=True):
        assert_same_search(out, beam_search(decoder, params, batch, row_limits=limits, **OPTIONS))


def test_a_fused_non_monotone_decoder_decodes_what_it_decodes_alone():
    decoder, params = random_s2s("s2s_transformer")
    lm, lm_params = random_s2s("s2s_transformer")  # any DecodeStep of the same vocabulary
    fused = shallow_fusion(decoder, lm, monotone=False)
    both = fused_params(params, fusion_weights(0.3, length_reward=0.5), lm=lm_params)
    assert not fused.monotone
    batches = batches_of(3, 4, 7, seed=5)
    pooled = list(beam_pool.search_batches(fused, both, batches, window=3, **OPTIONS))
    for (batch, limits), out in zip(batches, pooled, strict=True):
        assert_same_search(out, beam_search(fused, both, batch, row_limits=limits, **OPTIONS))


def test_stage_lengths_are_the_cache_phases_and_the_host_looks_within_them():
    assert stage_lengths(12, 2) == (2, 4, 8, 12)
    assert stage_lengths(12, 0) == (12,)
    assert beam_pool.stop_points(12, 2, 3) == [(0, 2), (1, 4), (2, 7), (2, 8), (3, 11), (3, 12)]
    assert beam_pool.stop_points(12, 2, 0) == [(0, 2), (1, 4), (2, 8), (3, 12)]


@pytest.mark.parametrize("every", [1, 3])
def test_looking_for_done_rows_inside_a_stage_changes_nothing(every):
    decoder, params = random_s2s("s2s_transformer", copy_source=True)
    batches = batches_of(4, 4, 7, seed=8)
    pooled = beam_pool.search_batches(decoder, params, batches, window=4, every=every, **OPTIONS)
    for (batch, limits), out in zip(batches, pooled, strict=True):
        assert_same_search(out, beam_search(decoder, params, batch, row_limits=limits, **OPTIONS))


def test_the_stage_programs_compiled_ahead_are_the_ones_that_run(caplog):
    decoder, params = random_s2s("s2s_transformer", copy_source=True)
    batches = batches_of(2, 3, 7, seed=4)
    jax.clear_caches()
    with jax.log_compiles(), caplog.at_level("WARNING"):
        compile_search_stages(decoder, params, batches[0][0], **OPTIONS)
        compiled = [r for r in caplog.records if "_search_stage" in r.getMessage()
                    and "compilation" in r.getMessage()]
        caplog.clear()
        list(beam_pool.search_batches(decoder, params, batches, **OPTIONS))
        again = [r for r in caplog.records if "stage" in r.getMessage()
                 and "compilation" in r.getMessage()]  # neither a stage nor a growth again
    assert len(compiled) == len(stage_lengths(12, 2)) and not again
