"""hvp, Hutchinson and exact diagonals against dense jax.hessian oracles."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import hjax
from hjax.core.curvature import exact_hessian_diag, hutchinson_from_hvp
from heads import dense_curvature, domain, head_loss_fn, make_problem


def _mlp_params(key, sizes):
    params = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        k1, k2 = jax.random.split(jax.random.fold_in(key, i))
        params.append({"W": jax.random.normal(k1, (a, b)) / np.sqrt(a),
                       "b": 0.1 * jax.random.normal(k2, (b,))})
    return params


def _mlp_loss(params, x):
    h = x
    for i, layer in enumerate(params):
        h = h @ layer["W"] + layer["b"]
        if i < len(params) - 1:
            h = jnp.tanh(h)
    return jnp.mean(jnp.log1p(h ** 2)) + 0.1 * jnp.mean(h ** 3)


# The cost is compiling the dense oracle (jax.hessian of an MLP), not the code under test.
@pytest.mark.fast_compile
@pytest.mark.parametrize("sizes", [(3, 2), (4, 5, 3), (6, 4, 4, 2)])
def test_hvp_equals_dense_hessian_times_v(sizes):
    key = jax.random.key(len(sizes))
    params = _mlp_params(key, sizes)
    x = jax.random.normal(jax.random.fold_in(key, 99), (7, sizes[0]))
    v = hjax.rademacher_like(jax.random.fold_in(key, 5), params)
    flat, unravel = ravel_pytree(params)
    dense = jax.jit(jax.hessian(lambda p: _mlp_loss(unravel(p), x)))(flat)
    expected = unravel(dense @ ravel_pytree(v)[0])
    got = hjax.hvp(lambda p: _mlp_loss(p, x), params, v)
    chex.assert_trees_all_equal_shapes(got, params)
    chex.assert_trees_all_close(got, expected, rtol=1e-4, atol=1e-5)
    g, hv = hjax.grad_and_hvp(lambda p: _mlp_loss(p, x), params, v)
    chex.assert_trees_all_close(g, jax.grad(_mlp_loss)(params, x), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(hv, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 1000])
def test_exact_diag_equals_dense_diagonal(chunk_size):
    params = _mlp_params(jax.random.key(3), (4, 5, 3))
    x = jax.random.normal(jax.random.key(4), (9, 4))
    flat, unravel = ravel_pytree(params)
    dense = jax.jit(jax.hessian(lambda p: _mlp_loss(unravel(p), x)))(flat)
    got = jax.jit(lambda p: exact_hessian_diag(lambda q: _mlp_loss(q, x), p,
                                               chunk_size=chunk_size))(params)
    chex.assert_trees_all_close(ravel_pytree(got)[0], jnp.diag(dense), rtol=1e-4, atol=1e-6)


def test_hutchinson_does_not_depend_on_chunk_size():
    params = _mlp_params(jax.random.key(1), (4, 3, 2))
    x = jax.random.normal(jax.random.key(2), (5, 4))
    f = lambda p: _mlp_loss(p, x)
    key = jax.random.key(7)
    run = jax.jit(lambda c: hjax.hutchinson_diag(f, params, key, 23, chunk_size=c),
                  static_argnums=0)
    ref = run(23)
    for c in (1, 5, 8):
        chex.assert_trees_all_close(run(c), ref, rtol=1e-5, atol=1e-6)


def test_hutchinson_single_probe_is_z_times_hz():
    params = _mlp_params(jax.random.key(1), (3, 2))
    x = jax.random.normal(jax.random.key(2), (5, 3))
    f = lambda p: _mlp_loss(p, x)
    key = jax.random.key(11)
    z = hjax.rademacher_like(jax.random.fold_in(key, 0), params)
    expected = jax.tree_util.tree_map(jnp.multiply, z, hjax.hvp(f, params, z))
    chex.assert_trees_all_close(hjax.hutchinson_diag(f, params, key, 1), expected,
                                rtol=1e-5, atol=1e-6)
    leaves = jax.tree_util.tree_leaves(z)
    assert all(bool(jnp.all(jnp.abs(l) == 1)) for l in leaves)


def test_hutchinson_is_unbiased_with_error_shrinking_like_one_over_sqrt_k():
    head, batches = make_problem(0, 1, n=30, d=3, num_classes=3)
    batch = domain(batches, 0)
    loss_fn = head_loss_fn("softmax")
    _, dense = dense_curvature(loss_fn, head, batch)
    diag = jnp.diag(dense)
    # Var[z_j (H z)_j] = sum_{k != j} H_jk^2 for Rademacher z.
    var = jnp.sum(dense ** 2, axis=1) - diag ** 2
    _, hvp_fn = jax.linearize(jax.grad(lambda p: loss_fn(p, batch)), head)

    @functools.partial(jax.jit, static_argnums=1)
    def estimates(keys, num_probes):
        est = jax.vmap(lambda k: hutchinson_from_hvp(hvp_fn, head, k, num_probes))(keys)
        return jax.vmap(lambda t: ravel_pytree(t)[0])(est)

    keys = jax.random.split(jax.random.key(1), 400)
    for num_probes in (4, 64):
        est = estimates(keys, num_probes)                      # [400, P]
        # Unbiased: the mean over 400 keys sits within 5 standard errors of diag(H).
        se_mean = jnp.sqrt(var / (num_probes * keys.shape[0]))
        assert bool(jnp.all(jnp.abs(est.mean(0) - diag) <= 5 * se_mean + 1e-6))
        # Rate: error of one K-probe estimate, normalized by sqrt(var / K), has RMS ~ 1.
        z = (est - diag) / jnp.sqrt(var / num_probes)
        rms = float(jnp.sqrt(jnp.mean(z ** 2)))
        assert 0.8 < rms < 1.2, (num_probes, rms)
    err4 = jnp.sqrt(jnp.mean((estimates(keys, 4) - diag) ** 2))
    err64 = jnp.sqrt(jnp.mean((estimates(keys, 64) - diag) ** 2))
    assert 3.0 < float(err4 / err64) < 5.3   # sqrt(64 / 4) = 4


def test_num_probes_below_one_raises():
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="num_probes"):
        hjax.hutchinson_diag(lambda p: jnp.sum(p["w"] ** 4), params, jax.random.key(0), 0)
