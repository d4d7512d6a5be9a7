"""Shared fixtures: a small real-text corpus and tiny training configs built on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The study scripts import their shared parts (experiments/lib) as `python experiments/x.py`
# does, from the scripts' folder; tests import the scripts the same way.
sys.path.insert(0, str(REPO / "experiments"))


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """Commands run by the tests keep their compiled programs in the test run's own directory,
    not the user's (~/.cache/lmfuse/jax). The test processes themselves keep JAX's persistent
    cache off: a command run in-process (`lmfuse.cli.main`) would turn it on for every later
    test of its worker, which then serializes each compiled program, and XLA:CPU's
    `executable.serialize()` once crashed a worker with a segfault in an unrelated test."""
    import jax

    os.environ["LMFUSE_COMPILATION_CACHE"] = str(tmp_path_factory.mktemp("jax-cache"))
    jax.config.update("jax_enable_compilation_cache", False)


def asv_verses(reference: str) -> list[str]:
    """Real text: ASV verses (aligned as shipped) through pythonbible's own API."""
    import pythonbible as bible

    ids = bible.convert_references_to_verse_ids(bible.get_references(reference))
    texts = (bible.get_verse_text(v, version=bible.Version.AMERICAN_STANDARD) for v in ids)
    return [t for t in texts if t]


def verse_pairs(reference: str) -> list[tuple[str, str]]:
    """Real parallel text: (KJV, ASV) verse pairs, both present, through pythonbible."""
    import pythonbible as bible

    ids = bible.convert_references_to_verse_ids(bible.get_references(reference))
    pairs = ((bible.get_verse_text(v, version=bible.Version.KING_JAMES),
              bible.get_verse_text(v, version=bible.Version.AMERICAN_STANDARD)) for v in ids)
    # One line per verse: a few verse texts hold a line break (poetry).
    return [(" ".join(k.split()), " ".join(a.split())) for k, a in pairs if k and a]


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> dict[str, str]:
    """Genesis-Exodus for training, Ruth for validation, Jonah for test, as user text files."""
    root = tmp_path_factory.mktemp("corpus")
    splits = {"train": "Genesis 1:1-50:26, Exodus 1:1-40:38", "validation": "Ruth 1:1-4:22",
              "test": "Jonah 1:1-4:11"}
    paths = {"data_dir": str(root / "data")}
    for split, reference in splits.items():
        path = root / f"{split}.txt"
        path.write_text("\n".join(asv_verses(reference)) + "\n", encoding="utf-8")
        paths[split] = str(path)
    return paths


@pytest.fixture(scope="session")
def pair_corpus(tmp_path_factory) -> dict[str, str]:
    """KJV -> ASV pairs as line-aligned user files: Genesis for training, Ruth for validation,
    Jonah for test; each split is named "source.txt|target.txt" as a config expects."""
    root = tmp_path_factory.mktemp("pairs")
    splits = {"train": "Genesis 1:1-50:26", "validation": "Ruth 1:1-4:22", "test": "Jonah 1:1-4:11"}
    paths = {"data_dir": str(root / "data")}
    for split, reference in splits.items():
        pairs = verse_pairs(reference)
        for side, index in (("kjv", 0), ("asv", 1)):
            (root / f"{split}.{side}").write_text(
                "".join(p[index] + "\n" for p in pairs), encoding="utf-8")
        paths[split] = f"{root / f'{split}.kjv'}|{root / f'{split}.asv'}"
    return paths


def tiny_s2s_overrides(corpus: dict[str, str], model: str = "s2s_transformer", **extra) -> list[str]:
    """Overrides that turn configs/s2s_<kind>.py:tiny into a seconds-long run on pair files."""
    values = {
        "data.corpus": "text",
        "data.files.train": corpus["train"],
        "data.files.validation": corpus["validation"],
        "data.files.test": corpus["test"],
        "data.data_dir": corpus["data_dir"],
        "data.max_length": 48,
        "data.seq_len": 48,
        "model.max_len": 48,
        "tokenizer.vocab_size": 512,
        "model.emb_dim": 32,
        "model.hidden_dim": 32,
        "model.num_layers": 1,
        "model.num_encoder_layers": 1,
        "model.num_heads": 2,
        "model.mlp_dim": 64,
        "train.steps": 30,
        "train.batch_size": 8,
        "train.log_every": 10,
        "train.eval_every": 0,
        "train.checkpoint_every": 30,
        "optimizer.warmup_steps": 5,
        "decode.batch_size": 16,
        "decode.beam_size": 2,
    }
    values.update(extra)
    return [f"--config.{k}={v}" for k, v in values.items()]


def tiny_lm_spec(model: str) -> str:
    """The tiny config of an LM: configs/lm_transformer.py:tiny or configs/lm_rnn.py:<cell>,tiny."""
    if model == "transformer":
        return "configs/lm_transformer.py:tiny"
    return f"configs/lm_rnn.py:{model},tiny"


def tiny_lm_overrides(corpus: dict[str, str], model: str = "transformer", **extra) -> list[str]:
    """Overrides that turn `tiny_lm_spec(model)` into a seconds-long run on the text files."""
    values = {
        "data.corpus": "text",
        "data.files.train": corpus["train"],
        "data.files.validation": corpus["validation"],
        "data.files.test": corpus["test"],
        "data.data_dir": corpus["data_dir"],
        "data.seq_len": 32,
        "data.max_length": 32,
        "model.max_len": 32,
        "tokenizer.vocab_size": 512,
        "model.emb_dim": 32,
        "model.hidden_dim": 32,
        "model.num_layers": 2,
        "model.num_heads": 2,
        "model.mlp_dim": 64,
        "train.steps": 40,
        "train.batch_size": 8,
        "train.log_every": 5,
        "train.eval_every": 0,
        "train.checkpoint_every": 20,
        "optimizer.warmup_steps": 5,
    }
    values.update(extra)
    return [f"--config.{k}={v}" for k, v in values.items()]


def run_cli(args: list[str], env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Runs `lmfuse ...` in a fresh interpreter, as a user would."""
    full_env = {**os.environ, "PYTHONHASHSEED": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lmfuse.cli", *args], cwd=REPO, env=full_env,
        capture_output=True, text=True, **kwargs,
    )
