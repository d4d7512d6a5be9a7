"""The notebooks in notebooks/ are committed with the outputs of the `make demo` workdirs
(`make notebooks`), and run top to bottom in a fresh python3 kernel on tiny workdirs, where
what they report holds: the LM's parameter count and decoding outputs, attention maps whose rows
are distributions over the source, deep-fusion gates in (0, 1), one sweep point per λ.

Each notebook reads its workdirs from LMFUSE_*_WORKDIR and writes its figures and a JSON
summary to LMFUSE_NOTEBOOK_OUT; the tests read those back.

The workdirs are real checkpoints of tiny models in the layout `lmfuse train` writes (config,
tokenizer reference, train state, data-iterator state) on the real-text fixtures, holding
random weights: compiling four train steps would triple this module's time (about a minute
now), and the notebooks read nothing that training adds. `tests/train` covers the workdirs
`lmfuse train` itself leaves.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import nbformat
import numpy as np
import pytest
from conftest import REPO, tiny_lm_overrides, tiny_s2s_overrides
from nbclient import NotebookClient

from lmfuse.config import load_config
from lmfuse.data import corpora
from lmfuse.data.pipeline import PipelineOptions, make_dataset
from lmfuse.train import checkpoint
from lmfuse.train.trainer import build_trainer, tokenizer_ref
from lmfuse.train.workdir import load_model

NOTEBOOKS = REPO / "notebooks"
NAMES = ("01_inspect_lm", "02_attention", "03_fusion")
CELL_TIMEOUT = 180  # seconds per cell: compiles on a busy 2-core machine
MAX_LENGTH = 48  # tokens per source / target (tiny_s2s_overrides); the LM holds as many


def write_workdir(workdir: Path, config, seed: int, base_params: dict | None = None) -> int:
    """A workdir as `lmfuse train` leaves it, at step 1, with random weights (a fused model's
    bases come from `base_params`, as fused training loads them). Returns its parameter count."""
    tokenizer = corpora.prepare(config)
    trainer = build_trainer(config, tokenizer)
    state = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), trainer.abstract_state)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: (0.3 * rng.standard_normal(x.shape)).astype(x.dtype),
                          state.params)
    params.update(base_params or {})
    iterator = iter(make_dataset(corpora.load_examples(config, "train").dataset, tokenizer,
                                 PipelineOptions.from_config(config, "train")))
    manager = checkpoint.make_manager(workdir)
    checkpoint.save(manager, 1, state.replace(params=params), iterator, trainer.config,
                    tokenizer_ref(tokenizer), force=True)
    manager.wait_until_finished()
    manager.close()
    return trainer.num_params


@pytest.fixture(scope="module")
def workdirs(pair_corpus, tmp_path_factory) -> dict:
    """An LM, a Transformer and an RNN encoder-decoder, and a deep fusion of the first two,
    all on one tokenizer; their paths, and the LM's parameter count."""
    root = tmp_path_factory.mktemp("notebook_workdirs")
    # The LM reads both sides of the training pairs, interleaved as the tokenizer reads a
    # translate view: the same training text, so the same tokenizer as the encoder-decoders
    # (decode-time and trained fusion refuse two vocabularies).
    lm_files = {"data_dir": pair_corpus["data_dir"]}
    for split in ("train", "validation", "test"):
        sources, targets = (Path(p).read_text(encoding="utf-8").splitlines()
                            for p in pair_corpus[split].split("|"))
        path = root / f"{split}.pairs.txt"
        path.write_text("".join(f"{s}\n{t}\n" for s, t in zip(sources, targets, strict=True)),
                        encoding="utf-8")
        lm_files[split] = str(path)
    lengths = {"data.seq_len": MAX_LENGTH, "data.max_length": MAX_LENGTH,
               "model.max_len": MAX_LENGTH}
    paths = {name: root / name for name in ("lm", "s2s", "rnn", "fused")}
    lm_config = load_config("configs/lm_transformer.py:tiny",
                            tiny_lm_overrides(lm_files, **lengths))
    # With a copy output, as the demo's encoder-decoder and its deep fusion have.
    s2s = [*tiny_s2s_overrides(pair_corpus), "--config.model.copy_source=True"]
    s2s_config = load_config("configs/fusion.py:deep,tiny", [*s2s, "--config.fusion.method="])
    assert corpora.prepare(lm_config).sha256 == corpora.prepare(s2s_config).sha256
    lm_params = write_workdir(paths["lm"], lm_config, seed=1)
    write_workdir(paths["s2s"], s2s_config, seed=2)
    write_workdir(paths["rnn"], load_config("configs/s2s_rnn.py:tiny", s2s), seed=3)
    fused_config = load_config("configs/fusion.py:deep,tiny", [
        *s2s, f"--config.fusion.lm_workdir={paths['lm']}",
        f"--config.fusion.s2s_workdir={paths['s2s']}"])
    bases = {name: load_model(paths[name])[1] for name in ("lm", "s2s")}
    write_workdir(paths["fused"], fused_config, seed=4, base_params=bases)
    return {**paths, "lm_params": lm_params}


