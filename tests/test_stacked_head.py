"""The all-domains-at-once HGP / exact-diagonal terms against the generic autodiff path."""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hjax
from hjax.core import stacked_head
from heads import head_loss_fn, make_problem


def generic_terms(loss, method, reduction, sg):
    """The terms by hessian_penalty_terms (jax.jvp of jax.grad of the head loss)."""
    def terms(head, features, labels, weights):
        batches = {"features": features, "labels": labels, "weights": weights}
        t = hjax.hessian_penalty_terms(head_loss_fn(loss), head, batches, method=method,
                                       reduction=reduction, stop_gradient_reference=sg)
        return t.hessian, t.gradient
    return terms


def fast_terms(loss, method, reduction, sg, pass_logits=False, **kwargs):
    def terms(head, features, labels, weights):
        logits = features @ head["kernel"] + head["bias"] if pass_logits else None
        t = hjax.linear_head_penalty_terms(head, features, labels, loss=loss, weights=weights,
                                           method=method, reduction=reduction,
                                           stop_gradient_reference=sg, logits=logits, **kwargs)
        return t.hessian, t.gradient
    return terms


def value_and_grads(terms, head, batches, weights):
    """Both terms and the gradients of 0.7 * hessian + 1.3 * gradient in (head, features)."""
    def combined(head, features):
        h, g = terms(head, features, batches["labels"], weights)
        return 0.7 * h + 1.3 * g, (h, g)
    (_, hg), grads = jax.jit(jax.value_and_grad(combined, argnums=(0, 1), has_aux=True))(
        head, batches["features"])
    return hg, grads


# Softmax with 2 classes gives HGP 4 columns (elementwise outer products); 3 and 5 classes
# take the matmul branch; logistic has 2.
@pytest.mark.parametrize("loss,num_classes", [("softmax", 2), ("softmax", 3), ("softmax", 5),
                                              ("logistic", 1)])
@pytest.mark.parametrize("method", ["hgp", "exact_diag"])
@pytest.mark.parametrize("num_domains,reduction,sg", [(2, "sum", False), (4, "mean", True)])
def test_stacked_terms_and_gradients_equal_the_generic_path(loss, num_classes, method,
                                                            num_domains, reduction, sg):
    head, batches = make_problem(num_domains + num_classes, num_domains, n=10, d=5,
                                 num_classes=num_classes, loss=loss)
    # Unequal weights, with zero-weight padding in the last domain.
    raw = jax.random.uniform(jax.random.key(3), batches["labels"].shape) + 0.1
    raw = raw.at[-1, -3:].set(0.0)
    weights = raw / jnp.sum(raw, axis=1, keepdims=True)
    want_terms, want_grads = value_and_grads(generic_terms(loss, method, reduction, sg),
                                             head, batches, weights)
    got_terms, got_grads = value_and_grads(fast_terms(loss, method, reduction, sg),
                                           head, batches, weights)
    assert float(want_terms[0]) > 0 and float(want_terms[1]) > 0
    chex.assert_trees_all_close(got_terms, want_terms, rtol=2e-4, atol=1e-9)
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(want_grads))
    chex.assert_trees_all_close(got_grads, want_grads, rtol=2e-4, atol=2e-5 * scale)
    # The padded examples get no gradient: they are not part of the domain.
    np.testing.assert_array_equal(got_grads[1][-1, -3:], 0.0)


# Hutchinson takes the per-domain closed forms (hjax.core.linear_head), both ways of forming the
# probe products.
@pytest.mark.parametrize("method,kwargs", [
    ("hgp", {}), ("exact_diag", {}),
    ("hutchinson", {"probe_products": "hvp"}), ("hutchinson", {"probe_products": "dense"})])
@pytest.mark.parametrize("loss,num_classes", [("softmax", 3), ("logistic", 1)])
def test_passing_the_logits_changes_nothing(method, kwargs, loss, num_classes):
    head, batches = make_problem(11, 3, num_classes=num_classes, loss=loss)
    weights = jnp.full(batches["labels"].shape, 1.0 / batches["labels"].shape[1])
    if method == "hutchinson":
        kwargs = dict(kwargs, key=jax.random.key(5), num_probes=7)
    without = value_and_grads(fast_terms(loss, method, "sum", False, **kwargs),
                              head, batches, weights)
    with_logits = value_and_grads(fast_terms(loss, method, "sum", False, pass_logits=True,
                                             **kwargs), head, batches, weights)
    chex.assert_trees_all_close(with_logits, without, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method,kwargs", [
    ("hgp", {}), ("exact_diag", {}),
    ("hutchinson", {"probe_products": "hvp"}), ("hutchinson", {"probe_products": "dense"})])
