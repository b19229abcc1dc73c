"""DomainBed-form algorithms, registered by name (SPEC sections 2 and 4).

Most algorithms are one small pure objective

    objective(model, params, alg_state, batch, key, step, hp) -> (loss, (alg_state, logs))

over one minibatch per training domain (``batch.images`` [E, B, ...], ``batch.labels``
[E, B]); :func:`objective_update` turns it into an optimizer step. ``alg_state`` carries what
an algorithm keeps between steps (Fishr's EMA, GroupDRO's q, Fish's inner Adam state).
Fish changes the step itself and registers its own ``update``. Hyperparameters come from
:mod:`hjax.domainbed.hparams` (one registry); they are Python constants inside the compiled
step of one job, and traced per-trial arrays (except the shape-setting ``batch_size`` and
``*_num_probes``) when several jobs run vmapped (:mod:`hjax.domainbed.vmapped`), so nothing
here may branch in Python on a hyperparameter's value.

With a single training domain (the leave-one-domain-out pair runs of a 3-env dataset) every
alignment penalty is 0, as in DomainBed.

Losses are softmax cross-entropy on C logits (2 classes for ColoredMNIST, as in DomainBed).
Penalty weights and optimizer resets follow DomainBed:

- irm / vrex: weight 1 before ``*_penalty_anneal_iters``, lambda from then on; Adam is
  re-created at the step equal to ``*_penalty_anneal_iters``.
- fishr: weight 0 before ``fishr_penalty_anneal_iters``, lambda from then on; Adam is
  re-created at that step (at step 0 that is its initial state: no reset).
- hgp / hutchinson / exact_diag: no warm-up, no reset (the authors' DomainBed form).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hjax.penalty import linear_head_penalty_terms


class Batch(NamedTuple):
    images: jax.Array    # [E, B, H, W, C]
    labels: jax.Array    # [E, B]


class Algorithm(NamedTuple):
    name: str
    description: str
    objective: Callable | None = None       # see module docstring
    update: Callable | None = None          # custom step; None = objective_update
    init_state: Callable = lambda params, hp, num_domains: ()
    reset_step: Callable = lambda hp: None  # step at which Adam is re-created (or None)


ALGORITHMS: dict[str, Algorithm] = {}


def register(algorithm: Algorithm) -> Algorithm:
    ALGORITHMS[algorithm.name] = algorithm
    return algorithm


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; valid: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


# ---------------------------------------------------------------------------- helpers

def make_optimizer(hp) -> optax.GradientTransformation:
    """Adam with coupled L2 (PyTorch's ``weight_decay``): grad + wd * theta, then Adam."""
    return optax.chain(optax.add_decayed_weights(hp["weight_decay"]), optax.adam(hp["lr"]))


def forward(model, params, images):
    """Features [E, B, d] and logits [E, B, C] of every domain's batch (one pass)."""
    e, b = images.shape[:2]
    z = model.features(params, images.reshape((e * b,) + images.shape[2:]))
    logits = model.head(params["classifier"], z)
    return z.reshape(e, b, -1), logits.reshape(e, b, -1)


def cross_entropy(logits, labels):
    """Mean CE over the last example axis: [..., B, C], [..., B] -> [...]."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels), axis=-1)


def _annealed(step, anneal_iters, before, after):
    return jnp.where(step >= anneal_iters, after, before)


# ---------------------------------------------------------------------------- objectives

def erm_objective(model, params, state, batch, key, step, hp):
    _, logits = forward(model, params, batch.images)
    nll = jnp.mean(cross_entropy(logits, batch.labels))
    return nll, (state, {"nll": nll})


def irm_half_product(logits, labels):
    """DomainBed's unbiased IRMv1 penalty of one domain: d/ds L(even half) * d/ds L(odd half)."""
    def grad_at_one(lg, lb):
        return jax.grad(lambda s: cross_entropy(lg * s, lb))(jnp.ones((), lg.dtype))
    return grad_at_one(logits[::2], labels[::2]) * grad_at_one(logits[1::2], labels[1::2])


def irm_objective(model, params, state, batch, key, step, hp):
    _, logits = forward(model, params, batch.images)
    nll = jnp.mean(cross_entropy(logits, batch.labels))
    penalty = jnp.mean(jax.vmap(irm_half_product)(logits, batch.labels))
    weight = _annealed(step, hp["irm_penalty_anneal_iters"], 1.0, hp["irm_lambda"])
    return nll + weight * penalty, (state, {"nll": nll, "penalty": penalty})


def vrex_objective(model, params, state, batch, key, step, hp):
    _, logits = forward(model, params, batch.images)
    losses = cross_entropy(logits, batch.labels)
    nll = jnp.mean(losses)
    penalty = jnp.mean((losses - nll) ** 2)
    weight = _annealed(step, hp["vrex_penalty_anneal_iters"], 1.0, hp["vrex_lambda"])
    return nll + weight * penalty, (state, {"nll": nll, "penalty": penalty})


def coral_penalty(features):
    """Mean over domain pairs i < j of mean((mu_i - mu_j)^2) + mean((C_i - C_j)^2)."""
    e, b, _ = features.shape
    mu = jnp.mean(features, axis=1)                                    # [E, d]
    centred = features - mu[:, None]
    cov = jnp.einsum("ebi,ebj->eij", centred, centred) / (b - 1)       # unbiased, [E, d, d]
    mean_diff = jnp.mean((mu[:, None] - mu[None]) ** 2, axis=-1)       # [E, E]
    cov_diff = jnp.mean((cov[:, None] - cov[None]) ** 2, axis=(-2, -1))
    if e < 2:                    # one training domain (leave-one-out pair runs): no pairs
        return jnp.zeros((), features.dtype)
    upper = jnp.triu(jnp.ones((e, e), bool), k=1)
    return jnp.sum(jnp.where(upper, mean_diff + cov_diff, 0.0)) / (e * (e - 1) / 2)


def coral_objective(model, params, state, batch, key, step, hp):
    z, logits = forward(model, params, batch.images)
    nll = jnp.mean(cross_entropy(logits, batch.labels))
    penalty = coral_penalty(z)
    return nll + hp["mmd_gamma"] * penalty, (state, {"nll": nll, "penalty": penalty})


def per_sample_head_grads(features, logits, labels):
    """Closed-form per-example head gradients (p_i - y_i) z~_i, flattened: [..., B, (d+1) C]."""
    r = jax.nn.softmax(logits, axis=-1) - jax.nn.one_hot(labels, logits.shape[-1],
                                                         dtype=logits.dtype)
    z1 = jnp.concatenate([features, jnp.ones(features.shape[:-1] + (1,), features.dtype)], -1)
    g = z1[..., :, None] * r[..., None, :]
    return g.reshape(g.shape[:-2] + (-1,))


def fishr_init(params, hp, num_domains):
    k = params["classifier"]["kernel"]
    size = (k.shape[0] + 1) * k.shape[1]
    return {"ema": jnp.zeros((num_domains, size), k.dtype)}


def fishr_objective(model, params, state, batch, key, step, hp):
    z, logits = forward(model, params, batch.images)
    nll = jnp.mean(cross_entropy(logits, batch.labels))
    g = per_sample_head_grads(z, logits, batch.labels)                 # [E, B, P]
    var = jnp.mean((g - jnp.mean(g, axis=1, keepdims=True)) ** 2, axis=1)   # [E, P]
    ema = hp["fishr_ema"]
    # DomainBed's MovingAverage with the 1/(1 - ema) correction: the stored average is
    # detached; the returned one carries this step's gradient at full amplitude.
    smoothed = ema * state["ema"] + (1 - ema) * var
    var_used = smoothed / (1 - ema)
    penalty = jnp.mean((var_used - jnp.mean(var_used, axis=0)) ** 2)
    weight = _annealed(step, hp["fishr_penalty_anneal_iters"], 0.0, hp["fishr_lambda"])
    new_state = {"ema": jax.lax.stop_gradient(smoothed)}
    return nll + weight * penalty, (new_state, {"nll": nll, "penalty": penalty})


def iga_objective(model, params, state, batch, key, step, hp):
    """mean_e L_e + lambda * sum_e ||g_e - sg(gbar)||^2, g over ALL parameters (double backprop)."""
    def domain_loss(p, images, labels):
        return cross_entropy(model.apply(p, images), labels)

    losses, grads = jax.vmap(jax.value_and_grad(domain_loss), in_axes=(None, 0, 0))(
        params, batch.images, batch.labels)
    gbar = jax.lax.stop_gradient(jax.tree_util.tree_map(lambda g: jnp.mean(g, 0), grads))
    penalty = sum(jnp.sum((g - m[None]) ** 2) for g, m in
                  zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(gbar)))
    nll = jnp.mean(losses)
    return nll + hp["iga_penalty"] * penalty, (state, {"nll": nll, "penalty": penalty})


