"""Small random linear-head problems shared by the curvature and penalty tests."""

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from hjax.core import linear_head


def make_problem(seed, num_domains, n=12, d=4, num_classes=3, loss="softmax"):
    """Head params and per-domain batches whose feature distributions differ by domain."""
    ks = jax.random.split(jax.random.key(seed), 4)
    c = 1 if loss == "logistic" else num_classes
    shift = jnp.arange(num_domains, dtype=jnp.float32)[:, None, None] * 0.5
    features = jax.random.normal(ks[0], (num_domains, n, d)) * (1 + shift) + shift
    hi = 2 if loss == "logistic" else num_classes
    labels = jax.random.randint(ks[1], (num_domains, n), 0, hi)
    head = {"kernel": 0.7 * jax.random.normal(ks[2], (d, c)),
            "bias": 0.3 * jax.random.normal(ks[3], (c,))}
    return head, {"features": features, "labels": labels}


def head_loss_fn(loss):
    def loss_fn(head, batch):
        return linear_head.loss_value(head, batch["features"], batch["labels"], loss,
                                      batch.get("weights"))
    return loss_fn


def domain(batches, e):
    return jax.tree_util.tree_map(lambda a: a[e], batches)


def dense_curvature(loss_fn, head, batch):
    """(g, H) of one domain as a flat vector and a dense P x P matrix (the oracle)."""
    flat, unravel = ravel_pytree(head)

    @jax.jit
    def curvature(flat, batch):
        f = lambda v: loss_fn(unravel(v), batch)
        return jax.grad(f)(flat), jax.hessian(f)(flat)
    return curvature(flat, batch)
