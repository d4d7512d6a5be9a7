"""Tests for the SentencePiece tokenizer: exact round-trip, special ids, caching."""

import io

import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfuse.data import tokenizer as tok
from lmfuse.errors import LmfuseError

bible = pytest.importorskip("pythonbible")

VOCAB = 600

TRICKY = [
    "👨‍👩‍👧‍👦",
    "，。！？「」",
    "\t\t a  b   ",
    "▁",
    "",
    " ▁ a▁▁b ▁",
    "\ue000",  # the escape character itself
    "\ue000w",  # looks like an escaped "▁"
    "\ue000\ue000▁\ue000",
    "\x00nul\x00",
    "line one\nline two\r\n",
    "ﬁ ① ｶ e\u0301",  # NFKC would fold all of these
    "\u3000full width space\u3000",
    "<unk> <s> </s> <pad>",
    "x<mask>y <mask>",
    "In the beginning God created the heaven and the earth.",
]


def _corpus(n: int = 2500) -> list[str]:
    refs = bible.get_references("Genesis 1:1-50:26, Exodus 1:1-40:38")
    ids = bible.convert_references_to_verse_ids(refs)[:n]
    return [bible.get_verse_text(v, version=bible.Version.KING_JAMES) for v in ids]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return _corpus()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("spm_cache")


