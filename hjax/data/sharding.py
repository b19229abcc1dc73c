"""Data parallelism: one mesh axis ``data`` over devices (and hosts), examples sharded on it.

Arrays built here are global ``jax.Array``s: every process holds the same full host copy
(the data are generated deterministically from the seed) and contributes only its
addressable shards (``make_array_from_callback``; within one process, the plain
``device_put``), so the same code runs on one CPU, one GPU, or many processes after
``jax.distributed.initialize()``. ``jit`` then partitions the step (GSPMD): per-domain sums
over examples become all-reduces over the ``data`` axis."""

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


def make_process_mesh() -> Mesh:
    """A mesh of one device per process (each process's first): what a program that is not
    split over devices runs on in a multi-process run (every process steps its own copy)."""
    firsts = {}
    for d in jax.devices():
        firsts.setdefault(d.process_index, d)
    return Mesh(np.asarray([firsts[p] for p in sorted(firsts)]), (DATA_AXIS,))


def put(host, sharding: NamedSharding) -> jax.Array:
    """A host array (the same on every process) as a global array of ``sharding``: each
    process contributes its addressable shards (``device_put`` onto a sharding that spans
    other processes' devices is refused)."""
    if sharding.is_fully_addressable:        # one process: the direct, asynchronous copy
        return jax.device_put(host, sharding)
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard_examples(mesh: Mesh, tree, axis: int = 1):
    """Put host arrays on the mesh, split along ``axis`` (the example axis of [E, n, ...])."""
    sharding = NamedSharding(mesh, P(*([None] * axis + [DATA_AXIS])))
    return jax.tree_util.tree_map(lambda x: put(np.asarray(x), sharding), tree)


def _replicate_leaf(mesh: Mesh, x):
    if not isinstance(x, (jax.Array, np.ndarray)):
        return x                    # Python numbers (a split's size) stay on the host
    sharding = NamedSharding(mesh, P())
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        # Typed PRNG keys have no host form: their raw data travel, the key type is kept.
        return jax.random.wrap_key_data(_replicate_leaf(mesh, jax.random.key_data(x)),
                                        impl=jax.random.key_impl(x))
    return put(np.asarray(jax.device_get(x)), sharding)


def replicate(mesh: Mesh, tree):
    """Replicate a pytree on every device of the mesh. In a multi-process run every process
    must pass the same values (each builds them alike: same seeds, same data)."""
    return jax.tree_util.tree_map(lambda x: _replicate_leaf(mesh, x), tree)


def local_replica(tree):
    """This process's copy of replicated arrays that span processes (no computation, no
    copy), for process-local work on them (evaluation, host copies); other leaves as they
    are."""
    def local(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if not x.is_fully_replicated:
                raise ValueError(f"an array sharded as {x.sharding} has no local copy")
            return x.addressable_data(0)
        return x
    return jax.tree_util.tree_map(local, tree)


def pad_to_multiple(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
