"""Saving and loading trained params (``run.py --save_params``): msgpack, written atomically.

The file is ``flax.serialization.msgpack_serialize`` of the params as nested dicts of numpy
arrays, so ``load_params`` needs no target tree: it returns the same nested dict
({"featurizer": ..., "classifier": {"kernel", "bias"}}), ready for ``Model.features``.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import serialization

from hjax.errors import ConfigError
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


class ParamsFileError(ConfigError):
    """A params file that cannot be used, in one line naming the file and why."""


def load_params(path: str):
    """The nested dict of arrays saved at ``path``; :class:`ParamsFileError` (one line naming
    the file) when it cannot be read or is not a msgpack'd nested dict of arrays."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ParamsFileError(f"{path}: cannot be read ({e.strerror or type(e).__name__})"
                              ) from None
    try:
        params = serialization.msgpack_restore(raw)
    except Exception as e:   # msgpack raises ValueError, ExtraData, TypeError, ... on damage
        raise ParamsFileError(f"{path}: corrupt or not a params file "
                              f"({' '.join(str(e).split())[:100] or type(e).__name__})") from None
    if not isinstance(params, dict) or not params or not all(
            isinstance(leaf, np.ndarray) for leaf in jax.tree_util.tree_leaves(params)):
        raise ParamsFileError(f"{path}: not a params file (expected a nested dict of arrays, "
                              f"found {type(params).__name__})")
    return params


def params_filename(restart: int) -> str:
    return f"params_restart{restart}.msgpack"
