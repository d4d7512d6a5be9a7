"""TranslateOptions carry no_repeat_ngram_size from the config (or a flag) to beam search, and
`translate_lines` reports progress in verses."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lmfuse.decode import DecodeStep
from lmfuse.evaluate.translation import TranslateOptions, translate_lines
from lmfuse.schema import decode_config
from lmfuse.tokens import EOS_ID

VOCAB = 12


def config(**decode) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict({"data": {"max_length": 8}, "decode": decode_config()})
    c.decode.update(decode)
    return c


def test_the_size_comes_from_the_config_unless_given():
    assert TranslateOptions.from_config(config()).no_repeat_ngram_size == 0
    assert TranslateOptions.from_config(config(no_repeat_ngram_size=3)).no_repeat_ngram_size == 3
    given = TranslateOptions.from_config(config(no_repeat_ngram_size=3), no_repeat_ngram_size=0)
    assert given.no_repeat_ngram_size == 0
    old = config()  # a workdir trained before the key existed
    del old.decode["no_repeat_ngram_size"]
    assert TranslateOptions.from_config(old).no_repeat_ngram_size == 0


class Tokenizer:
    """Words are ids: '5 6 7' <-> [5, 6, 7]."""

    def encode_batch(self, lines):
        return [[int(w) for w in line.split()] for line in lines]

    def decode(self, ids):
        return " ".join(str(i) for i in ids)


def _init(params, batch, max_len):
    last = batch["prompt"][:, -1]
    return params[last], {"last": last}


def _step(params, state, tokens):
    return params[tokens], {"last": tokens}


# After any token, 5 is by far the likeliest next one, then 6, 7, ...; EOS never wins.
REPEATER = DecodeStep(_init, _step)
TABLE = jnp.tile(jnp.asarray([-9.0, -9.0, 0, 0, 0, 9, 8, 7, 6, 5, 4, 3]), (VOCAB, 1))


@pytest.mark.parametrize("n", [0, 1, 2])
def test_translate_lines_bans_repeated_ngrams_and_counts_verses(monkeypatch, capsys, n):
    monkeypatch.setenv("LMFUSE_PROGRESS_SECONDS", "0")
    options = TranslateOptions(beam_size=2, max_source_tokens=4, max_new_tokens=6, batch_size=2,
                               progress=True, no_repeat_ngram_size=n)
    lines = ["3 4", "", "4", "3"]
    out = translate_lines(REPEATER, TABLE, Tokenizer(), lines, options)
    assert out.hypotheses[1] == "" and out.empty == 1
    for text in (out.hypotheses[i] for i in (0, 2, 3)):
        ids = [int(w) for w in text.split()]
        assert len(ids) == 6 and EOS_ID not in ids
        grams = [tuple(ids[j:j + n]) for j in range(len(ids) - n + 1)] if n else []
        assert len(set(grams)) == len(grams)
        if n == 0:
            assert ids == [5] * 6  # what the ban prevents
    err = capsys.readouterr().err
    assert [line.split(",")[0] for line in err.splitlines()] == [
        "translate: 2/3 (67%)", "translate: 3/3 (100%)"]
    assert np.all(["verse/s" in line and "ETA" in line for line in err.splitlines()])
