"""Every DomainBed algorithm through the protocol adapter (hjax.protocols.domainbed.algorithms):
3 steps whose first one is Adam on the objective's gradient, a penalty that really changes the
gradient, and the protocol's own parts checked by hand: IGA's all-parameter gradient
alignment (with gradient flowing through it), Fish's inner loop and meta step, the penalty
weight schedules and the re-creation of Adam at the anneal step.

Tiny on purpose (8x8 images, 3 domains of 8 examples, one compile per check). The
algorithms are featurizer-agnostic, so a small MLP featurizer stands in for MNIST_CNN here
(conv compiles are slow on CPU; the CNN itself is exercised by test_domainbed_train.py).
Params are drawn with numpy (threefry-heavy Flax init is slow to compile on CPU).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from hjax.core import linear_head
from hjax.models import MLPFeaturizer, Model
from hjax.objectives import DOMAINBED_FORM, Inputs, get_objective
from hjax.protocols.domainbed import algorithms, hparams
from hjax.protocols.domainbed.algorithms import Batch
from hjax.protocols.domainbed.trainer import TrainState

E, B, C, STEPS = 3, 8, 2, 3
DATASET = "domainbed_colored_mnist"
# Overrides that make each penalty large and active from step 0.
STRONG = {
    "irm": {"irm_lambda": 10.0, "irm_penalty_anneal_iters": 0},
    "vrex": {"vrex_lambda": 10.0, "vrex_penalty_anneal_iters": 0},
    "coral": {"mmd_gamma": 10.0},
    "fishr": {"fishr_lambda": 1e3, "fishr_penalty_anneal_iters": 0},
    "iga": {"iga_penalty": 10.0},
    "sd": {"sd_reg": 1.0},
    "groupdro": {"groupdro_eta": 10.0},
    "hgp": {"hgp_alpha": 10.0, "hgp_beta": 10.0},
    "hutchinson": {"hutchinson_alpha": 10.0, "hutchinson_beta": 10.0,
                   "hutchinson_num_probes": 4},
    "exact_diag": {"exact_diag_alpha": 10.0, "exact_diag_beta": 10.0},
}
PENALIZED = tuple(n for n in STRONG if n != "groupdro")
ALIGNMENT = ("hgp", "hutchinson", "exact_diag")


@pytest.fixture(scope="module", autouse=True)
def fast_compiles():
    """XLA's cheapest compile mode while this module runs (compiles dominate its runtime)."""
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="module")
def setup():
    model = Model(MLPFeaturizer((16, 16)), num_outputs=C)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 2))))
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.normal(0, 0.4, s.shape), s.dtype), shapes)
    images = rng.uniform(size=(STEPS, E, B, 8, 8, 2)).astype(np.float32)
    # Domain-dependent image statistics, so feature statistics (CORAL) differ across domains.
    images = images ** np.array([1.0, 3.0, 0.3])[None, :, None, None, None, None]
    images[:, 1, ..., 0] = 0.0
    # Domain-dependent labels so domain losses and gradients differ.
    labels = (rng.uniform(size=(STEPS, E, B)) < np.array([0.2, 0.5, 0.9])[:, None]).astype(np.int32)
    keys = jax.random.split(jax.random.key(0), STEPS)
    return model, params, Batch(jnp.asarray(images), jnp.asarray(labels)), keys


def make_hp(name, strong=True, **overrides):
    over = dict(STRONG.get(name, {}) if strong else {}, **overrides)
    return hparams.make_hparams(name, DATASET, 0, overrides=over)


def initial_state(name, params, hp, num_domains=E):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=algorithms.make_optimizer(hp).init(params),
                      alg_state=algorithms.init_alg_state(name, params, hp, num_domains))


def batch_at(batches, i):
    return Batch(batches.images[i], batches.labels[i])


# ---------------------------------------------------------------- references written here

def np_logits(params, images):
    """The MLP featurizer and the linear head in numpy (float64): images [..., 8, 8, 2]."""
    f = {k: {kk: np.asarray(vv, np.float64) for kk, vv in v.items()}
         for k, v in params["featurizer"].items()}
    h = np.asarray(images, np.float64).reshape(images.shape[:-3] + (-1,))
    for layer in sorted(f):
        h = np.maximum(h @ f[layer]["kernel"] + f[layer]["bias"], 0.0)
    head = params["classifier"]
    return h @ np.asarray(head["kernel"], np.float64) + np.asarray(head["bias"], np.float64)