def sd_objective(model, params, state, batch, key, step, hp):
    _, logits = forward(model, params, batch.images)
    nll = jnp.mean(cross_entropy(logits, batch.labels))
    penalty = jnp.mean(logits ** 2)
    return nll + hp["sd_reg"] * penalty, (state, {"nll": nll, "penalty": penalty})


def groupdro_init(params, hp, num_domains):
    return {"q": jnp.ones((num_domains,), jnp.float32)}


def groupdro_objective(model, params, state, batch, key, step, hp):
    _, logits = forward(model, params, batch.images)
    losses = cross_entropy(logits, batch.labels)
    q = state["q"] * jnp.exp(hp["groupdro_eta"] * jax.lax.stop_gradient(losses))
    q = q / jnp.sum(q)
    loss = jnp.dot(losses, q)
    return loss, ({"q": q}, {"nll": jnp.mean(losses), "robust_loss": loss})


def _hessian_alignment(method: str):
    def objective(model, params, state, batch, key, step, hp):
        z, logits = forward(model, params, batch.images)
        nll = jnp.mean(cross_entropy(logits, batch.labels))
        if batch.images.shape[0] < 2:    # one training domain: nothing to align, penalty 0
            zero = jnp.zeros((), nll.dtype)
            return nll, (state, {"nll": nll, "penalty": zero, "hessian_term": zero,
                                 "gradient_term": zero})
        terms = linear_head_penalty_terms(
            params["classifier"], z, batch.labels, loss="softmax", method=method,
            num_probes=hp.get(f"{method}_num_probes", 1), key=key, reduction="mean",
            stop_gradient_reference=True, logits=logits)
        penalty = hp[f"{method}_alpha"] * terms.hessian + hp[f"{method}_beta"] * terms.gradient
        return nll + penalty, (state, {"nll": nll, "penalty": penalty,
                                       "hessian_term": terms.hessian,
                                       "gradient_term": terms.gradient})
    return objective


