"""A leading member axis: the trials or restarts of one program, stacked. A single run is a
group of one, and a group of one runs the unbatched program (:func:`over_members`), so it
costs what a single run costs."""

from __future__ import annotations

from typing import Callable, Sequence

import functools

import jax
import jax.numpy as jnp


def stack(trees: Sequence):
    """Pytrees of equal structure -> one pytree with a new leading axis."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def member(tree, i: int):
    """Member ``i`` of a stacked pytree."""
    return jax.tree_util.tree_map(lambda x: x[i], tree)


def over_members(fn: Callable, size: int, in_axes) -> Callable:
    """``fn`` mapped over the leading member axis of the arguments whose ``in_axes`` entry
    is 0 (None: shared). ``size == 1`` drops the axis and runs ``fn`` itself (no batching
    rule in the program: the same program as a single run), else ``jax.vmap``."""
    if size > 1:
        return jax.vmap(fn, in_axes=in_axes)

    @functools.wraps(fn)           # the program keeps fn's name (profiles, compile logs)
    def single(*args):
        squeezed = [a if ax is None else jax.tree_util.tree_map(lambda x: x[0], a)
                    for a, ax in zip(args, in_axes)]
        return jax.tree_util.tree_map(lambda x: x[None], fn(*squeezed))

    return single