def np_domain_ce(logits, labels):
    m = logits.max(-1, keepdims=True)
    lse = m[..., 0] + np.log(np.exp(logits - m).sum(-1))
    return (lse - np.take_along_axis(logits, np.asarray(labels)[..., None], -1)[..., 0]).mean(-1)


def ce(model, params, images, labels):
    """One domain's mean cross-entropy, written independently of hjax's loss helpers."""
    out = model.apply(params, images)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out), labels[:, None], 1))


def adam_with_l2(hp):
    """DomainBed's optimizer rebuilt here: PyTorch Adam with coupled L2 (grad + wd * theta)."""
    return optax.chain(optax.add_decayed_weights(hp["weight_decay"]), optax.adam(hp["lr"]))


def _max_abs_diff(a, b):   # numpy, not jnp: eager jnp ops compile once per shape
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
               zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _max_abs(a):
    return max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree_util.tree_leaves(a))


# ---------------------------------------------------------------- every algorithm, 3 steps

_RUNS = {}


def run_checks(name, model, params, batches, keys):
    """One compile: 3 updates, plus the objective's value, logs and gradient at the start
    (cached per algorithm: the ERM run also serves as every penalty's baseline)."""
    if name not in _RUNS:
        _RUNS[name] = _run_checks(name, model, params, batches, keys)
    return _RUNS[name]


def _run_checks(name, model, params, batches, keys):
    hp = make_hp(name)
    update = algorithms.make_update(name, model, hp)
    has_objective = get_objective(name).penalty_fn is not None

    @jax.jit
    def check(params, batches, keys):
        state = initial_state(name, params, hp)
        first = batch_at(batches, 0)
        start = None
        if has_objective:
            objective = algorithms.make_objective(name, model, hp)
            start = jax.value_and_grad(
                lambda p: objective(p, state.alg_state, first, keys[0], state.step),
                has_aux=True)(state.params)

        def body(s, xs):
            images, labels, key = xs
            s, logs = update(s, Batch(images, labels), key)
            return s, (logs["loss"], s.params)
        final, (losses, trajectory) = jax.lax.scan(
            body, state, (batches.images, batches.labels, keys))
        return final, losses, trajectory, start

    return hp, check(params, batches, keys)


@pytest.fixture(scope="module")
def erm_grad(setup):
    _, (_, _, _, ((_, _), grad)) = run_checks("erm", *setup)
    return grad


