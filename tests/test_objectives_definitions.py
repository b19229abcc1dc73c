"""Every registered head objective against its definition (docs/protocols.md), on tiny
closed-form cases computed by hand in numpy (float64), in both protocol forms.

Objectives are called directly, ``penalty_fn(Inputs, state, key, hp, form) -> Output``; the
references never go through hjax code (per-example gradients and Hessians come from
``jax.grad`` / ``jax.hessian`` of a loss written here).
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from hjax.objectives import DOMAINBED_FORM, IRM_SCRIPT_FORM, Inputs, get_objective
from hjax.objectives.baselines import coral_penalty

E, N, D, C = 3, 6, 4, 3
RTOL, ATOL = 2e-5, 1e-7


# ---------------------------------------------------------------- references (numpy, float64)

def np_per_example_loss(logits, labels):
    """Cross-entropy (C > 1) or logistic loss (C == 1), per example: [..., n, C] -> [..., n]."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    if logits.shape[-1] == 1:
        x = logits[..., 0]
        return np.logaddexp(0.0, x) - labels * x
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    return lse - np.take_along_axis(logits, labels[..., None], -1)[..., 0]


def np_domain_losses(logits, labels, weights=None):
    nll = np_per_example_loss(logits, labels)
    if weights is None:
        return nll.mean(-1)
    return (np.asarray(weights, np.float64) * nll).sum(-1)


def dscale_fd(logits, labels, weights=None, eps=1e-5):
    """d/ds L_e(s * logits) at s = 1 by central differences -> [E]."""
    logits = np.asarray(logits, np.float64)
    return (np_domain_losses((1 + eps) * logits, labels, weights)
            - np_domain_losses((1 - eps) * logits, labels, weights)) / (2 * eps)


def problem(seed=0, e=E, n=N, d=D, c=C):
    """Head, features and labels whose statistics differ by domain (float32)."""
    rng = np.random.default_rng(seed)
    scale = 1.0 + 0.5 * np.arange(e)[:, None, None]
    feats = (rng.normal(size=(e, n, d)) * scale + 0.3 * np.arange(e)[:, None, None])
    head = {"kernel": rng.normal(size=(d, c)) * 0.8, "bias": rng.normal(size=(c,)) * 0.3}
    labels = rng.integers(0, max(c, 2), size=(e, n))
    return ({k: v.astype(np.float32) for k, v in head.items()}, feats.astype(np.float32),
            labels.astype(np.int32))


def make_inputs(head, feats, labels, weights=None):
    logits = feats @ head["kernel"] + head["bias"]
    return Inputs({k: jnp.asarray(v) for k, v in head.items()}, jnp.asarray(feats),
                  jnp.asarray(logits), jnp.asarray(labels),
                  None if weights is None else jnp.asarray(weights, jnp.float32))


def call(name, inputs, form, hp=None, state=(), key=None):
    fn = get_objective(name).penalty_fn
    hp = dict(hp or {})
    return jax.jit(lambda i, s, k: fn(i, s, k, hp, form))(inputs, state, key)


def head_loss(head, z, y):
    """The head's mean loss on features z [n, d], written independently of hjax."""
    out = z @ head["kernel"] + head["bias"]
    if out.shape[-1] == 1:
        x = out[:, 0]
        return jnp.mean(jax.nn.softplus(x) - y * x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out), y[:, None], 1))


@jax.jit
def autodiff_per_example_grads(head, feats, labels):
    """[E, n, P] per-example head gradients by jax.grad on one example each."""
    def one(z, y):
        g = jax.grad(head_loss)(head, z[None], y[None])
        return jnp.concatenate([g["kernel"].reshape(-1), g["bias"]])
    return jax.vmap(jax.vmap(one))(feats, labels)


@jax.jit
def autodiff_curvature(head, feats, labels):
    """Per domain: g_e [E, P] and the dense head Hessian H_e [E, P, P]."""
    flat, unravel = ravel_pytree(head)

    def one(z, y):
        f = lambda v: head_loss(unravel(v), z, y)
        return jax.grad(f)(flat), jax.hessian(f)(flat)
    return jax.vmap(one)(feats, labels)


# ---------------------------------------------------------------- V-REx

