"""Shared fixtures: a small real-text corpus and tiny training configs built on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def asv_verses(reference: str) -> list[str]:
    """Real text: ASV verses (aligned as shipped) through pythonbible's own API."""
    import pythonbible as bible

    ids = bible.convert_references_to_verse_ids(bible.get_references(reference))
    texts = (bible.get_verse_text(v, version=bible.Version.AMERICAN_STANDARD) for v in ids)
    return [t for t in texts if t]


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


def tiny_lm_overrides(corpus: dict[str, str], model: str = "transformer", **extra) -> list[str]:
    """Overrides that turn configs/lm_<model>.py:tiny into a seconds-long run on the text files."""
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
