"""Saving and loading trained params (``run.py --save_params``): msgpack, written atomically.

The file is ``flax.serialization.msgpack_serialize`` of the params as nested dicts of numpy
arrays, so ``load_params`` needs no target tree: it returns the same nested dict
({"featurizer": ..., "classifier": {"kernel", "bias"}}), ready for ``Model.features``.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import serialization

from hjax.io.results import write_atomic


def _host(x) -> np.ndarray:
    """A host copy; replicated arrays that span processes are read from a local shard."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def to_host(params):
    return jax.tree_util.tree_map(_host, params)


def save_params(path: str, params) -> None:
    write_atomic(path, serialization.msgpack_serialize(to_host(params)))


def load_params(path: str):
    with open(path, "rb") as f:
        return serialization.msgpack_restore(f.read())


def params_filename(restart: int) -> str:
    return f"params_restart{restart}.msgpack"