@pytest.fixture(scope="module")
def tokenizer(corpus, cache_dir) -> tok.Tokenizer:
    return tok.train_tokenizer(corpus, vocab_size=VOCAB, cache_dir=cache_dir)


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_examples(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_round_trip_any_text(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_encode_batch_matches_encode(tokenizer):
    assert tokenizer.encode_batch(TRICKY) == [tokenizer.encode(t) for t in TRICKY]


def test_special_ids(tokenizer):
    assert [tokenizer.id_to_piece(i) for i in range(5)] == [
        "<pad>",
        "</s>",
        "<s>",
        "<unk>",
        "<mask>",
    ]
    assert (tok.PAD_ID, tok.EOS_ID, tok.BOS_ID, tok.UNK_ID, tok.MASK_ID) == (0, 1, 2, 3, 4)
    assert tokenizer.vocab_size == VOCAB
    assert tokenizer.encode("<mask>") == [tok.MASK_ID]
    ids = tokenizer.encode("And God said")
    assert not {tok.PAD_ID, tok.EOS_ID, tok.BOS_ID} & set(ids)


def test_decode_drops_pad_bos_eos(tokenizer):
    ids = tokenizer.encode("Let there be light")
    padded = [tok.BOS_ID, *ids[:2], tok.PAD_ID, *ids[2:], tok.EOS_ID, tok.PAD_ID]
    assert tokenizer.decode(padded) == "Let there be light"


def test_words_are_learned_not_bytes(tokenizer):
    # Common words should be few pieces, i.e. the model actually learned the corpus.
    assert len(tokenizer.encode(" the earth")) <= 3
    assert len(tokenizer.encode("123")) == 3  # split_digits


def test_cache_hit_returns_same_file(tokenizer, corpus, cache_dir):
    again = tok.train_tokenizer(iter(corpus), vocab_size=VOCAB, cache_dir=cache_dir)
    assert again.path == tokenizer.path
    assert again.sha256 == tokenizer.sha256
    assert tokenizer.path.name.startswith("spm-") and tokenizer.path.suffix == ".model"


def test_retraining_is_byte_identical(tokenizer, corpus, tmp_path):
    fresh = tok.train_tokenizer(corpus, vocab_size=VOCAB, cache_dir=tmp_path)
    assert fresh.path.name == tokenizer.path.name
    assert fresh.path.read_bytes() == tokenizer.path.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == [fresh.path.name]  # no temp files left


def test_different_settings_or_corpus_give_different_file(tokenizer, corpus, cache_dir):
    other_vocab = tok.train_tokenizer(corpus, vocab_size=VOCAB + 50, cache_dir=cache_dir)
    other_corpus = tok.train_tokenizer(corpus[:-1], vocab_size=VOCAB, cache_dir=cache_dir)
    names = {tokenizer.path.name, other_vocab.path.name, other_corpus.path.name}
    assert len(names) == 3
    assert other_vocab.vocab_size == VOCAB + 50


def test_user_symbols_are_single_tokens(corpus, tmp_path):
    t = tok.train_tokenizer(
        corpus[:800], vocab_size=400, cache_dir=tmp_path, user_symbols=["<sep>", "<x▁y>"]
    )
    assert t.encode("<sep>") == [tok.MASK_ID + 1]
    assert t.encode("<x▁y>") == [tok.MASK_ID + 2]
    text = "a<sep>b <x▁y> <mask>"
    assert t.decode(t.encode(text)) == text


def test_bpe_round_trips(corpus, tmp_path):
    t = tok.train_tokenizer(corpus[:800], vocab_size=400, model_type="bpe", cache_dir=tmp_path)
    assert t.id_to_piece(tok.MASK_ID) == "<mask>"
    for text in TRICKY:
        assert t.decode(t.encode(text)) == text


def test_bad_model_type(tmp_path):
    with pytest.raises(LmfuseError, match="model_type 'word'.*unigram, bpe"):
        tok.train_tokenizer(["a b"], vocab_size=300, model_type="word", cache_dir=tmp_path)


def test_empty_corpus(tmp_path):
    with pytest.raises(LmfuseError, match="empty"):
        tok.train_tokenizer([], vocab_size=300, cache_dir=tmp_path)


def test_missing_or_bad_model_file(tmp_path):
    with pytest.raises(LmfuseError, match="cannot read tokenizer model"):
        tok.Tokenizer(tmp_path / "nope.model")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(LmfuseError, match="not a SentencePiece model"):
        tok.Tokenizer(junk)


def _foreign_model(corpus, path, **options):
    """A model trained with SentencePiece defaults plus `options`."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus[:300]),
        model_writer=buf,
        vocab_size=400,
        hard_vocab_limit=False,
        minloglevel=2,
        **options,
    )
    path.write_bytes(buf.getvalue())
    return path


def test_foreign_special_ids_rejected(corpus, tmp_path):
    # SentencePiece defaults: unk=0, bos=1, eos=2, no pad.
    path = _foreign_model(corpus, tmp_path / "foreign.model")
    with pytest.raises(LmfuseError, match=r"special ids .* expected \(0, 1, 2, 3, 4\)"):
        tok.Tokenizer(path)


def test_normalising_model_rejected(corpus, tmp_path):
    # Right ids, but the default NFKC normaliser would break the round-trip.
    path = _foreign_model(
        corpus,
        tmp_path / "nfkc.model",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        user_defined_symbols=["<mask>"],
        byte_fallback=True,
    )
    with pytest.raises(LmfuseError, match="normalises text .*nmt_nfkc"):
        tok.Tokenizer(path)


def test_vocab_too_small(corpus, tmp_path):
    with pytest.raises(LmfuseError, match="training failed .*Vocabulary size is smaller"):
        tok.train_tokenizer(corpus[:300], vocab_size=100, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_vocabulary_smaller_than_asked_is_one_notice_line(tmp_path, capsys):
    """SentencePiece (hard_vocab_limit=False) gives a small text fewer pieces than asked: the
    model is kept, and one stderr line names the size to ask for instead."""
    text = ["The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen jugs."]
    small = tok.train_tokenizer(text * 20, vocab_size=8000, cache_dir=tmp_path)
    got = small.vocab_size
    assert got < 8000
    assert capsys.readouterr().err.splitlines() == [
        f"tokenizer: vocabulary {got} < tokenizer.vocab_size 8000 asked: the text has too few "
        f"distinct pieces; set tokenizer.vocab_size={got} to silence this"]
    tok.train_tokenizer(text * 20, vocab_size=8000, cache_dir=tmp_path)  # cached: said again
    assert capsys.readouterr().err.count("tokenizer: vocabulary") == 1
    exact = tok.train_tokenizer(text * 20, vocab_size=got, cache_dir=tmp_path)
    assert exact.vocab_size == got and capsys.readouterr().err == ""