def test_vrex_domainbed_is_the_variance_of_the_domain_losses():
    inputs = make_inputs(*problem(0))
    losses = np_domain_losses(inputs.logits, inputs.labels)
    assert np.ptp(losses) > 0.1                       # a case where the variance matters
    out = call("vrex", inputs, DOMAINBED_FORM)
    np.testing.assert_allclose(out.penalty, np.var(losses), rtol=RTOL)
    assert out.risk is None and out.state == ()


def test_vrex_irm_script_is_the_mean_over_pairs_of_squared_differences():
    inputs = make_inputs(*problem(1))
    losses = np_domain_losses(inputs.logits, inputs.labels)
    pairs = [(losses[i] - losses[j]) ** 2 for i in range(E) for j in range(i + 1, E)]
    out = call("vrex", inputs, IRM_SCRIPT_FORM)
    np.testing.assert_allclose(out.penalty, np.mean(pairs), rtol=RTOL)


def test_vrex_two_domains_pairwise_is_four_times_the_variance():
    inputs = make_inputs(*problem(2, e=2))
    losses = np_domain_losses(inputs.logits, inputs.labels)
    pairwise = call("vrex", inputs, IRM_SCRIPT_FORM).penalty
    variance = call("vrex", inputs, DOMAINBED_FORM).penalty
    np.testing.assert_allclose(pairwise, (losses[0] - losses[1]) ** 2, rtol=RTOL)
    np.testing.assert_allclose(pairwise, 4 * variance, rtol=RTOL)


def test_vrex_uses_the_per_example_weights():
    head, feats, labels = problem(3)
    w = np.random.default_rng(3).uniform(0.1, 1.0, size=(E, N))
    w[0, -2:] = 0.0                                   # padding
    w /= w.sum(1, keepdims=True)
    inputs = make_inputs(head, feats, labels, w)
    losses = np_domain_losses(inputs.logits, labels, w)
    np.testing.assert_allclose(call("vrex", inputs, DOMAINBED_FORM).penalty, np.var(losses),
                               rtol=RTOL)


# ---------------------------------------------------------------- IRMv1

def test_irm_full_batch_is_the_mean_squared_dummy_scale_derivative():
    inputs = make_inputs(*problem(4))
    grads = dscale_fd(inputs.logits, inputs.labels)
    assert np.min(np.abs(grads)) > 1e-2
    out = call("irm", inputs, IRM_SCRIPT_FORM)
    np.testing.assert_allclose(out.penalty, np.mean(grads ** 2), rtol=1e-4)


def test_irm_full_batch_with_padding_weights():
    head, feats, labels = problem(5)
    w = np.full((E, N), 1.0 / (N - 2))
    w[:, -2:] = 0.0
    inputs = make_inputs(head, feats, labels, w)
    # Same as the unpadded domains: the last two examples carry no weight.
    grads = dscale_fd(inputs.logits[:, :-2], labels[:, :-2])
    np.testing.assert_allclose(call("irm", inputs, IRM_SCRIPT_FORM).penalty,
                               np.mean(grads ** 2), rtol=1e-4)


def test_irm_half_batch_product_is_the_mean_of_even_times_odd_derivatives():
    inputs = make_inputs(*problem(6))
    logits, labels = np.asarray(inputs.logits), np.asarray(inputs.labels)
    even = dscale_fd(logits[:, ::2], labels[:, ::2])
    odd = dscale_fd(logits[:, 1::2], labels[:, 1::2])
    expected = np.mean(even * odd)
    full = np.mean(dscale_fd(logits, labels) ** 2)
    assert abs(expected - full) > 1e-3               # the two forms are told apart here
    np.testing.assert_allclose(call("irm", inputs, DOMAINBED_FORM).penalty, expected,
                               rtol=1e-4, atol=1e-7)


def test_irm_half_batch_product_rejects_weights():
    head, feats, labels = problem(7)
    inputs = make_inputs(head, feats, labels, np.full((E, N), 1.0 / N))
    with pytest.raises(ValueError, match="weights=None"):
        call("irm", inputs, DOMAINBED_FORM)


# ---------------------------------------------------------------- GroupDRO

