"""lmfuse commands keep their compiled programs on disk (`lmfuse/cli/compilation_cache.py`): a
second `lmfuse translate` on the same model loads beam search instead of compiling it and
writes the same output; `off` turns it off; a damaged entry is compiled again, not a crash."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli, tiny_s2s_overrides

from lmfuse.cli import compilation_cache

HIT = "Persistent compilation cache hit for 'jit__beam_search'"


@pytest.fixture(scope="module")
def workdir(pair_corpus, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("s2s")
    overrides = tiny_s2s_overrides(pair_corpus, **{"train.steps": 2, "train.checkpoint_every": 2})
    result = run_cli(["train", "--config", "configs/s2s_transformer.py:tiny", "--workdir",
                      str(workdir), "--no_progress", *overrides])
    assert result.returncode == 0, result.stderr
    return workdir


def translate(workdir: Path, output: Path, cache: str, **env: str):
    result = run_cli(["translate", "--workdir", str(workdir), "--split", "test", "--sample", "8",
                      "--beam", "2", "--max_len", "8", "--output", str(output)],
                     env={"LMFUSE_COMPILATION_CACHE": cache, "JAX_LOG_COMPILES": "1",
                          "JAX_COMPILATION_CACHE_DIR": "", **env})
    assert result.returncode == 0, result.stderr
    return result.stderr, output.read_text(encoding="utf-8")


def test_a_second_run_loads_beam_search_and_decodes_the_same(workdir, tmp_path):
    cache = tmp_path / "cache"
    first_log, first = translate(workdir, tmp_path / "first.txt", str(cache))
    assert HIT not in first_log
    assert any(p.name.startswith("jit__beam_search") for p in cache.iterdir())
    second_log, second = translate(workdir, tmp_path / "second.txt", str(cache))
    assert HIT in second_log
    assert second == first and len(first.splitlines()) == 8


def test_off_compiles_every_time_and_writes_nothing(workdir, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    translate(workdir, tmp_path / "first.txt", "off", HOME=str(home))
    log, _ = translate(workdir, tmp_path / "second.txt", "off", HOME=str(home))
    assert HIT not in log and not any(home.rglob("*"))


def test_a_damaged_entry_is_compiled_again(workdir, tmp_path):
    cache = tmp_path / "cache"
    _, first = translate(workdir, tmp_path / "first.txt", str(cache))
    entries = [p for p in cache.iterdir() if p.name.startswith("jit__beam_search")]
    assert entries
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[:100])  # a write cut short
    log, second = translate(workdir, tmp_path / "second.txt", str(cache))
    assert second == first
    assert "Error reading persistent compilation cache entry" in log  # JAX's one-line warning
    assert "Traceback" not in log


@pytest.mark.parametrize("environment, expected", [
    ({}, str(Path("~/.cache/lmfuse/jax").expanduser())),
    ({"LMFUSE_COMPILATION_CACHE": "/somewhere/jax"}, "/somewhere/jax"),
    ({"LMFUSE_COMPILATION_CACHE": "off"}, None),
    ({"LMFUSE_COMPILATION_CACHE": "0"}, None),
    ({"JAX_COMPILATION_CACHE_DIR": "/jax/own"}, None),  # JAX reads its own variable
])
def test_the_cache_directory_follows_the_environment(monkeypatch, environment, expected):
    for name in ("LMFUSE_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert compilation_cache.cache_dir() == expected
