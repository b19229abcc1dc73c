"""hjax.core.diagnostics against dense jax.hessian oracles and closed-form toy problems."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from hjax.core import diagnostics as dg


# ----------------------------------------------------------------------------- helpers

def ce_loss(head, batch):
    """Mean softmax cross-entropy of a linear head on features."""
    logits = batch["features"] @ head["kernel"] + head["bias"]
    picked = jnp.take_along_axis(logits, batch["labels"][:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked)


def ce_accuracy(head, batch):
    logits = batch["features"] @ head["kernel"] + head["bias"]
    return jnp.mean(jnp.argmax(logits, axis=1) == batch["labels"])


def make_problem(seed, sizes=(20, 20), d=4, num_classes=3, head_scale=0.7):
    """A random softmax linear head and domains whose feature distributions differ."""
    rng = np.random.default_rng(seed)
    batches = []
    for e, n in enumerate(sizes):
        x = rng.normal(size=(n, d)) * (1.0 + 0.5 * e) + 0.5 * e
        batches.append({"features": jnp.asarray(x, jnp.float32),
                        "labels": jnp.asarray(rng.integers(0, num_classes, n), jnp.int32)})
    head = {"kernel": jnp.asarray(head_scale * rng.normal(size=(d, num_classes)), jnp.float32),
            "bias": jnp.asarray(0.3 * rng.normal(size=num_classes), jnp.float32)}
    return head, batches


@functools.partial(jax.jit, static_argnums=0)
def _dense(loss_fn, head, batch):
    flat, unravel = ravel_pytree(head)
    f = lambda v: loss_fn(unravel(v), batch)
    return jax.grad(f)(flat), jax.hessian(f)(flat)


def dense(loss_fn, head, batch):
    """(g, H) of one domain as a flat float64 numpy vector and P x P matrix (the oracle)."""
    g, h = _dense(loss_fn, head, batch)
    return np.asarray(g, np.float64), np.asarray(h, np.float64)


def quad_loss(head, batch):
    """0.5 sum_i a_i (w_i - m_i)^2: Hessian diag(a), gradient a * (w - m)."""
    return 0.5 * jnp.sum(batch["a"] * (head["w"] - batch["m"]) ** 2)


def quad_batch(a, m=(0.0, 0.0, 0.0)):
    return {"a": jnp.asarray(a, jnp.float32), "m": jnp.asarray(m, jnp.float32)}


QUAD_HEAD = {"w": jnp.zeros(3)}

spectral = jax.jit(dg.hessian_spectral_distance, static_argnums=(0,),
                   static_argnames=("num_iters",))
frobenius = jax.jit(dg.hessian_frobenius_distance, static_argnums=(0,),
                    static_argnames=("num_probes", "squared", "chunk_size"))
transfer = jax.jit(dg.transfer_measure, static_argnums=(0,),
                   static_argnames=("num_restarts", "num_steps", "accuracy_fn"))


# ----------------------------------------------------------------------------- spectral

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spectral_distance_matches_dense_oracle(seed):
    head, (ba, bb) = make_problem(seed)
    _, ha = dense(ce_loss, head, ba)
    _, hb = dense(ce_loss, head, bb)
    expected = np.linalg.norm(ha - hb, 2)
    est, res = spectral(ce_loss, head, ba, bb, jax.random.key(seed), num_iters=500, tol=1e-5)
    np.testing.assert_allclose(est, expected, rtol=1e-3)
    assert res < 1e-3
    assert est <= expected * (1 + 1e-5)   # ||D v|| never exceeds ||D||_2


def test_spectral_distance_with_opposite_dominant_eigenvalues():
    # D = diag(2, -2, 0): +-2 tie for the largest |eigenvalue|; the iterate oscillates
    # between the two eigenvectors but ||D v|| converges.
    est, res = spectral(quad_loss, QUAD_HEAD, quad_batch([3.0, 1.0, 0.5]),
                        quad_batch([1.0, 3.0, 0.5]), jax.random.key(0))
    np.testing.assert_allclose(est, 2.0, rtol=1e-5)
    assert res < 1e-4


def test_spectral_distance_of_identical_hessians_is_zero():
    est, res = spectral(quad_loss, QUAD_HEAD, quad_batch([1.0, 2.0, 3.0], [1.0, 0.0, 0.0]),
                        quad_batch([1.0, 2.0, 3.0]), jax.random.key(0))
    assert est == 0.0 and res == 0.0


# ----------------------------------------------------------------------------- Frobenius

@pytest.mark.parametrize("seed", [0, 3])
def test_exact_frobenius_distance_matches_dense_oracle(seed):
    head, (ba, bb) = make_problem(seed, sizes=(20, 13))
    _, ha = dense(ce_loss, head, ba)
    _, hb = dense(ce_loss, head, bb)
    expected = np.linalg.norm(ha - hb, "fro")
    # P = 15 basis vectors in chunks of 4: three vmapped chunks under lax.map + remainder 3
    # (the default, one chunk, is exercised by the pairwise test).
    np.testing.assert_allclose(frobenius(ce_loss, head, ba, bb, chunk_size=4), expected,
                               rtol=1e-5)


def test_hutchinson_squared_frobenius_is_unbiased():
    head, (ba, bb) = make_problem(1)
    _, ha = dense(ce_loss, head, ba)
    _, hb = dense(ce_loss, head, bb)
    exact_sq = np.sum((ha - hb) ** 2)
    keys = jax.random.split(jax.random.key(42), 200)
    # 200 independent 10-probe estimates (lax.map: it compiles much faster than vmap here).
    est = jax.jit(lambda ks: jax.lax.map(lambda k: dg.hessian_frobenius_distance(
        ce_loss, head, ba, bb, key=k, num_probes=10, squared=True), ks))(keys)
    est = np.asarray(est, np.float64)
    mean, se = np.mean(est), np.std(est, ddof=1) / np.sqrt(est.shape[0])
    assert se > 0
    assert abs(mean - exact_sq) < 4 * se, (mean, exact_sq, se)


def test_hutchinson_needs_a_key():
    head, (ba, bb) = make_problem(0)
    with pytest.raises(ValueError):
        dg.hessian_frobenius_distance(ce_loss, head, ba, bb, num_probes=3)


# ----------------------------------------------------------------------------- gradient

def test_gradient_distance_matches_oracle():
    head, (ba, bb) = make_problem(5, sizes=(20, 7))
    ga, _ = dense(ce_loss, head, ba)
    gb, _ = dense(ce_loss, head, bb)
    got = jax.jit(dg.gradient_distance, static_argnums=0)(ce_loss, head, ba, bb)
    np.testing.assert_allclose(got, np.linalg.norm(ga - gb), rtol=1e-5)


# ----------------------------------------------------------------------------- pairwise

def test_pairwise_alignment_matches_dense_oracles():
    head, batches = make_problem(7, sizes=(20, 11, 30))
    num = len(batches)
    gs, hs = jax.jit(lambda h, bs: tuple(zip(*(_dense(ce_loss, h, b) for b in bs))))(
        head, batches)
    gs = [np.asarray(g, np.float64) for g in gs]
    hs = [np.asarray(h, np.float64) for h in hs]
    gbar, hbar = sum(gs) / num, sum(hs) / num
    run = jax.jit(functools.partial(dg.pairwise_alignment, ce_loss, num_iters=500, tol=1e-5))
    out = run(head, batches, jax.random.key(0))

    exp = {k: np.zeros((num, num)) for k in ("spectral", "frobenius", "gradient")}
    for a in range(num):
        for b in range(num):
            exp["spectral"][a, b] = np.linalg.norm(hs[a] - hs[b], 2)
            exp["frobenius"][a, b] = np.linalg.norm(hs[a] - hs[b], "fro")
            exp["gradient"][a, b] = np.linalg.norm(gs[a] - gs[b])
    for k, v in exp.items():
        np.testing.assert_allclose(out[k], v, rtol=1e-3, atol=1e-7, err_msg=k)
    np.testing.assert_allclose(
        out["spectral_to_mean"], [np.linalg.norm(h - hbar, 2) for h in hs], rtol=1e-3)
    np.testing.assert_allclose(
        out["frobenius_to_mean"], [np.linalg.norm(h - hbar, "fro") for h in hs], rtol=1e-4)
    np.testing.assert_allclose(
        out["gradient_to_mean"], [np.linalg.norm(g - gbar) for g in gs], rtol=1e-4)
    losses = [jax.jit(ce_loss)(head, b) for b in batches]
    np.testing.assert_allclose(out["loss"], losses, rtol=1e-6)
    np.testing.assert_allclose(out["grad_norm"], [np.linalg.norm(g) for g in gs], rtol=1e-5)
    assert np.all(out["spectral_residual"] < 1e-3)
    assert np.all(out["spectral_to_mean_residual"] < 1e-3)


# ----------------------------------------------------------------------------- transfer

def test_transfer_measure_quadratic_closed_form_shared_minimum():
    # L_S = |h|^2/2, L_T = h^T A h / 2, A = diag(3, .5, 1.5): both minimized at h* = 0, so
    # L_S* = L_T* = 0 and T = sup_{|h|<=delta} h^T (A - I) h / 2 = lambda_max(A - I) delta^2/2
    # = delta^2; Delta g = 0, ||Delta H||_2 = 2, so the bound delta^2 ||Delta H||/2 is tight.
    delta = 0.3
    r = transfer(quad_loss, QUAD_HEAD, quad_batch([1.0, 1.0, 1.0]),
                 quad_batch([3.0, 0.5, 1.5]), delta=delta, key=jax.random.key(0))
    np.testing.assert_allclose(r.measure, delta ** 2, rtol=1e-3)
    np.testing.assert_allclose(r.gap_sup, delta ** 2, rtol=1e-3)
    np.testing.assert_allclose([r.source_inf, r.target_inf], [0.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(r.hessian_spectral, 2.0, rtol=1e-5)
    np.testing.assert_allclose(r.gradient_distance, 0.0, atol=1e-7)
    np.testing.assert_allclose(r.bound, delta ** 2, rtol=1e-5)
    np.testing.assert_allclose(r.offset, 0.0, atol=1e-7)
    # The worst head lies on the sphere along the top eigenvector of A - I.
    np.testing.assert_allclose(np.abs(r.worst_head["w"]), [delta, 0.0, 0.0], atol=2e-2 * delta)
    assert r.worst_target_accuracy is None


def test_transfer_measure_quadratic_closed_form_shifted_target():
    # L_S = |h|^2/2, L_T = |h - a|^2/2, h* = 0, |a| = 0.5 > delta = 0.1:
    #   sup (L_T - L_S) = sup (|a|^2/2 - a.h) = |a|^2/2 + delta |a|,  L_S* = 0,
    #   L_T* = (|a| - delta)^2 / 2,  so  T = 2 delta |a| - delta^2/2.
    # Delta H = 0, Delta g = -a: the plain bound delta |a| is NOT an upper bound here; the
    # offset L_T(h*) - L_T* = delta |a| - delta^2/2 restores it (exactly, for quadratics).
    a = np.array([0.3, -0.4, 0.0])
    na, delta = 0.5, 0.1
    r = transfer(quad_loss, QUAD_HEAD, quad_batch([1.0, 1.0, 1.0]),
                 quad_batch([1.0, 1.0, 1.0], a), delta=delta, key=jax.random.key(1))
    expected = 2 * delta * na - delta ** 2 / 2
    np.testing.assert_allclose(r.measure, expected, rtol=1e-3)
    np.testing.assert_allclose(r.gap_sup, na ** 2 / 2 + delta * na, rtol=1e-4)
    np.testing.assert_allclose(r.target_inf, (na - delta) ** 2 / 2, rtol=1e-3)
    np.testing.assert_allclose(r.source_inf, 0.0, atol=1e-6)
    np.testing.assert_allclose(r.hessian_spectral, 0.0, atol=1e-7)
    np.testing.assert_allclose(r.bound, delta * na, rtol=1e-5)
    assert r.measure > 1.5 * r.bound
    np.testing.assert_allclose(r.corrected_bound, expected, rtol=1e-3)
    np.testing.assert_allclose(r.worst_head["w"], -delta * a / na, atol=1e-3)


def _train(head, batch, steps=100, lr=0.5):
    grad = jax.grad(ce_loss)

    def step(h, _):
        return jax.tree_util.tree_map(lambda p, g: p - lr * g, h, grad(h, batch)), None

    return jax.lax.scan(step, head, None, length=steps)[0]


@pytest.mark.parametrize("seed,trained", [(0, False), (1, True), (2, True)])
def test_transfer_measure_within_second_order_bound(seed, trained):
    head, (src, tgt) = make_problem(seed, head_scale=0.3)
    if trained:    # near the source minimum: g_S ~ 0 while g_T is not
        head = _train(head, src)
    g_t, _ = dense(ce_loss, head, tgt)
    for i, delta in enumerate([0.05, 0.1]):
        r = transfer(ce_loss, head, src, tgt, delta=delta, key=jax.random.key(10 * seed + i),
                     accuracy_fn=ce_accuracy)
        assert r.hessian_residual < 1e-2
        assert r.measure >= -1e-6
        # Second-order bound on the measure (the infima terms enter through the offset).
        assert r.measure <= r.corrected_bound * 1.05 + 1e-6, r
        # Infimum-free form for a convex target loss: T <= bound + delta ||g_T||.
        assert r.measure <= (r.bound + delta * np.linalg.norm(g_t)) * 1.05 + 1e-6, r
        # The ascent is not lazy: moving delta along Delta g already gains
        # delta ||Delta g|| - delta^2/2 ||Delta H||_2 (minus third-order terms).
        lower = delta * r.gradient_distance - 0.5 * delta ** 2 * r.hessian_spectral
        assert r.gap_sup - r.gap_center >= lower * 0.95 - 1e-6, r
        # The worst head lies in the ball.
        dist = np.sqrt(sum(np.sum((np.asarray(w) - np.asarray(h)) ** 2) for w, h in
                           zip(jax.tree_util.tree_leaves(r.worst_head),
                               jax.tree_util.tree_leaves(head))))
        assert dist <= delta * (1 + 1e-5)
        chex.assert_trees_all_equal_shapes(r.worst_head, head)
        assert 0.0 <= r.worst_target_accuracy <= 1.0
        np.testing.assert_allclose(r.worst_target_accuracy,
                                   jax.jit(ce_accuracy)(r.worst_head, tgt), atol=1e-6)