# ---------------------------------------------------------------------------- steps

def objective_update(algorithm: Algorithm, model, hp):
    """(state, batch, key) -> (state, logs): one Adam step on ``algorithm.objective``."""
    tx = make_optimizer(hp)
    reset_step = algorithm.reset_step(hp)

    def update(state, batch, key):
        opt_state = state.opt_state
        if reset_step is not None:
            fresh = tx.init(state.params)
            opt_state = jax.tree_util.tree_map(
                lambda new, old: jnp.where(state.step == reset_step, new, old), fresh, opt_state)
        (loss, (alg_state, logs)), grads = jax.value_and_grad(
            algorithm.objective, argnums=1, has_aux=True)(
                model, state.params, state.alg_state, batch, key, state.step, hp)
        updates, opt_state = tx.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return (state.replace(params=params, opt_state=opt_state, alg_state=alg_state,
                              step=state.step + 1),
                dict(logs, loss=loss))
    return update


def fish_init(params, hp, num_domains):
    return {"inner_opt": make_optimizer(hp).init(params)}


def fish_update(algorithm: Algorithm, model, hp):
    """Fish: Adam steps on a clone, one domain after another, then
    theta <- theta + meta_lr (theta_inner - theta). The inner Adam state persists across
    steps (as in DomainBed); the outer optimizer is unused."""
    inner_tx = make_optimizer(hp)

    def update(state, batch, key):
        def inner(carry, domain):
            p, o = carry
            images, labels = domain
            loss, g = jax.value_and_grad(
                lambda q: cross_entropy(model.apply(q, images), labels))(p)
            updates, o = inner_tx.update(g, o, p)
            return (optax.apply_updates(p, updates), o), loss

        (inner_params, inner_opt), losses = jax.lax.scan(
            inner, (state.params, state.alg_state["inner_opt"]), (batch.images, batch.labels))
        params = jax.tree_util.tree_map(lambda m, i: m + hp["meta_lr"] * (i - m),
                                        state.params, inner_params)
        return (state.replace(params=params, alg_state={"inner_opt": inner_opt},
                              step=state.step + 1),
                {"nll": jnp.mean(losses), "loss": losses[-1]})
    return update


def make_update(algorithm: Algorithm, model, hp):
    return (algorithm.update or objective_update)(algorithm, model, hp)


# ---------------------------------------------------------------------------- registry

register(Algorithm("erm", "mean cross-entropy over all training examples", erm_objective))
register(Algorithm("irm", "IRMv1, DomainBed's unbiased half-batch product", irm_objective,
                   reset_step=lambda hp: hp["irm_penalty_anneal_iters"]))
register(Algorithm("vrex", "V-REx: variance of the per-domain losses", vrex_objective,
                   reset_step=lambda hp: hp["vrex_penalty_anneal_iters"]))
register(Algorithm("coral", "CORAL: mean and covariance alignment of features",
                   coral_objective))
register(Algorithm("fishr", "Fishr: align per-domain head-gradient variances (EMA)",
                   fishr_objective, init_state=fishr_init,
                   # Re-creating Adam at step 0 equals its initial state, so anneal 0 needs no
                   # special case (and the step stays traceable for --vmap_trials).
                   reset_step=lambda hp: hp["fishr_penalty_anneal_iters"]))
register(Algorithm("iga", "IGA: sum_e ||g_e - gbar||^2 over all parameters", iga_objective))
register(Algorithm("fish", "Fish: inner steps over domains on a clone, then a meta step",
                   update=fish_update, init_state=fish_init))
register(Algorithm("sd", "Spectral decoupling: CE + sd_reg * mean(logits^2)", sd_objective))
register(Algorithm("groupdro", "GroupDRO: q-weighted domain losses", groupdro_objective,
                   init_state=groupdro_init))
register(Algorithm("hgp", "HGP: align H_e g_e and g_e of the head", _hessian_alignment("hgp")))
register(Algorithm("hutchinson", "Hutchinson: align estimated diag(H_e) and g_e of the head",
                   _hessian_alignment("hutchinson")))
register(Algorithm("exact_diag", "hjax extension: align exact diag(H_e) and g_e of the head",
                   _hessian_alignment("exact_diag")))
