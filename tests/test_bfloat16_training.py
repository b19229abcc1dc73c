"""A bfloat16 DomainBed image job trains like the float32 one, with HGP's and Hutchinson's
penalties on, and keeps float32 where docs/precision.md says.

ResNet-18 at 32 px from random weights, on generated images (two training domains and a
test domain, 4 classes coloured as tests/image_tree.py colours them, the domains shifting
the brightness); each penalty is on from step 0 with a weight that makes its gradient
comparable with the cross-entropy's. Both jobs start from the same params and see the same
batches and probes.

Tolerance: the bfloat16 job's loss is within 5% (relative) of the float32 job's at every
step, and its accuracies (8 images per split) within one image (1/8). Why: bfloat16 keeps 8
significant bits, so each of the featurizer's 20 layers rounds its activations and
gradients by up to 2^-9 relative; docs/precision.md measures 0.8% on the features, 0.05-2%
on the penalties' values and 1-6% on their head gradients at one step (the penalties compare
domains, so they amplify the features' error). Over 3 steps the losses here differ by at most 2.2% (HGP),
0.3% (Hutchinson) on a 2-core CPU; an image on a decision boundary may flip.

The step is DomainBed's (:mod:`hjax.protocols.domainbed.algorithms`): the registered
objective in DomainBed form (:func:`make_objective`, the code the job runs, here on the
features), the mean cross-entropy, the penalty weight, and Adam (:func:`make_optimizer`),
compiled in three pieces: the featurizer's forward pass and its backward pass with the Adam
update (one program each per dtype), and each algorithm's objective on the features (one
program per algorithm, shared by both dtypes: the features are float32 in both). The chain
rule makes this the joint step's gradient; compiling the joint step per algorithm and dtype
instead costs ~6 s each. Each further algorithm here costs ~5 s on the suite's loaded 2-core
CPU, so CORAL, Fishr, IRM and V-REx are measured by experiments/bf16_precision.py instead
(their values and gradients in bfloat16, results/bf16_precision_cpu.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hjax.models import resnet_model
from hjax.protocols.domainbed import algorithms, hparams
from hjax.protocols.domainbed.algorithms import RESET_STEPS, Batch
from hjax.protocols.domainbed.feature_objective import feature_objective

from image_tree import class_color

CLASSES, PER_CLASS, SIZE, STEPS = 4, 2, 32, 3
# Penalty weights that matter from step 0: at the initial params each weighted penalty's
# gradient w.r.t. the head or the features is 0.4x-3x the cross-entropy's (0 for CORAL's
# head, which it does not touch). Anneal 0: on from step 0, and Adam's reset at step 0 is its
# initial state.
PENALTIES = {
    "hgp": {"hgp_alpha": 2.5e-4, "hgp_beta": 2.5e-2},
    "hutchinson": {"hutchinson_alpha": 1e-3, "hutchinson_beta": 1e-1,
                   "hutchinson_num_probes": 8},
}
HP = {name: hparams.make_hparams(name, "pacs", 0, overrides={
    "lr": 1e-4, "batch_size": CLASSES * PER_CLASS, **own}) for name, own in PENALTIES.items()}
# The tolerances of the module docstring.
ACCURACY_TOLERANCE = 1 / (CLASSES * PER_CLASS)
LOSS_RTOL = 0.05


def _domain(domain: int, seed: int):
    """CLASSES x PER_CLASS normalised images [n, S, S, 3] and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(CLASSES), PER_CLASS).astype(np.int32)
    colors = np.asarray([class_color(c) for c in labels], np.float32) * (0.6 + 0.2 * domain)
    pixels = colors[:, None, None] + rng.normal(0, 20, (len(labels), SIZE, SIZE, 3))
    x = (np.clip(pixels, 0, 255) / 255 - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)
    return x.astype(np.float32), labels


def _batch(domains, seed):
    xs, ys = zip(*(_domain(d, seed + d) for d in domains))
    return Batch(jnp.asarray(np.stack(xs)), jnp.asarray(np.stack(ys)))


TRAIN = _batch([0, 1], seed=0)
# Evaluation in the training batch's shape, so the forward program serves it: the unseen
# test domain (2) and fresh images of training domain 0 (an "out" split).
EVAL = _batch([2, 0], seed=10)


def _initial_params(seed=0):
    """torchvision's initialisation (conv kernels N(0, 2 / fan_out), BN scale 1 and bias 0;
    the head's Xavier-uniform kernel, bias 0) drawn with numpy: compiling the model's
    jax.random init costs ~7 s on a 2-core CPU, more than a bfloat16 job's steps here."""
    rng = np.random.default_rng(seed)
    model = resnet_model("resnet18", CLASSES)
    shapes = jax.eval_shape(model.init, jax.random.key(0), TRAIN.images[0, :2])

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel" and len(shape) == 4:                  # [kh, kw, in, out]
            std = np.sqrt(2.0 / (shape[0] * shape[1] * shape[3]))
            return jnp.asarray(rng.normal(0.0, std, shape), jnp.float32)
        if name == "kernel":                                       # the head [d, C]
            bound = np.sqrt(6.0 / sum(shape))
            return jnp.asarray(rng.uniform(-bound, bound, shape), jnp.float32)
        return jnp.full(shape, 1.0 if name == "scale" else 0.0, jnp.float32)
    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def init():
    params = _initial_params()
    return params, algorithms.make_optimizer(HP["hgp"]).init(params)


