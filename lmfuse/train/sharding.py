"""Mesh and logical-axis sharding, in one place.

Models name the axes of every parameter and key activation ('batch', 'embed', 'mlp', ...).
`LOGICAL_AXIS_RULES` maps those names to the three mesh axes:

* `data`:   pure data parallelism (parameters replicated);
* `fsdp`:   data parallelism whose parameters and optimizer state are sharded (ZeRO-3 style);
* `tensor`: tensor (model) parallelism over heads, MLP width and vocabulary.

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
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lmfuse.errors import LmfuseError

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes. Order matters only for readability; each logical name appears once.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("hidden", "tensor"),
    ("gates", None),
    ("layers", None),
)




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
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


@contextlib.contextmanager
def activate(mesh: Mesh):
    """Makes `mesh` and the rules current, so the models' activation constraints take effect."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        yield mesh


def logical_to_sharding(logical_specs, mesh: Mesh):
    """Maps a pytree of logical PartitionSpecs to NamedShardings on `mesh`."""
    mesh_specs = nn.logical_to_mesh(logical_specs, LOGICAL_AXIS_RULES)
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, spec),
        mesh_specs,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches are split along 'batch' (data x fsdp) and replicated over 'tensor'."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch", None), LOGICAL_AXIS_RULES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's rows into global arrays sharded along the batch axis."""
    sharding = batch_sharding(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, value)
        for key, value in local_batch.items()
    }