@pytest.mark.parametrize("name", list(hparams.ALGORITHMS))
def test_three_steps_first_is_adam_on_the_objective_and_penalty_changes_gradient(
        setup, erm_grad, name):
    model, params, batches, keys = setup
    hp, (final, losses, trajectory, start) = run_checks(name, model, params, batches, keys)
    chex.assert_shape(losses, (STEPS,))
    assert np.all(np.isfinite(np.asarray(losses))), losses
    assert int(final.step) == STEPS
    assert _max_abs_diff(final.params, params) > 0
    for leaf in jax.tree_util.tree_leaves(final):
        assert np.all(np.isfinite(np.asarray(leaf)))
    if start is None:            # Fish: checked by hand below
        return
    (loss0, (alg_state0, logs)), grad0 = start
    nll = np.mean(np_domain_ce(np_logits(params, batches.images[0]), batches.labels[0]))
    np.testing.assert_allclose(logs["nll"], nll, rtol=1e-5)
    # The update logs the objective at the pre-update params ...
    np.testing.assert_allclose(losses[0], loss0, rtol=1e-5)
    # ... and its first step is Adam's first step on that objective's gradient (lr sign(g)).
    assert hp["weight_decay"] == 0.0
    first = jax.tree_util.tree_map(lambda p, g: np.asarray(p) - hp["lr"] * np.asarray(g)
                                   / (np.abs(np.asarray(g)) + 1e-8), params, grad0)
    chex.assert_trees_all_close(jax.tree_util.tree_map(lambda t: t[0], trajectory), first,
                                atol=1e-2 * hp["lr"], rtol=0)

    # The loss is assembled with the algorithm's own weight (its hparam, at step 0).
    if name in ALIGNMENT:
        np.testing.assert_allclose(
            logs["penalty"], hp[f"{name}_alpha"] * logs["hessian_term"]
            + hp[f"{name}_beta"] * logs["gradient_term"], rtol=1e-5)
        np.testing.assert_allclose(loss0, logs["nll"] + logs["penalty"], rtol=1e-5)
    elif name in algorithms.PENALTY_WEIGHTS:
        weight = {"irm": 10.0, "vrex": 10.0, "fishr": 1e3, "coral": 10.0, "iga": 10.0,
                  "sd": 1.0}[name]
        np.testing.assert_allclose(loss0, logs["nll"] + weight * logs["penalty"], rtol=1e-5)
    elif name == "groupdro":
        domain = np_domain_ce(np_logits(params, batches.images[0]), batches.labels[0])
        q = np.exp(10.0 * domain)
        q /= q.sum()
        np.testing.assert_allclose(alg_state0["q"], q, rtol=1e-4)
        np.testing.assert_allclose(loss0, q @ domain, rtol=1e-4)
        np.testing.assert_allclose(logs["robust_loss"], q @ domain, rtol=1e-4)
    else:
        assert name == "erm"
        np.testing.assert_allclose(loss0, nll, rtol=1e-5)
    if name in PENALIZED:
        assert float(logs["penalty"]) > 0
        # The penalty moves the featurizer's gradient (coral acts on features only; the
        # others reach the featurizer through the features or, for iga, directly).
        feat_diff = _max_abs_diff(grad0["featurizer"], erm_grad["featurizer"])
        assert feat_diff > 1e-4 * _max_abs(erm_grad["featurizer"]), (name, feat_diff)
        if name != "coral":
            head_diff = _max_abs_diff(grad0["classifier"], erm_grad["classifier"])
            assert head_diff > 1e-4 * _max_abs(erm_grad["classifier"]), (name, head_diff)
        else:
            chex.assert_trees_all_close(grad0["classifier"], erm_grad["classifier"],
                                        rtol=1e-5, atol=1e-7)


def test_unknown_algorithm_is_rejected(setup):
    model = setup[0]
    with pytest.raises(ValueError, match="unknown algorithm 'foo'"):
        algorithms.make_update("foo", model, make_hp("erm"))


# ---------------------------------------------------------------- IGA

def test_iga_penalty_aligns_all_parameter_gradients_and_is_differentiated(setup):
    model, params, batches, keys = setup
    hp = make_hp("iga")
    objective = algorithms.make_objective("iga", model, hp)
    batch = batch_at(batches, 0)

    def penalty(p, batch):
        return objective(p, (), batch, keys[0], jnp.zeros((), jnp.int32))[1][1]["penalty"]

    @jax.jit
    def run(p, batch):
        loss, (_, logs) = objective(p, (), batch, keys[0], jnp.zeros((), jnp.int32))
        by_hand = jax.vmap(lambda x, y: ravel_pytree(jax.grad(
            lambda q: ce(model, q, x, y))(p))[0])(batch.images, batch.labels)
        return loss, logs, by_hand, jax.grad(penalty)(p, batch)

    loss, logs, g, pen_grad = run(params, batch)
    g = np.asarray(g, np.float64)                                   # [E, all params]
    expected = np.sum((g - g.mean(0)) ** 2)
    assert expected > 1e-4
    np.testing.assert_allclose(logs["penalty"], expected, rtol=1e-4)
    np.testing.assert_allclose(loss, logs["nll"] + 10.0 * logs["penalty"], rtol=1e-5)
    # Gradient flows through the penalty, into the featurizer and the head.
    assert _max_abs(pen_grad["featurizer"]) > 1e-6 and _max_abs(pen_grad["classifier"]) > 1e-6

    # ... and it is the penalty's true gradient: a central difference along a direction.
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), params)
        b64 = Batch(jnp.asarray(batch.images, jnp.float64), batch.labels)
        flat, unravel = ravel_pytree(p64)
        v = np.random.default_rng(1).normal(size=flat.shape)
        v /= np.linalg.norm(v)
        f = jax.jit(lambda x: penalty(unravel(x), b64))
        eps = 1e-5
        fd = (float(f(flat + eps * v)) - float(f(flat - eps * v))) / (2 * eps)
    # The float32 autodiff gradient (the one the trainer uses) along v.
    analytic = float(np.dot(np.asarray(ravel_pytree(pen_grad)[0], np.float64), v))
    assert abs(fd) > 1e-5
    np.testing.assert_allclose(analytic, fd, rtol=1e-3)