def test_groupdro_exponentiated_weights_and_robust_risk_over_two_calls():
    objective = get_objective("groupdro")
    eta = 0.7
    state = objective.init_state(None, E, {"eta": eta}, DOMAINBED_FORM)
    chex.assert_trees_all_close(state["q"], np.ones(E, np.float32))
    q = np.ones(E)
    for seed in (8, 9):
        inputs = make_inputs(*problem(seed))
        losses = np_domain_losses(inputs.logits, inputs.labels)
        q = q * np.exp(eta * losses)
        q /= q.sum()
        out = call("groupdro", inputs, DOMAINBED_FORM, {"eta": eta}, state)
        np.testing.assert_allclose(out.state["q"], q, rtol=RTOL)
        np.testing.assert_allclose(out.risk, q @ losses, rtol=RTOL)
        np.testing.assert_allclose(out.logs["robust_loss"], q @ losses, rtol=RTOL)
        assert float(out.penalty) == 0.0
        state = out.state
    assert np.ptp(q) > 0.05                           # q really moved away from uniform


def test_groupdro_risk_gradient_treats_q_as_a_constant():
    """d(q . L)/d logits = q_e (p - y) / n: the update of q is not differentiated."""
    inputs = make_inputs(*problem(10))
    fn = get_objective("groupdro").penalty_fn
    state = {"q": jnp.asarray([0.2, 0.3, 0.5])}
    grad = jax.jit(jax.grad(lambda lg: fn(inputs._replace(logits=lg), state, None,
                                          {"eta": 1.0}, DOMAINBED_FORM).risk))(inputs.logits)
    logits = np.asarray(inputs.logits, np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    y = np.eye(C)[np.asarray(inputs.labels)]
    losses = np_domain_losses(logits, inputs.labels)
    q = np.array([0.2, 0.3, 0.5]) * np.exp(losses)
    q /= q.sum()
    np.testing.assert_allclose(grad, q[:, None, None] * (p - y) / N, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------- SD

@pytest.mark.parametrize("form", [DOMAINBED_FORM, IRM_SCRIPT_FORM], ids=["domainbed", "irm"])
def test_sd_is_the_mean_squared_logit(form):
    inputs = make_inputs(*problem(11))
    expected = np.mean(np.asarray(inputs.logits, np.float64) ** 2)
    np.testing.assert_allclose(call("sd", inputs, form).penalty, expected, rtol=RTOL)


# ---------------------------------------------------------------- CORAL

def np_coral(feats):
    feats = np.asarray(feats, np.float64)
    e = len(feats)
    if e < 2:
        return 0.0
    mu = feats.mean(1)
    cov = [np.cov(f, rowvar=False) for f in feats]    # unbiased (ddof = 1)
    terms = [np.mean((mu[i] - mu[j]) ** 2) + np.mean((cov[i] - cov[j]) ** 2)
             for i in range(e) for j in range(i + 1, e)]
    return np.mean(terms)


@pytest.mark.parametrize("e", [1, 2, 3])
def test_coral_matches_numpy_means_and_unbiased_covariances(e):
    _, feats, labels = problem(12, e=e)
    expected = np_coral(feats)
    if e == 1:
        assert expected == 0.0
    else:
        assert expected > 0.1
    got = jax.jit(coral_penalty)(feats)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-7)
    head, _, _ = problem(12, e=e)
    out = call("coral", make_inputs(head, feats, labels), DOMAINBED_FORM)
    np.testing.assert_allclose(out.penalty, expected, rtol=RTOL, atol=1e-7)


def test_coral_identical_domains_zero_and_unit_shift_one():
    z = np.random.default_rng(13).normal(size=(1, 10, 4)).astype(np.float32)
    penalty = jax.jit(coral_penalty)
    assert float(penalty(np.concatenate([z, z, z]))) == pytest.approx(0.0, abs=1e-7)
    # Mean difference 1 in every coordinate, equal covariances: penalty exactly 1.
    assert float(penalty(np.concatenate([z, z + 1.0]))) == pytest.approx(1.0, rel=1e-5)


# ---------------------------------------------------------------- Fishr

def np_grad_variances(head, feats, labels):
    g = np.asarray(autodiff_per_example_grads(head, feats, labels), np.float64)
    return np.var(g, axis=1)                          # centred, per coordinate: [E, P]


@pytest.mark.parametrize("c", [1, 3], ids=["logistic", "softmax"])
def test_fishr_irm_script_sums_squared_deviations_of_gradient_variances(c):
    head, feats, labels = problem(14, c=c)
    var = np_grad_variances(head, feats, labels)
    expected = np.sum((var - var.mean(0)) ** 2)
    out = call("fishr", make_inputs(head, feats, labels), IRM_SCRIPT_FORM)
    np.testing.assert_allclose(out.penalty, expected, rtol=1e-4)
    assert out.state == ()
    assert get_objective("fishr").init_state(head, E, {}, IRM_SCRIPT_FORM) == ()


def test_fishr_weighted_padding_equals_the_unpadded_domains():
    head, feats, labels = problem(15, c=1)
    w = np.full((E, N), 1.0 / N)
    w[0, -2:], w[0, :-2] = 0.0, 1.0 / (N - 2)         # domain 0 has two padded examples
    per_domain = [np_grad_variances(head, feats[e:e + 1, :N - 2 if e == 0 else N],
                                    labels[e:e + 1, :N - 2 if e == 0 else N])[0]
                  for e in range(E)]
    var = np.stack(per_domain)
    expected = np.sum((var - var.mean(0)) ** 2)
    out = call("fishr", make_inputs(head, feats, labels, w), IRM_SCRIPT_FORM)
    np.testing.assert_allclose(out.penalty, expected, rtol=1e-4)


def test_fishr_domainbed_ema_over_two_calls():
    objective = get_objective("fishr")
    ema = 0.9
    head, feats1, labels1 = problem(16)
    _, feats2, labels2 = problem(17)
    state = objective.init_state(head, E, {"ema": ema}, DOMAINBED_FORM)
    p = (D + 1) * C
    chex.assert_shape(state["ema"], (E, p))
    assert not np.any(np.asarray(state["ema"]))

    # Call 1, from the zero state: smoothed = (1 - ema) v1, used = smoothed / (1 - ema) = v1.
    v1 = np_grad_variances(head, feats1, labels1)
    out1 = call("fishr", make_inputs(head, feats1, labels1), DOMAINBED_FORM, {"ema": ema},
                state)
    np.testing.assert_allclose(out1.state["ema"], (1 - ema) * v1, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(out1.penalty, np.mean((v1 - v1.mean(0)) ** 2), rtol=1e-4)

    # Call 2: smoothed = ema * prev + (1 - ema) v2, and the penalty uses smoothed / (1 - ema).
    v2 = np_grad_variances(head, feats2, labels2)
    prev = np.asarray(out1.state["ema"], np.float64)
    smoothed = ema * prev + (1 - ema) * v2
    out2 = call("fishr", make_inputs(head, feats2, labels2), DOMAINBED_FORM, {"ema": ema},
                out1.state)
    np.testing.assert_allclose(out2.state["ema"], smoothed, rtol=1e-4, atol=1e-8)
    used = smoothed / (1 - ema)
    expected = np.mean((used - used.mean(0)) ** 2)
    np.testing.assert_allclose(out2.penalty, expected, rtol=1e-4)
    # The smoothing matters here: without it the second penalty would differ.
    assert abs(np.mean((v2 - v2.mean(0)) ** 2) - expected) > 1e-3 * expected


# ---------------------------------------------------------------- Hessian alignment

def np_alignment_terms(head, feats, labels, method, reduction):
    g, h = (np.asarray(x, np.float64) for x in autodiff_curvature(head, feats, labels))
    gbar, hbar = g.mean(0), h.mean(0)
    if method == "hgp":
        a = np.einsum("epq,eq->ep", h, g)
        abar = hbar @ gbar                            # mean Hessian times mean gradient
    else:                                             # exact_diag
        a = np.diagonal(h, axis1=1, axis2=2)
        abar = np.diag(hbar)
    red = np.mean if reduction == "mean" else np.sum
    return (red(np.sum((a - abar) ** 2, axis=1)), red(np.sum((g - gbar) ** 2, axis=1)))


@pytest.mark.parametrize("method", ["hgp", "exact_diag"])
@pytest.mark.parametrize("form", [DOMAINBED_FORM, IRM_SCRIPT_FORM], ids=["domainbed", "irm"])
def test_hessian_alignment_matches_dense_autodiff_hessians(method, form):
    head, feats, labels = problem(18)
    hess, grad = np_alignment_terms(head, feats, labels, method, form.reduction)
    assert hess > 1e-4 and grad > 1e-4
    hp = {"alpha": 0.3, "beta": 2.0}
    out = call(method, make_inputs(head, feats, labels), form, hp)
    np.testing.assert_allclose(out.logs["hessian_term"], hess, rtol=1e-4)
    np.testing.assert_allclose(out.logs["gradient_term"], grad, rtol=1e-4)
    np.testing.assert_allclose(out.penalty, 0.3 * hess + 2.0 * grad, rtol=1e-4)


@pytest.mark.parametrize("method", ["hgp", "hutchinson", "exact_diag"])
def test_sum_reduction_is_num_domains_times_mean_reduction(method):
    inputs = make_inputs(*problem(19))
    hp = {"alpha": 0.5, "beta": 3.0, "num_probes": 4}
    key = jax.random.key(3)
    mean = call(method, inputs, DOMAINBED_FORM, hp, key=key)
    total = call(method, inputs, IRM_SCRIPT_FORM, hp, key=key)
    assert float(mean.logs["hessian_term"]) > 1e-5
    for k in ("hessian_term", "gradient_term"):
        np.testing.assert_allclose(total.logs[k], E * mean.logs[k], rtol=1e-5)
    np.testing.assert_allclose(total.penalty, E * mean.penalty, rtol=1e-5)


def test_hutchinson_is_exact_when_every_domain_hessian_is_diagonal():
    """Logistic head with kernel 0 (constant s(1 - s)) on centred, axis-aligned features:
    H_e = a diag(mean z^2, 1) is diagonal, so every Rademacher probe recovers diag(H_e)."""
    scales = np.array([1.0, 2.0, 0.5])
    base = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]], np.float32)
    feats = (scales[:, None, None] * base[None] * [1.0, 1.5]).astype(np.float32)
    labels = np.array([[1, 0, 0, 1], [0, 0, 1, 1], [1, 1, 1, 0]], np.int32)
    head = {"kernel": np.zeros((2, 1), np.float32), "bias": np.array([0.4], np.float32)}
    inputs = make_inputs(head, feats, labels)
    exact = call("exact_diag", inputs, DOMAINBED_FORM)
    hess, grad = np_alignment_terms(head, feats, labels, "exact_diag", "mean")
    np.testing.assert_allclose(exact.logs["hessian_term"], hess, rtol=1e-5)
    assert hess > 1e-4
    for method in ("hutchinson", "hutchinson_shared"):
        out = call(method, inputs, DOMAINBED_FORM, {"num_probes": 3}, key=jax.random.key(0))
        np.testing.assert_allclose(out.logs["hessian_term"], hess, rtol=1e-5)
        np.testing.assert_allclose(out.logs["gradient_term"], grad, rtol=1e-5)


