"""The rules table maps logical axes to mesh axes the same way in any order.

Flax gives each mesh axis to the first rule that claims it, so a table in which one name
stood for both a parameter axis and an activation axis, or in which two axes of one array
competed for a mesh axis, would shard differently when reordered. Checked here for every
parameter and every constrained activation of every model family (fused models included),
under the default rules and reversed and shuffled copies of them.
"""

from __future__ import annotations

import random

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from lmfuse.models import build_model
from lmfuse.models.fusion import METHODS
from lmfuse.models.layers import ACTIVATION_PREFIX, LOGICAL_AXES
from lmfuse.schema import mesh_config
from lmfuse.train import sharding

VOCAB = 64
SMALL = {"emb_dim": 16, "hidden_dim": 16, "num_layers": 2, "num_heads": 2, "mlp_dim": 32,
         "max_len": 16}
FUSION_METHODS = METHODS  # every trained method


def default_rules() -> sharding.Rules:
    return sharding.rules_from_config(mesh_config())


def reorderings(rules: sharding.Rules) -> list[sharding.Rules]:
    shuffled = []
    for seed in range(6):
        copy = list(rules)
        random.Random(seed).shuffle(copy)
        shuffled.append(tuple(copy))
    return [tuple(reversed(rules)), *shuffled]


def model_cases():
    for name, extra in (("transformer", {}), ("transformer", {"scan_layers": True}),
                        ("rnn", {}), ("lstm", {}), ("gru", {}), ("masked_lm", {}),
                        ("s2s_transformer", {"copy_source": True}),
                        ("s2s_transformer", {"scan_layers": True}),
                        ("s2s_rnn", {"copy_source": True})):
        yield f"{name}{extra}", {"name": name, **SMALL, **extra}, None
    for backbone, lm in (("s2s_transformer", "transformer"), ("s2s_rnn", "lstm")):
        for method in FUSION_METHODS:
            fusion = {"method": method, "cold_dim": 8, "weights_kind": "context",
                      "lm_model": {"name": lm, **SMALL}}
            yield f"{backbone}+{method}", {"name": backbone, **SMALL}, fusion


def logical_specs(model_cfg: dict, fusion: dict | None, monkeypatch) -> tuple:
    """(the params' logical PartitionSpecs, the logical axes of every constrained activation
    of a forward pass)."""
    model = build_model(model_cfg, VOCAB, fusion)
    ids = jnp.ones((1, 8), jnp.int32)
    args = (ids,) if model_cfg["name"] in ("transformer", "rnn", "lstm", "gru", "masked_lm") else (ids, ids)
    activations = set()
    constrain = nn.with_logical_constraint

    def recording(x, axes, *a, **k):
        activations.add(tuple(axes))
        return constrain(x, axes, *a, **k)

    monkeypatch.setattr(nn, "with_logical_constraint", recording)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *args)["params"])
    return nn.get_partition_spec(boxed), activations


def test_default_rules_name_every_axis_once_and_keep_activations_apart():
    names = [name for name, _ in default_rules()]
    assert len(names) == len(set(names))
    params = {n for n in names if not n.startswith(ACTIVATION_PREFIX)}
    activations = {n[len(ACTIVATION_PREFIX):] for n in names if n.startswith(ACTIVATION_PREFIX)}
    # Every logical name has an activation rule; every one a parameter can carry, a parameter
    # rule (no parameter has a batch or length axis).
    assert activations == set(LOGICAL_AXES) - {"layers"}
    assert params == set(LOGICAL_AXES) - {"batch", "length"}


@pytest.mark.parametrize("case", list(model_cases()), ids=lambda c: c[0])
def test_shardings_do_not_depend_on_rule_order(case, monkeypatch):
    _, model_cfg, fusion = case
    specs, activations = logical_specs(model_cfg, fusion, monkeypatch)
    assert activations and all(a is None or a.startswith(ACTIVATION_PREFIX)
                               for axes in activations for a in axes)
    rules = default_rules()
    used = {axis for spec in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
            for axis in spec if axis is not None}
    assert used <= {name for name, _ in rules}, "a parameter axis has no rule"
    expected = nn.logical_to_mesh(specs, rules)
    expected_activations = {axes: nn.logical_to_mesh_axes(axes, rules) for axes in activations}
    for reordered in reorderings(rules):
        assert nn.logical_to_mesh(specs, reordered) == expected
        assert {a: nn.logical_to_mesh_axes(a, reordered) for a in activations} == expected_activations


def test_batch_is_split_over_data_and_fsdp_and_activation_embed_is_replicated():
    rules = dict(default_rules())
    assert rules["activation_batch"] == ("data", "fsdp")
    assert rules["activation_embed"] is None and rules["embed"] == "fsdp"


def test_a_table_sharing_names_between_params_and_activations_would_depend_on_order():
    """What the separate names prevent: with one 'embed' for both, the activation's embed axis
    is replicated only while 'batch' comes first (it claims fsdp before 'embed' can)."""
    shared = (("batch", ("data", "fsdp")), ("embed", "fsdp"))
    activation = ("batch", "length", "embed")
    assert nn.logical_to_mesh_axes(activation, shared) == jax.sharding.PartitionSpec(
        ("data", "fsdp"), None, None)
    assert nn.logical_to_mesh_axes(activation, shared[::-1]) != nn.logical_to_mesh_axes(
        activation, shared)
