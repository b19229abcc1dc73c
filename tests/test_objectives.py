"""Every objective of the IRM-script protocol: its penalty changes the gradient (also the
featurizer's), the annealed loss is assembled as specified, and the head objectives match
their definitions (autodiff references) in the IRM-script form. The other protocol's form and
the remaining objectives: test_objectives_definitions.py, test_domainbed_algorithms.py."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hjax import data
from hjax.core.linear_head import domain_losses, per_example_grads
from hjax.models import irm_mlp
from hjax.objectives import (DOMAINBED_FORM, IRM_SCRIPT_FORM, OBJECTIVES, Inputs,
                             get_objective)
from hjax.protocols.irm_cmnist import train


@pytest.fixture(scope="module")
def setup():
    envs = data.make_environments("colored_mnist", seed=0, mnist=data.fake_mnist())
    batch = train.stack_domains([envs[0], envs[1]])
    model = irm_mlp(16)
    # Params drawn with numpy (threefry-heavy Flax init is slow to compile on CPU).
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                               jnp.asarray(envs[0].images[:1])))
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.normal(0, 1 / np.sqrt(s.shape[0]), s.shape), s.dtype), shapes)
    return model, params, jax.tree_util.tree_map(jnp.asarray, batch)


def test_registry_has_every_method():
    assert set(OBJECTIVES) >= {"erm", "irm", "vrex", "fishr", "hgp", "hutchinson", "exact_diag",
                               "coral", "iga", "sd", "groupdro", "fish"}
    assert set(train.METHODS) <= set(OBJECTIVES)
    with pytest.raises(ValueError, match="unknown objective 'foo'"):
        get_objective("foo")
    with pytest.raises(ValueError, match="--method='foo' is not valid"):
        train.method_hparams("foo")


def _l2(params):
    return sum(float(jnp.sum(x ** 2)) for x in jax.tree_util.tree_leaves(params))


@pytest.fixture(scope="module")
def unpenalized(setup):
    """Gradient and metrics of the loss with penalty weight 0: Lbar + l2 ||theta||^2 (the
    same for every method, so computed once)."""
    model, params, batch = setup
    hp0 = train.method_hparams("erm")
    assert hp0["penalty_weight"] == 0.0
    return jax.jit(jax.grad(train.make_loss_fn(model, "erm", hp0), has_aux=True))(
        params, batch, jax.random.key(1), jnp.asarray(500))


@pytest.mark.parametrize("method", train.METHODS)
def test_penalty_changes_the_gradient_and_the_loss_is_assembled(setup, unpenalized, method):
    model, params, batch = setup
    g_without, metrics0 = unpenalized
    hp = train.method_hparams(method, num_probes=8)
    step = jnp.asarray(500)                        # after annealing: the penalty counts
    g_with, metrics = jax.jit(jax.grad(train.make_loss_fn(model, method, hp), has_aux=True))(
        params, batch, jax.random.key(1), step)

    # The loss is (Lbar + l2 * ||theta||^2 + lam * P) / max(lam, 1) with lam the penalty weight.
    lam = hp["penalty_weight"]
    nll = float(np.mean(metrics["domain_nll"]))
    np.testing.assert_allclose(float(metrics["nll"]), nll, rtol=1e-6)
    np.testing.assert_allclose(float(metrics0["nll"]), nll, rtol=1e-6)
    expected = (nll + hp["l2_weight"] * _l2(params) + lam * float(metrics["penalty"]))
    np.testing.assert_allclose(float(metrics["loss"]), expected / max(lam, 1.0), rtol=1e-5)
    np.testing.assert_allclose(float(metrics0["loss"]), nll + hp["l2_weight"] * _l2(params),
                               rtol=1e-5)

    if method == "erm":
        assert lam == 0.0 and float(metrics["penalty"]) == 0.0
        chex.assert_trees_all_equal(g_with, g_without)
        return
    assert lam > 1 and float(metrics["penalty"]) > 0.0
    # g_with = (g_without + lam * grad P) / lam: lam * g_with - g_without is the penalty's
    # gradient, and it must be a real part of the gradient of the featurizer and of the head.
    # (The featurizer's first layer: the penalty must reach through the whole featurizer.)
    for part in (lambda g: g["featurizer"]["Dense_0"], lambda g: g["classifier"]):
        with_, without = part(g_with), part(g_without)
        leaves = zip(jax.tree_util.tree_leaves(with_), jax.tree_util.tree_leaves(without))
        diff = max(float(np.max(np.abs(lam * np.asarray(a) - np.asarray(b))))
                   for a, b in leaves)
        scale = max(float(np.max(np.abs(b))) for b in jax.tree_util.tree_leaves(without))
        assert diff > 1e-3 * scale, (method, diff, scale)


def test_annealing_schedule_and_loss_rescaling(setup):
    model, params, batch = setup
    hp = train.method_hparams("vrex", penalty_weight=1000.0, anneal_iters=190)
    loss_fn = jax.jit(train.make_loss_fn(model, "vrex", hp))
    l2 = _l2(params)
    for step, lam in ((0, 1.0), (189, 1.0), (190, 1000.0), (500, 1000.0)):
        loss, m = loss_fn(params, batch, jax.random.key(0), jnp.asarray(step))
        expected = float(m["nll"]) + hp["l2_weight"] * l2 + lam * float(m["penalty"])
        if lam > 1:
            expected /= lam
        np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
        np.testing.assert_allclose(float(train.penalty_weight(jnp.asarray(step), hp)), lam)


def _head_inputs(seed=0, e=2, n=9, d=5):
    """A one-logit (logistic) head as in the IRM-script protocol, with uniform weights
    (numpy draws: eager jax.random compiles slowly on CPU)."""
    rng = np.random.default_rng(seed)
    head = {"kernel": rng.normal(size=(d, 1)).astype(np.float32),
            "bias": np.array([0.2], np.float32)}
    feats = rng.normal(size=(e, n, d)).astype(np.float32)
    labels = rng.integers(0, 2, size=(e, n)).astype(np.int32)
    w = np.full((e, n), 1.0 / n, np.float32)
    return jax.tree_util.tree_map(jnp.asarray, Inputs(
        head, feats, feats @ head["kernel"] + head["bias"], labels, w))


def _penalty(method, inputs, hp=None, key=None, form=IRM_SCRIPT_FORM):
    fn = get_objective(method).penalty_fn
    hp = dict(hp or {})
    return jax.jit(lambda i, k: fn(i, (), k, hp, form))(inputs, key)


def test_irm_penalty_is_squared_dummy_scale_gradient():
    inputs = _head_inputs()
    out = _penalty("irm", inputs)
    grads = jax.jit(jax.vmap(jax.grad(lambda s, lg, y, w: domain_losses(lg * s, y, w)),
                             (None, 0, 0, 0)))(1.0, inputs.logits, inputs.labels,
                                               inputs.weights)
    assert min(abs(float(g)) for g in grads) > 1e-3
    np.testing.assert_allclose(out.penalty, np.mean(np.square(grads)), rtol=1e-5)


def test_vrex_penalty_is_squared_loss_difference_for_two_domains():
    inputs = _head_inputs(1)
    out = _penalty("vrex", inputs)
    nll = np.asarray(domain_losses(inputs.logits, inputs.labels, inputs.weights))
    assert abs(float(nll[0] - nll[1])) > 1e-2
    np.testing.assert_allclose(out.penalty, (nll[0] - nll[1]) ** 2, rtol=1e-5)


def test_fishr_uses_per_sample_head_gradients_from_autodiff():
    inputs = _head_inputs(2)
    closed = np.asarray(jax.jit(per_example_grads)(inputs.features, inputs.logits,
                                                   inputs.labels))
    chex.assert_shape(closed, (2, 9, 6))

    def sample_loss(h, z, y):
        out = z @ h["kernel"] + h["bias"]
        return domain_losses(out[None], y[None])          # one example: [1, C] -> scalar

    g = jax.jit(jax.vmap(jax.vmap(jax.grad(sample_loss), (None, 0, 0)), (None, 0, 0)))(
        inputs.head, inputs.features, inputs.labels)
    flat = np.concatenate([np.asarray(g["kernel"]).reshape(2, 9, -1), g["bias"]], axis=-1)
    chex.assert_trees_all_close(closed, flat, rtol=1e-5, atol=1e-6)
    out = _penalty("fishr", inputs)
    var = np.var(closed.astype(np.float64), axis=1)
    expected = np.sum((var - var.mean(0)) ** 2)
    assert float(expected) > 1e-6
    np.testing.assert_allclose(out.penalty, expected, rtol=1e-5)


@pytest.mark.parametrize("method,form", [("hgp", IRM_SCRIPT_FORM),
                                         ("exact_diag", DOMAINBED_FORM)])
def test_closed_form_and_autodiff_curvature_agree_in_the_objective(method, form):
    inputs = _head_inputs(3)
    a = _penalty(method, inputs, {"curvature": "closed_form"}, jax.random.key(0), form)
    b = _penalty(method, inputs, {"curvature": "autodiff"}, jax.random.key(0), form)
    assert float(a.logs["hessian_term"]) > 1e-6 and float(a.logs["gradient_term"]) > 1e-6
    for k in ("hessian_term", "gradient_term"):
        np.testing.assert_allclose(a.logs[k], b.logs[k], rtol=1e-4)
    np.testing.assert_allclose(a.penalty, b.penalty, rtol=1e-4)


def test_unknown_curvature_is_rejected():
    with pytest.raises(ValueError, match="unknown curvature"):
        _penalty("hgp", _head_inputs(4), {"curvature": "foo"})
