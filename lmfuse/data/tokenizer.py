"""SentencePiece tokenizer shared by the language model and the seq2seq model.

Fusion combines an LM and a seq2seq model token by token, so both must use the *same*
vocabulary; `Tokenizer.sha256` (a hash of the model file) is what fusion compares.

`decode(encode(s)) == s` holds exactly for every Unicode string without surrogates. The
training options that make this so, and what each one prevents:

* ``normalization_rule_name="identity"``: the default ``nmt_nfkc`` rewrites text (NFKC folds
  fullwidth punctuation such as "，" to ",", the ligature "ﬁ" to "fi", drops some control
  characters), which can't be undone.
* ``add_dummy_prefix=False``: otherwise a space is prepended to every input and the decoder
  can't tell it from a real leading space.
* ``remove_extra_whitespaces=False``: otherwise leading, trailing and repeated spaces are
  squeezed away.
* ``byte_fallback=True``: characters missing from the vocabulary (rare CJK, emoji, NUL...)
  become UTF-8 byte pieces instead of ``<unk>``, so nothing is lost.
* ``character_coverage=1.0`` (default): keep every character seen in training as a piece.
* ``split_digits=True``: numbers are split into single digits (round-trip neutral; better
  arithmetic/number generalisation).

SentencePiece always writes a space as the meta symbol "▁" (U+2581) and decodes every "▁"
back to a space, so a literal "▁" in the input would come back as " ". Turning that off
(``escape_whitespaces=False``) is rejected by the unigram trainer, so this module adds a
reversible escape layer instead: before encoding, `_ESC` becomes `_ESC + _ESC` and "▁"
becomes `_ESC + "w"`; `decode` undoes it. `_ESC` is a private-use character, so ordinary
text is tokenised exactly as SentencePiece would without the layer.

Special ids are fixed (`PAD_ID`...`MASK_ID`). "<mask>" and any extra ``user_symbols`` are
user-defined pieces: they are always one token, and a literal "<mask>" in the text encodes
to `MASK_ID` (and decodes back to "<mask>").

Training is deterministic (one thread, first ``max_sentences`` texts rather than a random
sample), and models are cached by a hash of the settings and the corpus, so the same corpus
and settings always give a byte-identical model file.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import pathlib
import re
import sys
import tempfile
from collections.abc import Iterable, Sequence

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from lmfuse.errors import LmfuseError

# The ids live in lmfuse.tokens (a leaf models and decoders import); re-exported for data code.
from lmfuse.tokens import BOS_ID, EOS_ID, MASK_ID, PAD_ID, UNK_ID  # noqa: F401

MASK_PIECE = "<mask>"
MODEL_TYPES = ("unigram", "bpe")

# Bump when the training options or the escape layer change, so old cached models
# (which would tokenise differently) are not reused.
_FORMAT_VERSION = 1

_SPACE_MARK = "\u2581"  # SentencePiece's whitespace meta symbol "▁"
_ESC = "\ue000"  # private-use escape character
_UNESCAPE_RE = re.compile(_ESC + "(.)", re.DOTALL)
_DROPPED_IDS = frozenset({PAD_ID, EOS_ID, BOS_ID})


def _escape(text: str) -> str:
    """Make `text` free of "▁" so SentencePiece can't turn it into a space."""
    return text.replace(_ESC, _ESC + _ESC).replace(_SPACE_MARK, _ESC + "w")


def _unescape_match(match: re.Match[str]) -> str:
    char = match.group(1)
    if char == _ESC:
        return _ESC
    if char == "w":
        return _SPACE_MARK
    return match.group(0)  # not produced by `_escape` (e.g. sampled ids): keep as is


def _unescape(text: str) -> str:
    return _UNESCAPE_RE.sub(_unescape_match, text)


