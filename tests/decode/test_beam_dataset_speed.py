"""What makes decoding a dataset fast must not change what it decodes:

* beam search holds the state leaves its step never writes once per prompt, shared by its
  beams (`beam_state`): tokens equal a search that tiles and reorders every leaf, scores equal
  up to float rounding;
* per-prompt length limits (`row_limits`): each prompt's result equals decoding it alone with
  that limit as `max_new_tokens`, whatever else is in its batch;
* the search runs in phases of growing cache size (`cache_phases`): tokens and scores equal
  one phase over the whole cache, and so do the sampler's tokens and log-probs;
* `translate_lines` sorts lines by length and pads columns to a bucket width (a width too few
  batches would use merged into a wider one): each output equals translating that line alone,
  in the input order;
* a program compiled ahead (`compile_beam_search`, in a background thread while another batch
  decodes) is the one the search then runs: nothing compiles twice.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmfuse.decode import beam_search, beam_state, cache_phases, sample, seq2seq_decode_step
from lmfuse.decode.beam import compile_beam_search
from lmfuse.evaluate import translation
from lmfuse.evaluate.translation import (
    TranslateOptions,
    batch_widths,
    bucket_width,
    translate_lines,
)
from lmfuse.models import build_model, model_defaults
from lmfuse.tokens import BOS_ID, EOS_ID

VOCAB = 23
BACKBONES = ("s2s_transformer", "s2s_rnn")


def random_s2s(name: str, copy_source: bool = False):
    """(DecodeStep, params) of a 1-layer encoder-decoder with N(0, 1) weights (decisive
    distributions, so beams differ) and EOS a likely token."""
    c = model_defaults().to_dict()
    c.update(name=name, emb_dim=16, hidden_dim=16, num_layers=1, num_encoder_layers=1,
             num_heads=2, mlp_dim=32, max_len=32, dropout=0.0, copy_source=copy_source)
    model = build_model(c, VOCAB)
    src, tgt = jnp.ones((1, 5), jnp.int32), jnp.ones((1, 4), jnp.int32)
    shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), src, tgt)["params"]))
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), shapes)
    return seq2seq_decode_step(model), params


def sources(rows: int, width: int, seed: int = 0) -> np.ndarray:
    """Rows of random lengths 2..width, EOS-terminated, PAD after."""
    rng = np.random.default_rng(seed)
    out = np.zeros((rows, width), np.int32)
    for r in range(rows):
        n = rng.integers(2, width + 1)
        out[r, : n - 1] = rng.integers(4, VOCAB, n - 1)
        out[r, n - 1] = EOS_ID
    return out


def batch_of(inputs: np.ndarray) -> dict:
    return {"inputs": jnp.asarray(inputs), "prompt": jnp.full((len(inputs), 1), BOS_ID, jnp.int32)}


@pytest.mark.parametrize("name", BACKBONES)
def test_shared_leaves_are_found_and_sharing_them_changes_nothing(monkeypatch, name):
    decoder, params = random_s2s(name, copy_source=True)
    batch = batch_of(sources(4, 9))
    _, state = decoder.init(params, batch, 13)
    per_beam = beam_state.per_beam_leaves(decoder, params, state, 4)
    marked = {jax.tree_util.keystr(p) for (p, leaf), own in zip(
        jax.tree_util.tree_flatten_with_path(state)[0], jax.tree.leaves(per_beam), strict=True)
        if not own and leaf.ndim}
    assert "['copy']['source_ids']" in marked  # read every step, never written
    if name == "s2s_transformer":
        assert "['cache']['layers'][0]['cross_k']" in marked
        assert "['cache']['layers'][0]['k']" not in marked  # written every step
    else:
        assert "['memory']" in marked
        assert not any(m.startswith("['carry']") for m in marked)
    fast = beam_search(decoder, params, batch, beam_size=3, max_new_tokens=12)
    monkeypatch.setattr(beam_state, "unchanged_by_step",
                        lambda d, p, s, t: jax.tree.map(lambda _: False, s))
    jax.clear_caches()  # or the jitted search would reuse the program traced above
    every = beam_search(decoder, params, batch, beam_size=3, max_new_tokens=12)
    np.testing.assert_array_equal(fast.tokens, every.tokens)
    # Products batched against one copy are blocked differently from K copies: rounding only.
    np.testing.assert_allclose(fast.scores, every.scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", BACKBONES)
def test_a_row_limit_decodes_as_if_the_row_were_alone_with_that_limit(name):
    decoder, params = random_s2s(name)
    inputs = sources(5, 8, seed=3)
    limits = np.asarray([1, 3, 5, 8, 12], np.int32)
    together = beam_search(decoder, params, batch_of(inputs), beam_size=3, max_new_tokens=12,
                           row_limits=limits)
    for row, limit in enumerate(limits):
        alone = beam_search(decoder, params, batch_of(inputs[row : row + 1]), beam_size=3,
                            max_new_tokens=int(limit))
        np.testing.assert_array_equal(together.tokens[row, :, :limit], alone.tokens[0])
        assert (np.asarray(together.tokens[row, :, limit:]) == 0).all()  # PAD past the limit
        np.testing.assert_allclose(together.scores[row], alone.scores[0], rtol=1e-6)


class WordTokenizer:
    """Words are ids: '5 6 7' <-> [5, 6, 7]."""

    def encode_batch(self, lines):
        return [[int(w) for w in line.split()] for line in lines]

    def decode(self, ids):
        return " ".join(str(i) for i in ids)


def test_bucket_widths_are_powers_of_two_capped_at_the_source_length():
    assert [bucket_width(n, 96) for n in (1, 16, 17, 33, 64, 65, 96)] == [16, 16, 32, 64, 64, 96, 96]


def test_a_width_too_few_batches_would_use_joins_the_next_wider_one():
    longest = [90, 70, 60, 50, 40, 30, 20, 10]  # buckets 96 96 64 64 64 32 32 16
    assert batch_widths(longest, 96, 1) == [96, 96, 64, 64, 64, 32, 32, 16]
    # 96 is the widest (kept with 2 batches), 64 has 3; 32 and 16 join 64.
    assert batch_widths(longest, 96, 3) == [96, 96, 64, 64, 64, 64, 64, 64]
    assert batch_widths([10, 9], 96, 3) == [16, 16]  # the widest is kept, however few use it
    assert batch_widths([], 96) == []


@pytest.mark.parametrize("min_batches", [1, 3])  # 1: every bucket its own width
@pytest.mark.parametrize("name", BACKBONES)
def test_sorted_bucketed_batches_translate_each_line_as_if_alone(monkeypatch, name, min_batches):
    monkeypatch.setattr(translation, "MIN_BATCHES_PER_WIDTH", min_batches)
    decoder, params = random_s2s(name)
    rng = np.random.default_rng(5)
    lengths = [1, 30, 3, 17, 0, 8, 33, 2]  # widths 16, 32 and 40 (the cap); one empty line
    lines = [" ".join(str(t) for t in rng.integers(4, VOCAB, n)) for n in lengths]
    options = TranslateOptions(beam_size=2, max_source_tokens=40, max_new_tokens=20,
                               batch_size=3, max_len_a=0.5, max_len_b=2)
    out = translate_lines(decoder, params, WordTokenizer(), lines, options)
    assert out.hypotheses[4] == "" and out.empty == 1
    for line, hypothesis in zip(lines, out.hypotheses, strict=True):
        if line:
            alone = translate_lines(decoder, params, WordTokenizer(), [line],
                                    TranslateOptions(**{**options.__dict__, "batch_size": 1}))
            assert hypothesis == alone.hypotheses[0]
            # The limit counts EOS on both sides: at most ceil(0.5 * (n + 1) + 2) - 1 words.
            n = len(line.split())
            assert len(hypothesis.split()) <= options.new_token_limit(n + 1) - 1


def test_new_token_limit_reads_fairseqs_a_and_b_and_never_passes_max_new_tokens():
    options = TranslateOptions(max_new_tokens=50, max_len_a=1.5, max_len_b=10)
    assert [options.new_token_limit(n) for n in (1, 10, 27, 40)] == [12, 25, 50, 50]
    assert TranslateOptions(max_new_tokens=50).new_token_limit(3) == 50  # 0 and 0: no limit


def test_phase_lengths_double_from_the_first_and_end_at_the_limit():
    assert cache_phases.phase_lengths(96) == (16, 32, 64, 96)
    assert cache_phases.phase_lengths(64) == (16, 32, 64)
    assert cache_phases.phase_lengths(12) == (12,)
    assert cache_phases.phase_lengths(12, first=2) == (2, 4, 8, 12)
    assert cache_phases.phase_lengths(12, first=0) == (12,)


@pytest.mark.parametrize("name", BACKBONES)
def test_slot_axes_are_the_cache_slots_and_an_rnn_has_none(name):
    decoder, params = random_s2s(name, copy_source=True)
    batch = batch_of(sources(2, 9))
    axes = cache_phases.init_in_phases(decoder, params, batch, 12, 2)[3]
    if name == "s2s_rnn":
        assert axes is None  # a carry does not grow with the length: one phase
        return
    assert axes["cache"]["layers"][0]["k"] == 2  # [B, N, S, H]
    assert axes["cache"]["segment_ids"] == 1  # [B, S]
    assert axes["cache"]["layers"][0]["cross_k"] == -1  # the source's, not the target's
    assert axes["copy"]["memory"] == -1


def phased_and_whole(decoder, params, batch, **options):
    """The same search in phases of 2, 4, 8, ... new tokens and in one phase."""
    phased = beam_search(decoder, params, batch, first_phase_tokens=2, **options)
    whole = beam_search(decoder, params, batch, first_phase_tokens=0, **options)
    return phased, whole


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("copy_source", [False, True])
def test_cache_phases_decode_what_one_whole_cache_decodes(name, copy_source):
    decoder, params = random_s2s(name, copy_source=copy_source)
    inputs = sources(5, 8, seed=3)
    limits = np.asarray([1, 3, 5, 8, 12], np.int32)  # rows end in different phases
    phased, whole = phased_and_whole(decoder, params, batch_of(inputs), beam_size=3,
                                     max_new_tokens=12, row_limits=limits)
    np.testing.assert_array_equal(phased.tokens, whole.tokens)
    np.testing.assert_array_equal(phased.finished, whole.finished)
    np.testing.assert_allclose(phased.scores, whole.scores, rtol=1e-5, atol=1e-6)


def test_cache_phases_hold_for_a_shallow_fused_lm_pair_and_an_lm_prompt():
    from random_models import random_lm

    from lmfuse.decode.fusion import fused_params, fusion_weights, shallow_fusion

    (base, p_base), (lm, p_lm) = random_lm("transformer", 1, VOCAB), random_lm("transformer", 2, VOCAB)
    decoder = shallow_fusion(base, lm)
    params = fused_params(p_base, fusion_weights(0.5), lm=p_lm)
    prompt = jnp.asarray([[BOS_ID, 5, 6], [0, BOS_ID, 7]], jnp.int32)  # one row left-padded
    axes = cache_phases.init_in_phases(decoder, params, {"prompt": prompt}, 12, 2)[3]
    assert axes is not None and {2, 1, -1} == set(jax.tree.leaves(axes))  # both LMs' caches
    phased, whole = phased_and_whole(decoder, params, {"prompt": prompt}, beam_size=3,
                                     max_new_tokens=12, eos_id=None)  # every step runs
    np.testing.assert_array_equal(phased.tokens, whole.tokens)
    np.testing.assert_allclose(phased.scores, whole.scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_sampler_in_cache_phases_draws_what_one_whole_cache_draws(name, temperature):
    # Greedy and ancestral sampling (same key, two samples per source, top-k on) through phases
    # of 2, 4, 8 and 12 new tokens; an RNN has no slots and keeps one phase.
    decoder, params = random_s2s(name, copy_source=True)
    batch = batch_of(sources(5, 8, seed=4))
    outputs = [sample(decoder, params, batch, jax.random.key(7), max_new_tokens=12,
                      temperature=temperature, top_k=8, num_samples=2, first_phase_tokens=first)
               for first in (2, 0)]
    phased, whole = outputs
    np.testing.assert_array_equal(phased.tokens, whole.tokens)
    np.testing.assert_array_equal(phased.lengths, whole.lengths)
    np.testing.assert_allclose(phased.logprobs, whole.logprobs, rtol=1e-5, atol=1e-6)


def test_the_sampler_in_cache_phases_holds_for_an_lm_prompt():
    from random_models import random_lm

    lm, p_lm = random_lm("transformer", 2, VOCAB)
    prompt = jnp.asarray([[BOS_ID, 5, 6], [0, BOS_ID, 7]], jnp.int32)  # one row left-padded
    phased, whole = (sample(lm, p_lm, {"prompt": prompt}, jax.random.key(3), max_new_tokens=12,
                            eos_id=None, first_phase_tokens=first) for first in (2, 0))
    np.testing.assert_array_equal(phased.tokens, whole.tokens)
    np.testing.assert_allclose(phased.logprobs, whole.logprobs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", BACKBONES)
def test_init_in_phases_holds_the_prompt_and_the_first_phase(name):
    decoder, params = random_s2s(name, copy_source=True)
    batch = batch_of(sources(2, 9))
    _, state, phases, axes = cache_phases.init_in_phases(decoder, params, batch, 12, 2)
    if name == "s2s_rnn":
        assert phases == (12,) and axes is None  # one phase: the carry serves every length
        return
    assert phases == (2, 4, 8, 12)
    assert state["cache"]["layers"][0]["k"].shape[2] == 1 + 2  # the prompt and phase one


def test_a_program_compiled_ahead_is_the_one_the_search_then_runs(caplog):
    # translate_lines compiles each batch width's program in a background thread; the search
    # must then find it in jit's caches, or the host compiles everything twice.
    decoder, params = random_s2s("s2s_transformer", copy_source=True)
    batch, limits = batch_of(sources(3, 7, seed=4)), np.asarray([3, 9, 5], np.int32)
    options = {"beam_size": 2, "max_new_tokens": 9, "row_limits": limits}
    jax.clear_caches()
    with jax.log_compiles(), caplog.at_level("WARNING"):
        compile_beam_search(decoder, params, batch, **options)
        compiled = [r for r in caplog.records if "_beam_search" in r.getMessage()
                    and "compilation" in r.getMessage()]
        caplog.clear()
        out = beam_search(decoder, params, batch, **options)
        again = [r for r in caplog.records if "_beam_search" in r.getMessage()
                 and "compilation" in r.getMessage()]
    assert len(compiled) == 1 and not again
    jax.clear_caches()
    np.testing.assert_array_equal(out.tokens, beam_search(decoder, params, batch, **options).tokens)