# ---------------------------------------------------------------- Fish

def test_fish_step_is_sequential_adam_on_a_clone_then_a_meta_step(setup):
    model, params, batches, keys = setup
    hp = hparams.make_hparams("fish", DATASET, 0,
                              overrides={"meta_lr": 0.3, "lr": 0.01, "weight_decay": 0.01})
    tx = adam_with_l2(hp)
    update = jax.jit(algorithms.make_update("fish", model, hp))

    @jax.jit
    def by_hand(theta, inner_opt, batch):
        p, losses = theta, []
        for e in range(E):                            # one Adam step per domain, in order
            loss, g = jax.value_and_grad(lambda q: ce(model, q, batch.images[e],
                                                      batch.labels[e]))(p)
            u, inner_opt = tx.update(g, inner_opt, p)
            p = optax.apply_updates(p, u)
            losses.append(loss)
        meta = jax.tree_util.tree_map(lambda t, i: t + hp["meta_lr"] * (i - t), theta, p)
        return meta, inner_opt, jnp.stack(losses)

    state = initial_state("fish", params, hp)
    theta, inner = params, tx.init(params)
    for t in range(2):                                # the inner Adam state persists
        batch = batch_at(batches, t)
        state, logs = update(state, batch, keys[t])
        theta, inner, losses = by_hand(theta, inner, batch)
        chex.assert_trees_all_close(state.params, theta, rtol=1e-5, atol=1e-7)
        chex.assert_trees_all_close(state.alg_state["inner_opt"], inner, rtol=1e-5, atol=1e-9)
        assert int(state.alg_state["inner_opt"][1][0].count) == E * (t + 1)
        assert int(state.step) == t + 1
        np.testing.assert_allclose(logs["nll"], np.mean(losses), rtol=1e-5)
        np.testing.assert_allclose(logs["loss"], losses[-1], rtol=1e-5)
    assert _max_abs_diff(state.params, params) > 1e-3
    # The outer optimizer is unused.
    chex.assert_trees_all_equal(state.opt_state, algorithms.make_optimizer(hp).init(params))


# ---------------------------------------------------------------- schedules and Adam resets

@pytest.mark.parametrize("name,before,after", [("irm", 1.0, 7.0), ("vrex", 1.0, 7.0),
                                               ("fishr", 0.0, 7.0)])
def test_penalty_weight_schedule_and_adam_recreated_at_the_anneal_step(setup, name, before,
                                                                       after):
    model, params, batches, keys = setup
    anneal = 2
    hp = make_hp(name, strong=False, **{f"{name}_penalty_anneal_iters": anneal,
                                        f"{name}_lambda": after, "lr": 0.01})
    assert algorithms.RESET_STEPS[name](hp) == anneal
    for step, weight in ((0, before), (anneal - 1, before), (anneal, after), (50, after)):
        np.testing.assert_allclose(algorithms.PENALTY_WEIGHTS[name](jnp.asarray(step), hp),
                                   weight)
    update = algorithms.make_update(name, model, hp)
    objective = algorithms.make_objective(name, model, hp)
    tx = adam_with_l2(hp)
    order = np.array([0, 1, 2, 0])

    @jax.jit
    def run(params, batches, keys):
        def body(state, xs):
            images, labels, key = xs
            batch = Batch(images, labels)
            (_, (_, logs)), g = jax.value_and_grad(objective, has_aux=True)(
                state.params, state.alg_state, batch, key, state.step)
            continued = tx.update(g, state.opt_state, state.params)[1]
            recreated = tx.update(g, tx.init(state.params), state.params)[1]
            state, step_logs = update(state, batch, key)
            return state, (state.opt_state, continued, recreated, logs, step_logs)
        return jax.lax.scan(body, initial_state(name, params, hp),
                            (batches.images[order], batches.labels[order], keys[order]))[1]

    stacked = run(params, batches, keys)
    for t in range(len(order)):
        opt_state, continued, recreated, logs, step_logs = jax.tree_util.tree_map(
            lambda x: x[t], stacked)
        if t == anneal:                   # re-created, then updated once with this gradient
            chex.assert_trees_all_close(opt_state, recreated, rtol=1e-5, atol=1e-12)
            assert int(opt_state[1][0].count) == 1
            assert _max_abs_diff(continued[1][0].nu, recreated[1][0].nu) > 0
        else:
            chex.assert_trees_all_close(opt_state, continued, rtol=1e-5, atol=1e-12)
            assert int(opt_state[1][0].count) == (t + 1 if t < anneal else t - anneal + 1)
        weight = before if t < anneal else after
        assert float(logs["penalty"]) > 0
        np.testing.assert_allclose(step_logs["loss"], logs["nll"] + weight * logs["penalty"],
                                   rtol=1e-5)
        np.testing.assert_allclose(step_logs["penalty"], logs["penalty"], rtol=1e-5)


