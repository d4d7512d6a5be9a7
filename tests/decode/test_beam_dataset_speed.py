"""What makes decoding a dataset fast must not change what it decodes:

* beam search skips reordering the state leaves its step never writes (`unchanged_by_step`):
  tokens and scores equal a search that reorders every leaf;
* per-prompt length limits (`row_limits`): each prompt's result equals decoding it alone with
  that limit as `max_new_tokens`, whatever else is in its batch;
* `translate_lines` sorts lines by length and pads columns to a bucket width: each output
  equals translating that line alone, in the input order.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmfuse.decode import beam, beam_search, seq2seq_decode_step
from lmfuse.evaluate.translation import TranslateOptions, bucket_width, translate_lines
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
def test_invariant_leaves_are_found_and_skipping_them_changes_nothing(monkeypatch, name):
    decoder, params = random_s2s(name, copy_source=True)
    batch = batch_of(sources(4, 9))
    _, state = decoder.init(params, batch, 13)
    flags = beam.unchanged_by_step(decoder, params, state, jnp.zeros((4,), jnp.int32))
    marked = {jax.tree_util.keystr(p) for (p, _), f in zip(
        jax.tree_util.tree_flatten_with_path(state)[0], jax.tree.leaves(flags), strict=True) if f}
    assert "['copy']['source_ids']" in marked  # read every step, never written
    if name == "s2s_transformer":
        assert "['cache']['layers'][0]['cross_k']" in marked
        assert "['cache']['layers'][0]['k']" not in marked  # written every step
    else:
        assert "['memory']" in marked
        assert not any(m.startswith("['carry']") for m in marked)
    fast = beam_search(decoder, params, batch, beam_size=3, max_new_tokens=12)
    monkeypatch.setattr(beam, "unchanged_by_step",
                        lambda d, p, s, t: jax.tree.map(lambda _: False, s))
    jax.clear_caches()  # or the jitted search would reuse the program traced above
    every = beam_search(decoder, params, batch, beam_size=3, max_new_tokens=12)
    np.testing.assert_array_equal(fast.tokens, every.tokens)
    np.testing.assert_array_equal(fast.scores, every.scores)


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


@pytest.mark.parametrize("name", BACKBONES)
def test_sorted_bucketed_batches_translate_each_line_as_if_alone(name):
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
