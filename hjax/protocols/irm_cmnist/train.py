"""The full-batch IRM-script protocol (docs/protocols.md): one compiled, data-parallel train step.

Per step, on every training domain at once:

    loss = Lbar + l2 * sum_{all params} ||theta||^2 + lam(t) * penalty ;  if lam(t) > 1: loss /= lam(t)
    lam(t) = 1 for t < anneal_iters, penalty_weight afterwards

with full-batch Adam. Metrics of step t are those of the parameters *before* update t, as in
the original scripts, so the numbers reported "at the last step" are read the same way.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hjax.core.linear_head import domain_accuracies, domain_losses
from hjax.models import Model
from hjax.objectives import IRM_SCRIPT_FORM, Inputs, get_objective
from hjax.data import sharding
from hjax.protocols.runs.state import TrainState

# Re-exported: the protocol's methods and defaults live in its config module.
from hjax.protocols.irm_cmnist.config import (DEFAULT_HPARAMS, METHOD_DEFAULTS,  # noqa: E402,F401
                                              METHODS, method_hparams)


class DomainBatch(NamedTuple):
    """Every domain's examples, padded to one size: images [E, n, ...], labels/weights [E, n]."""
    images: Any
    labels: Any
    weights: Any


def stack_domains(envs, multiple: int = 1) -> DomainBatch:
    """Stack environments into one padded batch (padding has weight 0; n % multiple == 0)."""
    n = sharding.pad_to_multiple(max(len(e.labels) for e in envs), multiple)
    images = np.zeros((len(envs), n) + envs[0].images.shape[1:], np.float32)
    labels = np.zeros((len(envs), n), np.int32)
    weights = np.zeros((len(envs), n), np.float32)
    for i, env in enumerate(envs):
        k = len(env.labels)
        images[i, :k], labels[i, :k], weights[i, :k] = env.images, env.labels, 1.0 / k
    return DomainBatch(images, labels, weights)


def penalty_weight(step, hp):
    return jnp.where(step >= hp["anneal_iters"], hp["penalty_weight"], 1.0)


def domain_features(model: Model, params, images, merge_domains: bool = False):
    """The featurizer on every domain's examples, [E, n, ...] -> [E, n, d].

    ``merge_domains=True`` runs it on one [E * n, ...] batch and splits the result again:
    the same values, but the backward pass then contracts the weight gradients over one
    example axis instead of two, which saves XLA's CPU backend a transposed copy of every
    hidden layer's cotangent (measured in docs/benchmarks.md). Only for an
    example axis that is not sharded over several devices: merging it with the domain
    axis would make XLA regather the examples.
    """
    if not merge_domains:
        return model.features(params, images)
    e, n = images.shape[:2]
    z = model.features(params, images.reshape((e * n,) + images.shape[2:]))
    return z.reshape((e, n) + z.shape[1:])


def _resolve_merge(merge_domains):
    # Default: merge when this process sees a single device (no data-parallel sharding).
    return jax.device_count() == 1 if merge_domains is None else bool(merge_domains)


def make_loss_fn(model: Model, method: str, hp: dict, *,
                 merge_domains: bool | None = None) -> Callable:
    """``merge_domains``: see :func:`domain_features`; None merges when only one device is
    visible. Pass False when the batch's example axis is sharded over several devices."""
    objective = get_objective(method)
    merge = _resolve_merge(merge_domains)

    def loss_fn(params, batch: DomainBatch, key, step):
        features = domain_features(model, params, batch.images, merge)  # [E, n, d]
        logits = model.head(params["classifier"], features)            # [E, n, C]
        nll_e = domain_losses(logits, batch.labels, batch.weights)
        out = objective.penalty_fn(
            Inputs(params["classifier"], features, logits, batch.labels, batch.weights),
            (), key, hp, IRM_SCRIPT_FORM)
        penalty = out.penalty
        l2 = sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(params))
        lam = penalty_weight(step, hp)
        loss = jnp.mean(nll_e) + hp["l2_weight"] * l2 + lam * penalty
        # "if lam > 1: loss /= lam", written so that no branch divides by zero (a jnp.where
        # over loss / 0 would still send NaN gradients through the untaken branch).
        loss = loss / jnp.maximum(lam, 1.0)
        metrics = {"loss": loss, "nll": jnp.mean(nll_e), "penalty": penalty,
                   "acc": domain_accuracies(logits, batch.labels, batch.weights),
                   "domain_nll": nll_e, **out.logs}
        return loss, metrics

    return loss_fn


def make_init_and_step(model: Model, method: str, hp: dict, *,
                       merge_domains: bool | None = None):
    """``(init(params) -> state, step(state, batch, key) -> (state, metrics))``, neither
    jitted: the loop maps ``step`` over its restarts and jits it (the whole loss is one
    function).

    ``merge_domains``: as in :func:`make_loss_fn` (pass ``mesh.devices.size == 1``)."""
    loss_fn = make_loss_fn(model, method, hp, merge_domains=merge_domains)
    optimizer = optax.adam(hp["lr"])

    def init(params):
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=optimizer.init(params))

    def step(state: TrainState, batch: DomainBatch, key):
        key = jax.random.fold_in(key, state.step)
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, batch, key, state.step)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return init, step


def make_eval(model: Model):
    def evaluate(params, batch: DomainBatch):
        logits = model.apply(params, batch.images)
        return {"acc": domain_accuracies(logits, batch.labels, batch.weights),
                "nll": domain_losses(logits, batch.labels, batch.weights)}
    return evaluate


def _floats(tree):
    return jax.tree_util.tree_map(lambda x: np.asarray(x).tolist(), tree)


def log_row(t, metrics, held, info) -> dict:
    """The history row of step ``t``: train metrics and held-out accuracies."""
    m = _floats(metrics)
    h = _floats(held)
    n_test = len(info.test_envs)
    row = {"step": t, "train_nll": m["nll"], "train_acc": float(np.mean(m["acc"])),
           "train_env_acc": m["acc"], "penalty": m["penalty"], "loss": m["loss"],
           "test_acc": float(np.mean(h["acc"][:n_test])),
           "gray_test_acc": float(np.mean(h["acc"][n_test:])) if info.gray_envs else None}
    for k in ("hessian_term", "gradient_term"):
        if k in m:
            row[k] = m[k]
    return row