def test_no_reset_or_schedule_for_the_alignment_objectives():
    for name in ALIGNMENT + ("erm", "coral", "iga", "sd", "groupdro", "fish"):
        assert name not in algorithms.RESET_STEPS
    for name in ALIGNMENT:
        assert name not in algorithms.PENALTY_WEIGHTS
    hp = make_hp("hgp", strong=False)
    assert algorithms.objective_hparams("hgp", hp) == {"alpha": 1e-4, "beta": 5e-3}
    hp = make_hp("fishr", strong=False)
    assert algorithms.objective_hparams("fishr", hp) == {
        "lambda": 1e3, "penalty_anneal_iters": 1500, "ema": 0.95}


# ---------------------------------------------------------------- small closed forms

def test_irm_half_product_matches_finite_differences():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 6, 3)).astype(np.float32)
    labels = np.asarray([[0, 1, 2, 1, 0, 2]], np.int32)

    def ce_np(s, sl):
        return np_domain_ce(s * logits[0, sl].astype(np.float64), labels[0, sl])

    def half_grad(sl, eps=1e-5):
        return (ce_np(1 + eps, sl) - ce_np(1 - eps, sl)) / (2 * eps)

    expected = half_grad(slice(0, None, 2)) * half_grad(slice(1, None, 2))
    inputs = Inputs(None, jnp.zeros((1, 6, 1)), jnp.asarray(logits), jnp.asarray(labels))
    got = jax.jit(lambda i: get_objective("irm").penalty_fn(i, (), None, {},
                                                            DOMAINBED_FORM).penalty)(inputs)
    assert abs(expected) > 1e-3
    assert float(got) == pytest.approx(expected, rel=1e-4)


def test_per_example_head_grads_match_autodiff():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(5, 4)).astype(np.float32)
    head = {"kernel": rng.normal(size=(4, 3)).astype(np.float32),
            "bias": rng.normal(size=(3,)).astype(np.float32)}
    y = np.asarray([0, 2, 1, 1, 0], np.int32)

    @jax.jit
    def both(head, z, y):
        closed = linear_head.per_example_grads(z, z @ head["kernel"] + head["bias"], y)

        def one(zi, yi):
            g = jax.grad(lambda h: -jax.nn.log_softmax(zi @ h["kernel"] + h["bias"])[yi])(head)
            return jnp.concatenate([g["kernel"], g["bias"][None]]).reshape(-1)

        return closed, jax.vmap(one)(z, y)

    closed, auto = both(head, z, y)
    chex.assert_shape(closed, (5, (4 + 1) * 3))
    np.testing.assert_allclose(closed, auto, rtol=1e-5, atol=1e-6)


def test_one_training_domain_gives_zero_alignment_penalties(setup):
    """Leave-one-out pair runs of a 3-env dataset train on one domain."""
    model, params, batches, keys = setup
    one = Batch(batches.images[0, :1], batches.labels[0, :1])
    names = ("coral", "hutchinson", "hgp", "exact_diag")

    @jax.jit
    def run(params, batch, key):
        out = {}
        for name in names:
            hp = make_hp(name)
            objective = algorithms.make_objective(name, model, hp)
            state = algorithms.init_alg_state(name, params, hp, 1)
            loss, (_, logs) = objective(params, state, batch, key, jnp.zeros((), jnp.int32))
            out[name] = (loss, logs)
        return out

    for name, (loss, logs) in run(params, one, keys[0]).items():
        assert float(logs["penalty"]) == 0.0, name
        np.testing.assert_allclose(loss, logs["nll"], rtol=1e-6)
        if name != "coral":
            assert float(logs["hessian_term"]) == 0.0 and float(logs["gradient_term"]) == 0.0
