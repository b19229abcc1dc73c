"""DomainBed's training step for every algorithm of the objective registry (DomainBed form).

The math of each algorithm is its registered objective (:mod:`hjax.objectives`, evaluated with
:data:`~hjax.objectives.DOMAINBED_FORM`); this module adds what DomainBed's protocol owns:
the forward pass over one minibatch per training domain (``batch.images`` [E, B, ...],
``batch.labels`` [E, B]), the mean cross-entropy, each algorithm's penalty weight and its
schedule, Adam with coupled L2 and its re-creation, and Fish's inner loop.

Hyperparameters come from :mod:`hjax.protocols.domainbed.hparams` under DomainBed's names
(``irm_lambda``, ``hgp_alpha``, ``fishr_ema``, ...); an objective sees its own under short
names (``alpha``, ``ema``, ...): the algorithm's prefix is dropped. They are Python constants
inside the compiled step of one job, and traced per-trial arrays (except the shape-setting
``batch_size`` and ``*_num_probes``) when several jobs run vmapped
(:mod:`hjax.protocols.domainbed.vmapped`), so nothing here may branch in Python on a
hyperparameter's value.

Penalty weights and optimizer resets follow DomainBed:

- irm / vrex: weight 1 before ``*_penalty_anneal_iters``, lambda from then on; Adam is
  re-created at the step equal to ``*_penalty_anneal_iters``.
- fishr: weight 0 before ``fishr_penalty_anneal_iters``, lambda from then on; Adam is
  re-created at that step (at step 0 that is its initial state: no reset).
- coral ``mmd_gamma``, iga ``iga_penalty``, sd ``sd_reg``; groupdro replaces the risk.
- hgp / hutchinson / exact_diag: alpha and beta inside the objective, no warm-up, no reset
  (the authors' DomainBed form).

With a single training domain (the leave-one-domain-out pair runs of a 3-env dataset) every
alignment penalty is 0, as in DomainBed.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hjax.core.linear_head import domain_losses
from hjax.objectives import DOMAINBED_FORM, Inputs, get_objective
from hjax.protocols.domainbed.hparams import ALGORITHMS


class Batch(NamedTuple):
    images: jax.Array    # [E, B, H, W, C]
    labels: jax.Array    # [E, B]


def _annealed(step, anneal_iters, before, after):
    return jnp.where(step >= anneal_iters, after, before)


def _one(step, hp):
    return 1.0


# Weight of each objective's penalty at ``step`` (alignment objectives weight inside).
PENALTY_WEIGHTS: dict[str, Callable] = {
    "irm": lambda step, hp: _annealed(step, hp["irm_penalty_anneal_iters"], 1.0,
                                      hp["irm_lambda"]),
    "vrex": lambda step, hp: _annealed(step, hp["vrex_penalty_anneal_iters"], 1.0,
                                       hp["vrex_lambda"]),
    "fishr": lambda step, hp: _annealed(step, hp["fishr_penalty_anneal_iters"], 0.0,
                                        hp["fishr_lambda"]),
    "coral": lambda step, hp: hp["mmd_gamma"],
    "iga": lambda step, hp: hp["iga_penalty"],
    "sd": lambda step, hp: hp["sd_reg"],
}
# The step at which Adam is re-created (re-creating it at step 0 equals its initial state, so
# an anneal of 0 needs no special case and the step stays traceable for --vmap_trials).
RESET_STEPS: dict[str, Callable] = {
    name: (lambda hp, name=name: hp[f"{name}_penalty_anneal_iters"])
    for name in ("irm", "vrex", "fishr")}


def objective_hparams(name: str, hp) -> dict:
    """The algorithm's DomainBed hparams under the objective's short names (prefix dropped)."""
    prefix = f"{name}_"
    return {k[len(prefix):]: v for k, v in hp.items() if k.startswith(prefix)}


def make_optimizer(hp) -> optax.GradientTransformation:
    """Adam with coupled L2 (PyTorch's ``weight_decay``): grad + wd * theta, then Adam."""
    # The moments take the params' dtype: float32, with --dtype=bfloat16 too, where a bfloat16
    # copy would lose the small steps (docs/precision.md).
    return optax.chain(optax.add_decayed_weights(hp["weight_decay"]), optax.adam(hp["lr"]))


def uses_dropout(model) -> bool:
    """Whether the model's featurizer has dropout (a ResNet with ``resnet_dropout`` > 0)."""
    return getattr(getattr(model, "featurizer", None), "dropout", 0.0) > 0


def forward(model, params, images, dropout_key=None, dropout_rate=None):
    """Features [E, B, d] and logits [E, B, C] of every domain's batch (one pass)."""
    e, b = images.shape[:2]
    flat = images.reshape((e * b,) + images.shape[2:])
    z = (model.features(params, flat) if dropout_key is None
         else model.features(params, flat, dropout_key=dropout_key, dropout_rate=dropout_rate))
    logits = model.head(params["classifier"], z)
    return z.reshape(e, b, -1), logits.reshape(e, b, -1)


def _dropout_key(key, hp):
    """(key, dropout key, rate) of a model with dropout. ``resnet_dropout`` traced (vmapped
    trials): a trial at rate 0 keeps its whole key, as its single job (whose model has no
    dropout) does, and its dropout is the identity."""
    rate = hp.get("resnet_dropout")
    rest, dropout_key = jax.random.split(key)
    if rate is None or isinstance(rate, (int, float)):
        return rest, dropout_key, rate
    data = jnp.where(rate > 0, jax.random.key_data(rest), jax.random.key_data(key))
    return jax.random.wrap_key_data(data), dropout_key, rate


def init_alg_state(name: str, params, hp, num_domains: int):
    objective = get_objective(name)
    if objective.penalty_fn is None:                 # Fish: the inner optimizer's state
        return {"inner_opt": make_optimizer(hp).init(params)}
    return objective.init_state(params["classifier"], num_domains,
                                objective_hparams(name, hp), DOMAINBED_FORM)


def _model_domain_grads(model, params, batch: Batch) -> Callable:
    """() -> (every domain's loss [E], its gradient over ALL params, stacked [E, ...])."""
    def domain_loss(p, images, labels):
        return domain_losses(model.apply(p, images), labels)
    return lambda: jax.vmap(jax.value_and_grad(domain_loss), in_axes=(None, 0, 0))(
        params, batch.images, batch.labels)


def make_objective(name: str, model, hp) -> Callable:
    """``(params, alg_state, batch, key, step) -> (loss, (alg_state, logs))``."""
    objective = get_objective(name)
    weight_fn = PENALTY_WEIGHTS.get(name, _one)
    own_hp = objective_hparams(name, hp)

    dropout = uses_dropout(model)

    def loss_fn(params, state, batch: Batch, key, step):
        dropout_key = rate = None
        if dropout:          # only then: the other models keep their keys (and numbers)
            key, dropout_key, rate = _dropout_key(key, hp)
        z, logits = forward(model, params, batch.images, dropout_key, rate)
        nll = jnp.mean(domain_losses(logits, batch.labels))
        grads_fn = (_model_domain_grads(model, params, batch) if objective.scope == "model"
                    else None)
        out = objective.penalty_fn(
            Inputs(params["classifier"], z, logits, batch.labels, None, grads_fn),
            state, key, own_hp, DOMAINBED_FORM)
        risk = nll if out.risk is None else out.risk
        logs = {"nll": nll}
        if objective.penalized:
            logs["penalty"] = out.penalty
            loss = risk + weight_fn(step, hp) * out.penalty
        else:
            loss = risk
        return loss, (out.state, {**logs, **out.logs})

    return loss_fn


def objective_update(name: str, model, hp):
    """(state, batch, key) -> (state, logs): one Adam step on the algorithm's objective."""
    tx = make_optimizer(hp)
    reset_step = RESET_STEPS[name](hp) if name in RESET_STEPS else None
    loss_fn = make_objective(name, model, hp)

    def update(state, batch, key):
        opt_state = state.opt_state
        if reset_step is not None:
            fresh = tx.init(state.params)
            opt_state = jax.tree_util.tree_map(
                lambda new, old: jnp.where(state.step == reset_step, new, old), fresh, opt_state)
        (loss, (alg_state, logs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.alg_state, batch, key, state.step)
        updates, opt_state = tx.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return (state.replace(params=params, opt_state=opt_state, alg_state=alg_state,
                              step=state.step + 1),
                dict(logs, loss=loss))
    return update


def fish_update(name: str, model, hp):
    """Fish: Adam steps on a clone, one domain after another, then
    theta <- theta + meta_lr (theta_inner - theta). The inner Adam state persists across
    steps (as in DomainBed); the outer optimizer is unused."""
    inner_tx = make_optimizer(hp)

    def update(state, batch, key):
        def inner(carry, domain):
            p, o = carry
            images, labels = domain
            loss, g = jax.value_and_grad(
                lambda q: domain_losses(model.apply(q, images), labels))(p)
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


def make_update(name: str, model, hp):
    """The compiled-step body ``(state, batch, key) -> (state, logs)`` of algorithm ``name``."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; valid: {', '.join(ALGORITHMS)}")
    if get_objective(name).penalty_fn is None:
        return fish_update(name, model, hp)
    return objective_update(name, model, hp)