@pytest.fixture(scope="module")
def objectives():
    """name -> jitted (head, features, state, key, step) -> ((loss, (state, logs)),
    (head grad, features grad)); compiled once, for both dtypes."""
    def compiled(name):
        objective = feature_objective(name, HP[name])
        return jax.jit(jax.value_and_grad(
            lambda head, features, state, key, step: objective(
                head, features, TRAIN.labels, state, key, step),
            argnums=(0, 1), has_aux=True))
    return {name: compiled(name) for name in PENALTIES}


def _train(dtype, init, objectives):
    """Every algorithm's job in ``dtype``: its per-step losses, its final accuracies on the
    EVAL domains, and the dtypes of what it holds."""
    model = resnet_model("resnet18", CLASSES, dtype=dtype)
    tx = algorithms.make_optimizer(HP["hgp"])        # lr and weight decay shared by all
    e, b = TRAIN.labels.shape

    def featurizer_fn(featurizer, flat):
        return model.features({"featurizer": featurizer}, flat)

    @jax.jit
    def featurize(featurizer, images):
        return featurizer_fn(featurizer, images.reshape((e * b,) + images.shape[2:])).reshape(e, b, -1)

    @jax.jit
    def backward_and_update(params, opt_state, images, head_grad, features_grad):
        # The forward pass again (cheaper to compile than one that returns its residuals).
        _, vjp = jax.vjp(featurizer_fn, params["featurizer"],
                         images.reshape((e * b,) + images.shape[2:]))
        grads = {"featurizer": vjp(features_grad.reshape(e * b, -1))[0],
                 "classifier": head_grad}
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, grads

    runs = {}
    for name, objective in objectives.items():
        params, opt_state = init
        state = algorithms.init_alg_state(name, params, HP[name], e)
        losses = []
        for step in range(STEPS):
            features = featurize(params["featurizer"], TRAIN.images)
            (loss, (state, logs)), (head_grad, features_grad) = objective(
                params["classifier"], features, state, jax.random.key(step), step)
            params, opt_state, grads = backward_and_update(params, opt_state, TRAIN.images,
                                                           head_grad, features_grad)
            losses.append(float(loss))
        features = featurize(params["featurizer"], EVAL.images)
        logits = np.asarray(model.head(params["classifier"], features))
        runs[name] = {
            "losses": np.asarray(losses),
            "accuracies": np.mean(np.argmax(logits, -1) == np.asarray(EVAL.labels), axis=-1),
            "dtypes": {"features": features.dtype, "logits": logits.dtype,
                       "loss": loss.dtype, "penalty": logs["penalty"].dtype,
                       "grads": {x.dtype for x in jax.tree.leaves(grads)},
                       "params": {x.dtype for x in jax.tree.leaves(params)},
                       "opt_state": {x.dtype for x in jax.tree.leaves(opt_state)
                                     if jnp.issubdtype(x.dtype, jnp.floating)}}}
    return runs


@pytest.fixture(scope="module")
def float32_jobs(init, objectives):
    return _train(jnp.float32, init, objectives)


@pytest.fixture(scope="module")
def bfloat16_jobs(init, objectives):
    return _train(jnp.bfloat16, init, objectives)


def test_penalties_switch_on_at_step_zero_without_an_adam_reset():
    for name, hp in HP.items():
        if name in RESET_STEPS:
            assert RESET_STEPS[name](hp) == 0, name
        assert algorithms.PENALTY_WEIGHTS.get(name, lambda s, h: 1.0)(0, hp) > 0, name


@pytest.mark.parametrize("name", list(PENALTIES))
def test_a_bfloat16_job_tracks_the_float32_job(name, float32_jobs, bfloat16_jobs):
    f32, bf16 = float32_jobs[name], bfloat16_jobs[name]
    np.testing.assert_allclose(bf16["losses"], f32["losses"], rtol=LOSS_RTOL)
    assert f32["losses"][-1] < f32["losses"][0]                    # the jobs learn
    assert f32["accuracies"].min() > 1 / CLASSES                   # above chance
    np.testing.assert_allclose(bf16["accuracies"], f32["accuracies"],
                               atol=ACCURACY_TOLERANCE + 1e-9)


def test_a_bfloat16_job_keeps_float32_where_the_audit_says(bfloat16_jobs):
    for name, run in bfloat16_jobs.items():
        d = run["dtypes"]
        assert d["features"] == d["logits"] == d["loss"] == d["penalty"] == jnp.float32, name
        assert d["grads"] == d["params"] == d["opt_state"] == {jnp.dtype(jnp.float32)}, name