class Tokenizer:
    """A trained SentencePiece model with the fixed special ids and exact round-trip."""

    def __init__(self, model_path: str | os.PathLike) -> None:
        self.path = pathlib.Path(model_path)
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise LmfuseError(
                f"cannot read tokenizer model {self.path}: {e.strerror}; "
                "check the path or train one with train_tokenizer"
            ) from None
        self.sha256 = hashlib.sha256(data).hexdigest()
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(data)
        except RuntimeError:
            raise LmfuseError(
                f"{self.path} is not a SentencePiece model; point to a .model file "
                "written by train_tokenizer"
            ) from None
        _check_model(self.path, data, self._sp)
        self.vocab_size: int = self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Token ids for `text`, without BOS/EOS."""
        return self._sp.encode(_escape(text))

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """`encode` for many texts at once (SentencePiece's batched, multithreaded path)."""
        return self._sp.encode([_escape(t) for t in texts])

    def decode(self, ids: Sequence[int]) -> str:
        """Text for `ids`; PAD/BOS/EOS ids are dropped wherever they occur."""
        kept = [int(i) for i in ids if int(i) not in _DROPPED_IDS]
        return _unescape(self._sp.decode(kept))

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def _check_model(path: pathlib.Path, data: bytes, sp: spm.SentencePieceProcessor) -> None:
    """Reject models whose special ids or normaliser break this module's guarantees."""
    got = (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id(), sp.piece_to_id(MASK_PIECE))
    want = (PAD_ID, EOS_ID, BOS_ID, UNK_ID, MASK_ID)
    if got != want:
        raise LmfuseError(
            f"{path} has special ids (pad, eos, bos, unk, mask)={got}, expected {want}; "
            "retrain it with train_tokenizer"
        )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(data)
    spec = proto.normalizer_spec
    if (
        spec.name != "identity"
        or spec.add_dummy_prefix
        or spec.remove_extra_whitespaces
        or not proto.trainer_spec.byte_fallback
    ):
        raise LmfuseError(
            f"{path} normalises text (rule {spec.name!r}) or lacks byte fallback, so "
            "decoding would not give back the input; retrain it with train_tokenizer"
        )


def train_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int,
    model_type: str = "unigram",
    cache_dir: str | os.PathLike,
    user_symbols: Sequence[str] = (),
    character_coverage: float = 1.0,
    max_sentences: int = 2_000_000,
) -> Tokenizer:
    """Train (or load from `cache_dir`) a SentencePiece model on the first `max_sentences` texts.

    The cache file is ``cache_dir/spm-<hash>.model`` where the hash covers every setting and
    every text used, so a changed corpus or setting trains a new model. A vocabulary smaller
    than `vocab_size` (too little text) is kept, with a notice (`notice_small_vocab`).
    """
    if model_type not in MODEL_TYPES:
        raise LmfuseError(
            f"unknown tokenizer model_type {model_type!r}; use one of {', '.join(MODEL_TYPES)}"
        )
    settings = {
        "format": _FORMAT_VERSION,
        "sentencepiece": spm.__version__,
        "vocab_size": int(vocab_size),
        "model_type": model_type,
        "user_symbols": [MASK_PIECE, *user_symbols],
        "character_coverage": float(character_coverage),
        "max_sentences": int(max_sentences),
    }
    sentences, key = _collect(texts, settings, max_sentences)
    cache_dir = pathlib.Path(cache_dir)
    path = cache_dir / f"spm-{key[:16]}.model"
    if not path.exists():
        model = _train(sentences, settings)
        cache_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, model)
    return notice_small_vocab(Tokenizer(path), vocab_size)


def notice_small_vocab(tokenizer: Tokenizer, asked: int) -> Tokenizer:
    """`tokenizer`, after one line on stderr if its vocabulary is smaller than `asked`:
    training runs with ``hard_vocab_limit=False``, so a text with too few distinct pieces
    silently gets fewer."""
    if tokenizer.vocab_size < asked:
        print(
            f"tokenizer: vocabulary {tokenizer.vocab_size} < tokenizer.vocab_size {asked} asked: "
            "the text has too few distinct pieces; set "
            f"tokenizer.vocab_size={tokenizer.vocab_size} to silence this",
            file=sys.stderr,
        )
    return tokenizer


def _collect(texts: Iterable[str], settings: dict, max_sentences: int) -> tuple[list[str], str]:
    """Escape the training texts and hash them with the settings in one streaming pass."""
    hasher = hashlib.sha256(repr(sorted(settings.items())).encode())
    sentences = []
    for text in itertools.islice(texts, max_sentences):
        escaped = _escape(text)
        encoded = escaped.encode("utf-8")
        # Length prefix keeps ["ab", "c"] and ["a", "bc"] apart.
        hasher.update(len(encoded).to_bytes(8, "little"))
        hasher.update(encoded)
        sentences.append(escaped)
    return sentences, hasher.hexdigest()


def _train(sentences: list[str], settings: dict) -> bytes:
    """Run the SentencePiece trainer in memory and return the serialized model."""
    if not sentences:
        raise LmfuseError("the tokenizer training corpus is empty; give it at least one text")
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=writer,
            vocab_size=settings["vocab_size"],
            model_type=settings["model_type"],
            character_coverage=settings["character_coverage"],
            user_defined_symbols=[_escape(s) for s in settings["user_symbols"]],
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            bos_id=BOS_ID,
            unk_id=UNK_ID,
            byte_fallback=True,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            split_digits=True,
            # Smaller vocab than asked is fine for tiny corpora (train_tokenizer says so).
            hard_vocab_limit=False,
            # Multithreaded EM sums in a varying order; one thread keeps the output stable.
            num_threads=1,
            # We cap the corpus ourselves (first max_sentences), so no random sampling here.
            input_sentence_size=0,
            shuffle_input_sentence=False,
            minloglevel=2,
        )
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1]
        raise LmfuseError(
            f"SentencePiece training failed ({reason}); check vocab_size and user_symbols"
        ) from None
    return writer.getvalue()


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
    """Write via a temporary file in the same folder, so readers never see a partial model."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
