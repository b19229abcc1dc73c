"""Data parallelism: one mesh axis ``data`` over devices (and hosts), examples sharded on it.

Arrays built here are global ``jax.Array``s made with ``make_array_from_callback``: every
process holds the same full host copy (the data are generated deterministically from the
seed) and contributes only its addressable shards, so the same code runs on one CPU, one
GPU, or many hosts after ``jax.distributed.initialize()``. ``jit`` then partitions the step
(GSPMD): per-domain sums over examples become all-reduces over the ``data`` axis.
"""

from __future__ import annotations

import numpy as np
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if not 1 <= num_devices <= len(devices):
        raise ValueError(f"num_devices={num_devices} is not available; this process sees "
                         f"{len(devices)} device(s) ({devices[0].platform})")
    return Mesh(np.asarray(devices[:num_devices]), (DATA_AXIS,))


def _put(mesh: Mesh, host: np.ndarray, spec: P) -> jax.Array:
    sharding = NamedSharding(mesh, spec)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard_examples(mesh: Mesh, tree, axis: int = 1):
    """Put host arrays on the mesh, split along ``axis`` (the example axis of [E, n, ...])."""
    def put(x):
        x = np.asarray(x)
        spec = P(*([None] * axis + [DATA_AXIS]))
        return _put(mesh, x, spec)
    return jax.tree_util.tree_map(put, tree)


def replicate(mesh: Mesh, tree):
    """Replicate a pytree on every device of the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def pad_to_multiple(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
