"""`split_examples` keeps each pair with its own id when the corpus filters examples out
(a verse missing from one version is None in the Bible's translate view)."""

from __future__ import annotations

import types

import grain
import ml_collections

from lmfuse.data import corpora
from lmfuse.evaluate.translation import split_examples


def test_ids_stay_aligned_past_filtered_examples(monkeypatch):
    rows = [{"source": "a", "target": "A"}, None, {"source": "c", "target": "C"}, None,
            {"source": "e", "target": "E"}]
    dataset = grain.MapDataset.source(rows)
    assert sum(1 for _ in dataset) == 3  # iterating skips the Nones: ids would shift
    monkeypatch.setattr(corpora, "example_ids", lambda config, split: ["v1", "v2", "v3", "v4",
                                                                        "v5"])
    monkeypatch.setattr(corpora, "load_examples",
                        lambda config, split, in_memory=False: types.SimpleNamespace(dataset=dataset))
    config = ml_collections.ConfigDict({"data": {"view": "translate"}})
    ids, sources, references = split_examples(config, "test")
    assert ids == ["v1", "v3", "v5"]
    assert sources == ["a", "c", "e"] and references == ["A", "C", "E"]
