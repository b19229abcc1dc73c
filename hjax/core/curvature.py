"""Curvature primitives over pytrees: Hessian-vector products, Hutchinson and exact diagonals.

Everything here is a pure function of a scalar function ``f(params)`` and a params pytree,
with no Flax inside, so that it composes with ``jit``, ``vmap`` and ``grad``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

PyTree = Any

# Budget (in probe-tangent elements) for one vmapped chunk of probes: 300 probes on a
# 700,000-parameter head would otherwise hold 300 full copies of the head at once.
_PROBE_ELEMENTS_PER_CHUNK = 1 << 24


def hvp(f: Callable[[PyTree], jax.Array], params: PyTree, v: PyTree) -> PyTree:
    """Hessian-vector product H(params) v of scalar ``f``, forward-over-reverse."""
    return jax.jvp(jax.grad(f), (params,), (v,))[1]


def grad_and_hvp(f, params, v):
    """(grad f(params), H(params) v) from one forward-over-reverse pass."""
    return jax.jvp(jax.grad(f), (params,), (v,))


def rademacher_like(key: jax.Array, params: PyTree) -> PyTree:
    """One Rademacher (+-1) probe with the structure, shapes and dtypes of ``params``.

    Each sign takes one random bit (32 signs per uint32 draw): jax.random.rademacher draws a
    whole float per sign, which made probe generation the largest cost of Hutchinson on
    large heads.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    sizes = [math.prod(jnp.shape(x)) for x in leaves]
    words = jax.random.bits(key, (-(-sum(sizes) // 32),), jnp.uint32)
    bits = (words[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
    signs = bits.reshape(-1)
    probes, start = [], 0
    for x, size in zip(leaves, sizes):
        dtype = jnp.result_type(x)
        chunk = signs[start:start + size].astype(dtype)
        probes.append((1 - 2 * chunk).reshape(jnp.shape(x)))
        start += size
    return jax.tree_util.tree_unflatten(treedef, probes)


def hutchinson_probe(key: jax.Array, index, params: PyTree) -> PyTree:
    """Probe ``index`` of the Hutchinson estimate keyed by ``key``.

    Every route (HVPs, dense head Hessian, Frobenius diagnostics) draws its probes here, so
    the same key gives the same probes, and so the same estimate, whichever route runs.
    """
    return rademacher_like(jax.random.fold_in(key, index), params)


def _num_params(params: PyTree) -> int:
    return sum(math.prod(jnp.shape(x)) for x in jax.tree_util.tree_leaves(params))


def default_chunk_size(params: PyTree, num_probes: int) -> int:
    """Probes per vmapped chunk so that one chunk holds at most ~16M tangent elements."""
    return int(max(1, min(num_probes, _PROBE_ELEMENTS_PER_CHUNK // max(1, _num_params(params)))))


def _chunked_sum(fn: Callable[[jax.Array], PyTree], n: int, chunk_size: int) -> PyTree:
    """sum_{i<n} fn(i), evaluated as lax.map over chunks of vmapped indices.

    The remainder (n % chunk_size) is one extra vmapped call, so no work is wasted on padding.
    """
    chunk_size = max(1, min(int(chunk_size), n))
    n_full, rem = divmod(n, chunk_size)
    batched = jax.vmap(fn)

    def chunk_sum(idx):
        return jax.tree_util.tree_map(lambda x: jnp.sum(x, axis=0), batched(idx))

    total = None
    if n_full:
        idx = jnp.arange(n_full * chunk_size).reshape(n_full, chunk_size)
        if n_full == 1:
            total = chunk_sum(idx[0])
        else:
            # Rematerialize each chunk in the backward pass: otherwise reverse mode through
            # lax.map keeps every chunk's residuals (O(n P) again) and chunking saves nothing.
            sums = jax.lax.map(jax.checkpoint(chunk_sum), idx)
            total = jax.tree_util.tree_map(lambda x: jnp.sum(x, axis=0), sums)
    if rem:
        r = chunk_sum(jnp.arange(n_full * chunk_size, n))
        total = r if total is None else jax.tree_util.tree_map(jnp.add, total, r)
    return total


def hutchinson_from_hvp(hvp_fn: Callable[[PyTree], PyTree], params: PyTree, key: jax.Array,
                        num_probes: int, chunk_size: int | None = None) -> PyTree:
    """Hutchinson estimate (1/K) sum_k z_k * (H z_k) given a function v -> H v.

    Probe k is drawn from ``fold_in(key, k)``, so the estimate does not depend on
    ``chunk_size`` (only memory and speed do).
    """
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}")
    if chunk_size is None:
        chunk_size = default_chunk_size(params, num_probes)

    def one_probe(i):
        z = hutchinson_probe(key, i, params)
        return jax.tree_util.tree_map(jnp.multiply, z, hvp_fn(z))

    total = _chunked_sum(one_probe, num_probes, chunk_size)
    return jax.tree_util.tree_map(lambda x: x / num_probes, total)


def hutchinson_diag(f: Callable[[PyTree], jax.Array], params: PyTree, key: jax.Array,
                    num_probes: int, chunk_size: int | None = None) -> PyTree:
    """Unbiased Rademacher estimate of diag(Hessian of ``f`` at ``params``), as a pytree.

    ``f`` is linearized once (one forward and backward pass); the K probes then only run
    the linear tangent map, vmapped in chunks of ``chunk_size`` probes under ``lax.map``.
    """
    _, hvp_fn = jax.linearize(jax.grad(f), params)
    return hutchinson_from_hvp(hvp_fn, params, key, num_probes, chunk_size)


def exact_diag_from_hvp(hvp_fn: Callable[[PyTree], PyTree], params: PyTree,
                        chunk_size: int | None = None) -> PyTree:
    """Exact diag(H) from P Hessian-vector products with basis vectors, in chunks."""
    flat, unravel = ravel_pytree(params)
    n = flat.shape[0]
    if chunk_size is None:
        chunk_size = default_chunk_size(params, n)

    def one_basis(i):
        e = jnp.zeros_like(flat).at[i].set(1)
        col, _ = ravel_pytree(hvp_fn(unravel(e)))
        # Only entry i of column i is wanted; a one-hot keeps the chunked sum simple.
        return e * col[i]

    return unravel(_chunked_sum(one_basis, n, chunk_size))


def exact_hessian_diag(f: Callable[[PyTree], jax.Array], params: PyTree,
                       chunk_size: int | None = None) -> PyTree:
    """Exact diag(Hessian of ``f``) by chunked HVPs with basis vectors (P HVPs in all)."""
    _, hvp_fn = jax.linearize(jax.grad(f), params)
    return exact_diag_from_hvp(hvp_fn, params, chunk_size)
