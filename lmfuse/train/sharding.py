"""Mesh and logical-axis sharding, in one place.

Models name the axes of every parameter ('embed', 'mlp', ...) and key activation
('activation_batch', 'activation_embed', ...; `lmfuse.models.layers`). The rules table,
`config.mesh.rules`, maps each name to mesh axes, a comma list ('' = replicated):

* `data`:   pure data parallelism (parameters replicated);
* `fsdp`:   data parallelism whose parameters and optimizer state are sharded (ZeRO-3 style);
* `tensor`: tensor (model) parallelism over heads, MLP width and vocabulary.

Flax gives each mesh axis to the first rule that claims it, so a table where one name meant
both a parameter axis and an activation axis would depend on its order; with separate
activation names every name appears once and no two names of one array share a mesh axis, so
any order gives the same shardings (tests/train/test_sharding.py checks that).

The same code runs on one CPU, on 8 simulated CPU devices, and on a multi-host pod after
`jax.distributed.initialize()`: only the mesh sizes in the config change.
"""

from __future__ import annotations

import contextlib
import math

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from lmfuse.errors import LmfuseError

MESH_AXES = ("data", "fsdp", "tensor")
Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


def rules_from_config(mesh_cfg: ml_collections.ConfigDict) -> Rules:
    """`mesh.rules` ({logical name: 'axis,axis' or ''}) as Flax's rules table."""
    rules = []
    for name, value in mesh_cfg.rules.items():
        axes = tuple(a.strip() for a in str(value).split(",") if a.strip())
        unknown = [a for a in axes if a not in MESH_AXES]
        if unknown:
            raise LmfuseError(
                f"mesh.rules.{name}={value!r} names {unknown[0]!r}, not a mesh axis; use a comma "
                f"list of {', '.join(MESH_AXES)}, or '' to replicate"
            )
        # One axis as its name, as Flax's own tables write it; several as a tuple.
        rules.append((name, axes[0] if len(axes) == 1 else axes or None))
    return tuple(rules)


def mesh_shape(mesh_cfg: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int, int]:
    sizes = [int(mesh_cfg[axis]) for axis in MESH_AXES]
    fills = [i for i, size in enumerate(sizes) if size == -1]
    if len(fills) > 1:
        raise LmfuseError("at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
    if any(size == 0 or size < -1 for size in sizes):
        raise LmfuseError(f"mesh sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes, strict=True))}")
    known = math.prod(size for size in sizes if size != -1)
    if fills:
        if num_devices % known:
            raise LmfuseError(f"{num_devices} devices cannot be split by fixed mesh axes of size {known}")
        sizes[fills[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise LmfuseError(
            f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} needs {math.prod(sizes)} devices, "
            f"but {num_devices} are available; use -1 for one axis to fill"
        )
    return tuple(sizes)


def make_mesh(mesh_cfg: ml_collections.ConfigDict, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(mesh_cfg, len(devices))
    # Auto axes: shardings come from the rules and jit's in/out shardings, as before explicit
    # sharding existed.
    return jax.make_mesh(shape, MESH_AXES, devices=devices, axis_types=(AxisType.Auto,) * 3)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Rules):
    """Makes `mesh` and the rules current, so the models' activation constraints take effect."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield mesh


def logical_to_sharding(logical_specs, mesh: Mesh, rules: Rules):
    """Maps a pytree of logical PartitionSpecs to NamedShardings on `mesh`."""
    mesh_specs = nn.logical_to_mesh(logical_specs, rules)
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, spec),
        mesh_specs,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    """Batches are split as the rules split 'activation_batch' (data x fsdp by default)."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(("activation_batch", None), rules))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh, rules: Rules
                 ) -> dict[str, jax.Array]:
    """Assembles each process's rows into global arrays sharded along the batch axis."""
    sharding = batch_sharding(mesh, rules)
    return {
        key: jax.make_array_from_process_local_data(sharding, value)
        for key, value in local_batch.items()
    }
