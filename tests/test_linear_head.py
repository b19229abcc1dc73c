"""Closed forms of docs/protocols.md, "Closed forms for a linear head" against autodiff."""

import chex
import jax
import jax.numpy as jnp
import pytest
from jax.flatten_util import ravel_pytree

from hjax.core import linear_head
from heads import dense_curvature, domain, head_loss_fn, make_problem


@pytest.mark.parametrize("loss,num_classes", [("softmax", 3), ("softmax", 5), ("logistic", 1)])
@pytest.mark.parametrize("weighted", [False, True])
def test_closed_forms_equal_autodiff(loss, num_classes, weighted):
    head, batches = make_problem(1, 1, n=15, d=4, num_classes=num_classes, loss=loss)
    batch = domain(batches, 0)
    if weighted:
        w = jax.random.uniform(jax.random.key(3), (15,)).at[:4].set(0.0)
        batch["weights"] = w / w.sum()
    loss_fn = head_loss_fn(loss)
    z, y, w = batch["features"], batch["labels"], batch.get("weights")
    g_ad = jax.grad(loss_fn)(head, batch)
    chex.assert_trees_all_close(linear_head.grad(head, z, y, loss, w), g_ad, rtol=1e-5,
                                atol=1e-6)
    g_flat, dense = dense_curvature(loss_fn, head, batch)
    unravel = ravel_pytree(head)[1]
    v = jax.tree_util.tree_map(lambda x: jax.random.normal(jax.random.key(9), x.shape), head)
    expected = unravel(dense @ ravel_pytree(v)[0])
    chex.assert_trees_all_close(linear_head.hvp(head, z, y, v, loss, w), expected,
                                rtol=1e-4, atol=1e-6)
    chex.assert_trees_all_close(ravel_pytree(linear_head.hessian_diag(head, z, y, loss, w))[0],
                                jnp.diag(dense), rtol=1e-4, atol=1e-7)
    g_lin, hvp_fn = linear_head.linearize(head, z, y, loss, w)
    chex.assert_trees_all_close(ravel_pytree(g_lin)[0], g_flat, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(hvp_fn(v), expected, rtol=1e-4, atol=1e-6)


def test_padding_with_zero_weights_does_not_change_anything():
    head, batches = make_problem(2, 1, n=10, d=3, num_classes=4)
    z, y = batches["features"][0], batches["labels"][0]
    zp = jnp.concatenate([z, 100 * jnp.ones((5, 3))])
    yp = jnp.concatenate([y, jnp.zeros(5, y.dtype)])
    w = jnp.concatenate([jnp.full(10, 0.1), jnp.zeros(5)])
    chex.assert_trees_all_close(linear_head.hessian_diag(head, zp, yp, "softmax", w),
                                linear_head.hessian_diag(head, z, y, "softmax"), rtol=1e-5)
    chex.assert_trees_all_close(linear_head.grad(head, zp, yp, "softmax", w),
                                linear_head.grad(head, z, y, "softmax"), rtol=1e-5, atol=1e-7)


def test_unknown_loss_raises():
    head, batches = make_problem(0, 1)
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        linear_head.grad(head, batches["features"][0], batches["labels"][0], "hinge")


@pytest.mark.parametrize("loss,num_classes", [("softmax", 3), ("logistic", 1)])
def test_dense_hessian_equals_jax_hessian_in_the_flat_layout(loss, num_classes):
    head, batches = make_problem(2, 1, n=9, d=4, num_classes=num_classes, loss=loss)
    f, y = batches["features"][0], batches["labels"][0]
    w = jax.random.uniform(jax.random.key(5), y.shape) + 0.1
    w = w / jnp.sum(w)
    d, c = head["kernel"].shape
    flat = linear_head.flatten(head)
    chex.assert_trees_all_close(linear_head.unflatten(flat, d, c), head)
    oracle = jax.hessian(lambda v: linear_head.loss_value(linear_head.unflatten(v, d, c), f, y,
                                                          loss, w))(flat)
    dense = jax.jit(linear_head.hessian_dense, static_argnums=3)(head, f, y, loss, w)
    chex.assert_shape(dense, ((d + 1) * c, (d + 1) * c))
    chex.assert_trees_all_close(dense, oracle, atol=1e-6, rtol=1e-5)


def test_weighted_gram_backward_matches_finite_differences():
    from jax.test_util import check_grads
    x = jax.random.normal(jax.random.key(0), (6, 3), dtype=jnp.float32)
    a = jax.random.uniform(jax.random.key(1), (6,))
    g = jax.random.normal(jax.random.key(2), (3, 3))      # not symmetric on purpose
    fn = lambda x, a: jnp.sum(g * linear_head.weighted_gram(x, a))  # noqa: E731
    check_grads(fn, (x, a), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)
    plain = lambda x, a: jnp.sum(g * (x.T @ (a[:, None] * x)))  # noqa: E731
    chex.assert_trees_all_close(jax.grad(fn, (0, 1))(x, a), jax.grad(plain, (0, 1))(x, a),
                                atol=1e-5)