def test_the_passed_logits_are_the_ones_used(method, kwargs):
    # A linear head's terms depend on its parameters only through the logits, so logits of a
    # head with a shifted bias must give that head's terms: this fails if they are ignored.
    head, batches = make_problem(12, 2, num_classes=3, loss="softmax")
    if method == "hutchinson":
        kwargs = dict(kwargs, key=jax.random.key(5), num_probes=7)
    shifted = dict(head, bias=head["bias"] + jnp.array([0.9, -0.4, 0.2]))
    features, labels = batches["features"], batches["labels"]

    def terms(h, logits=None):
        t = hjax.linear_head_penalty_terms(h, features, labels, method=method, logits=logits,
                                           **kwargs)
        return t.hessian, t.gradient

    want = terms(shifted)
    got = terms(head, logits=features @ shifted["kernel"] + shifted["bias"])
    chex.assert_trees_all_close(got, want, rtol=1e-5)
    assert not np.allclose(terms(head)[0], want[0], rtol=1e-2)


@pytest.mark.parametrize("method", ["hgp", "exact_diag"])
def test_stacked_gradient_matches_finite_differences(method):
    with jax.enable_x64(True):
        head, batches = make_problem(5, 2, n=8, d=3, loss="logistic")
        head = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), head)
        features = batches["features"].astype(jnp.float64)

        def penalty(feats, h):
            return hjax.linear_head_penalty(h, feats, batches["labels"], loss="logistic",
                                            method=method, stop_gradient_reference=False,
                                            reduction="sum")

        gf, gh = jax.jit(jax.grad(penalty, argnums=(0, 1)))(features, head)
        penalty = jax.jit(penalty)
        keys = jax.random.split(jax.random.key(2), 2)
        df = jax.random.normal(keys[0], features.shape, jnp.float64)
        dk = jax.random.normal(keys[1], head["kernel"].shape, jnp.float64)
        eps = 1e-6
        fd_f = (penalty(features + eps * df, head) - penalty(features - eps * df, head)) / (2 * eps)
        h_plus = {**head, "kernel": head["kernel"] + eps * dk}
        h_minus = {**head, "kernel": head["kernel"] - eps * dk}
        fd_k = (penalty(features, h_plus) - penalty(features, h_minus)) / (2 * eps)
        np.testing.assert_allclose(jnp.vdot(gf, df), fd_f, rtol=1e-6)
        np.testing.assert_allclose(jnp.vdot(gh["kernel"], dk), fd_k, rtol=1e-6)


@pytest.mark.parametrize("k", [1, 4, 6])
def test_products_and_their_cotangents_equal_plain_einsums(k):
    ks = jax.random.split(jax.random.key(k), 4)
    z = jax.random.normal(ks[0], (3, 7, 5))
    v = jax.random.normal(ks[1], (3, 5, k))
    a = jax.random.normal(ks[2], (3, 7, k))
    cases = [(stacked_head._times, lambda z, v: jnp.einsum("end,edk->enk", z, v), v),
             (stacked_head._transpose_times, lambda z, a: jnp.einsum("end,enk->edk", z, a), a),
             (stacked_head._squares_transpose_times,
              lambda z, a: jnp.einsum("end,enk->edk", z * z, a), a)]
    for fast, plain, other in cases:
        out_bar = jax.random.normal(ks[3], plain(z, other).shape)
        got_out, got_vjp = jax.vjp(fast, z, other)
        want_out, want_vjp = jax.vjp(plain, z, other)
        chex.assert_trees_all_close(got_out, want_out, rtol=1e-5, atol=1e-5)
        chex.assert_trees_all_close(got_vjp(out_bar), want_vjp(out_bar), rtol=1e-5, atol=1e-5)


SHARDED_SCRIPT = """
import jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import hjax
mesh = Mesh(jax.devices(), ("data",))
features = jax.device_put(jnp.ones((2, 64, 8)), NamedSharding(mesh, P(None, "data")))
labels = jax.device_put(jnp.zeros((2, 64), jnp.int32), NamedSharding(mesh, P(None, "data")))
head = {"kernel": jnp.full((8, 1), 0.1), "bias": jnp.zeros((1,))}
for method in ("hgp", "exact_diag"):
    grad = jax.jit(jax.grad(lambda h, z: hjax.linear_head_penalty(
        h, z, labels, loss="logistic", method=method), argnums=(0, 1)))
    hlo = grad.lower(head, features).compile().as_text()
    print(method, "all-gather" in hlo, "all-to-all" in hlo)
"""


def test_sharded_features_are_not_gathered_onto_every_device():
    """Examples are sharded over devices; the head terms must reduce over them, never
    gather all features onto each device (a reshape merging the domain and example axes
    once did)."""
    # XLA:CPU's fake devices, also on a machine with one GPU (which would shard over one).
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], capture_output=True,
                          text=True, env=env, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == ["hgp False False", "exact_diag False False"], \
        proc.stdout