@pytest.mark.parametrize("method", ["hgp", "hutchinson", "exact_diag"])
@pytest.mark.parametrize("form", [DOMAINBED_FORM, IRM_SCRIPT_FORM], ids=["domainbed", "irm"])
def test_one_training_domain_gives_zero_penalty_and_terms(method, form):
    inputs = make_inputs(*problem(20, e=1))
    out = call(method, inputs, form, {"num_probes": 2}, key=jax.random.key(0))
    assert float(out.penalty) == 0.0
    assert float(out.logs["hessian_term"]) == 0.0 and float(out.logs["gradient_term"]) == 0.0


@pytest.mark.parametrize("method", ["hgp", "exact_diag"])
def test_stop_gradient_reference_changes_only_what_it_should(method):
    """With Abar = mean_e A_e (exact_diag) and for the gradient term, the deviations sum to 0
    over domains, so stopping the reference's gradient leaves the gradient unchanged; HGP's
    Abar = Hbar gbar is not the mean of H_e g_e, so there it must change the gradient."""
    inputs = make_inputs(*problem(21))
    fn = get_objective(method).penalty_fn
    hp = {"alpha": 1.0, "beta": 1.0}
    stopped = dataclasses.replace(IRM_SCRIPT_FORM, stop_gradient_reference=True)

    @jax.jit
    def values_and_grads(head, feats):
        def value(form, head, feats):
            logits = feats @ head["kernel"] + head["bias"]
            return fn(inputs._replace(head=head, features=feats, logits=logits), (), None,
                      hp, form).penalty
        return [jax.value_and_grad(value, argnums=(1, 2))(form, head, feats)
                for form in (IRM_SCRIPT_FORM, stopped)]

    (v_free, free), (v_stop, stop) = values_and_grads(inputs.head, inputs.features)
    np.testing.assert_allclose(v_free, v_stop, rtol=1e-6)
    if method == "exact_diag":
        chex.assert_trees_all_close(free, stop, rtol=1e-4, atol=1e-7)
    else:
        assert _max_rel_diff(free, stop) > 1e-3


def _max_rel_diff(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    scale = max(float(np.max(np.abs(x))) for x in la)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(la, lb)) / scale