@pytest.fixture
def run_notebook(workdirs, tmp_path, monkeypatch):
    """Executes a notebook in a fresh kernel (which inherits this environment) from the
    notebooks/ directory, as Jupyter does; returns the executed notebook and its output dir."""
    out = tmp_path / "out"
    for name in ("lm", "s2s", "rnn", "fused"):
        monkeypatch.setenv(f"LMFUSE_{name.upper()}_WORKDIR", str(workdirs[name]))
    monkeypatch.setenv("LMFUSE_NOTEBOOK_OUT", str(out))
    # Tiny models: compile time dominates, and LLVM's optimisation level only changes speed.
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")

    def run(name: str):
        notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
        errors = [o for c in notebook.cells for o in c.get("outputs", [])
                  if o.output_type == "error"]
        assert not errors, errors
        return notebook, out

    return run


def read_json(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.json").read_text())


def assert_figures(out: Path, *names: str) -> None:
    for name in names:
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_are_committed_with_the_outputs_of_the_demo_workdirs(name):
    """`make notebooks` runs them against what `make demo` trains and stores the outputs: every
    code cell ran, in order, without an error; the text names the demo's workdirs and each
    notebook shows at least one figure. The first cell says what the notebook needs."""
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    first = notebook.cells[0]
    assert first.cell_type == "markdown" and "make demo" in first.source
    assert "LMFUSE_" in first.source and "_WORKDIR" in first.source
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    outputs = [output for cell in code for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "workdirs/demo/" in text
    assert not any(marker in text for marker in ("/home/", "/tmp/", "/root/"))  # relative paths
    assert any("image/png" in o.get("data", {}) for o in outputs)


def test_inspect_lm_reports_the_parameters_samples_and_next_token_distribution(
    run_notebook, workdirs
):
    _, out = run_notebook("01_inspect_lm")
    summary = read_json(out, "01_inspect_lm")
    assert summary["parameters"] == workdirs["lm_params"] == sum(
        summary["parameters_by_module"].values())
    assert set(summary["samples"]) == {"greedy", "temperature 0.8", "top-k 20", "top-p 0.9"}
    texts = [t for rows in summary["samples"].values() for t in rows] + summary["beam"]["texts"]
    assert all(t.startswith("And God said") for t in texts)
    scores = summary["beam"]["scores"]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True)
    top = summary["next_token"]
    probs = np.asarray(top["probs"])
    assert len(top["ids"]) == len(set(top["ids"])) == len(top["pieces"]) == 20
    assert (np.diff(probs) <= 0).all() and probs.sum() <= 1 + 1e-6 and probs.min() > 0
    # Greedy decoding takes the argmax of the same next-token distribution.
    assert summary["greedy_first_token"] == top["ids"][0]
    assert_figures(out, "01_next_token")


def test_attention_maps_are_distributions_over_the_source_tokens(run_notebook):
    _, out = run_notebook("02_attention")
    summary = read_json(out, "02_attention")
    for name, (layers, heads) in {"transformer": (1, 2), "rnn": (1, 1)}.items():
        found = summary[name]
        weights = np.load(out / f"02_attention_{name}.npy")
        target, source = found["target_labels"], found["source_labels"]
        assert weights.shape == (layers, heads, len(target), len(source)) == tuple(found["shape"])
        assert source[-1] == target[-1] == "</s>"  # rows end with EOS, as in training
        assert (weights >= 0).all()
        np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
    assert summary["rnn"]["model"] == "s2s_rnn"
    assert_figures(out, "02_attention_heads", "02_attention_mean", "02_attention_rnn")


def test_fusion_notebook_plots_deep_fusion_gates_and_one_sweep_point_per_weight(run_notebook):
    _, out = run_notebook("03_fusion")
    summary = read_json(out, "03_fusion")
    gates = np.load(out / "03_gates.npy")
    assert summary["gates"]["method"] == "deep"
    assert gates.ndim == 2 and list(gates.shape) == summary["gates"]["shape"]
    inside = gates[gates != 0]  # padded target positions are 0
    assert inside.size == summary["gates"]["target_tokens"] > 0
    assert ((inside > 0) & (inside < 1)).all()
    assert inside.std() > 0  # the gate follows the LM state along the verse
    weights = [point["lm_weight"] for point in summary["sweep"]]
    assert len(weights) == len(set(weights)) >= 4 and weights == sorted(weights)
    assert weights[0] == 0.0  # the plain encoder-decoder is the sweep's first point
    for point in summary["sweep"]:
        assert 0 <= point["bleu"] <= 100 and 0 <= point["chrf"] <= 100
    assert_figures(out, "03_gates", "03_sweep")
